"""Retrieval metrics for paired test sets: recall@K (a relevant item in the top K) and mean average precision.

Relevance: `match="row"` pairs query i with gallery item i (e.g. caption i <-> image i); `match=FIELD` makes
every gallery item whose metadata FIELD equals the query's relevant (several captions per image, or classes).
Against embeddings (exact search) mAP ranks the whole gallery; against an index folder the ranking is the
index's top `max(ks)` (mAP@K, normalised by min(#relevant, K)).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from .sources import EmbeddingSource, open_sources


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_metrics(queries: np.ndarray, gallery: np.ndarray, relevant: Sequence[np.ndarray],
                  ks: Sequence[int] = (1, 5, 10), chunk: int = 1024) -> dict[str, float]:
    """Recall@K and mAP over full rankings of `gallery` `[N, E]` for `queries` `[Q, E]` (cosine similarity).

    `relevant[q]` holds the gallery indices relevant to query q (queries with none are skipped).
    """
    q_all, g = _normalize(queries), _normalize(gallery)
    hits = {k: 0 for k in ks}
    ap_sum, counted = 0.0, 0
    for lo in range(0, len(q_all), chunk):
        sim = q_all[lo: lo + chunk] @ g.T  # [C, N]
        for r, row in enumerate(sim):
            rel = np.asarray(relevant[lo + r], dtype=np.int64)
            if rel.size == 0:
                continue
            ranks = np.sort((row[None, :] > row[rel][:, None]).sum(1))  # 0-based rank of each relevant item
            for k in ks:
                hits[k] += int(ranks[0] < k)
            ap_sum += float(np.mean(np.arange(1, len(ranks) + 1) / (ranks + 1)))
            counted += 1
    if counted == 0:
        raise ValueError("no query has a relevant gallery item: check the match field / pairing")
    out = {f"recall@{k}": hits[k] / counted for k in ks}
    out["mAP"] = ap_sum / counted
    out["queries"] = counted
    return out


def ranked_metrics(retrieved: Sequence[Sequence[bool]], n_relevant: Sequence[int],
                   ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K and mAP@max(K) from top-K relevance flags per query and each query's number of relevant items."""
    kmax = max(ks)
    hits = {k: 0 for k in ks}
    ap_sum, counted = 0.0, 0
    for flags, n_rel in zip(retrieved, n_relevant):
        if n_rel == 0:
            continue
        f = np.asarray(flags[:kmax], dtype=bool)
        for k in ks:
            hits[k] += int(f[:k].any())
        prec = np.cumsum(f) / np.arange(1, len(f) + 1)
        ap_sum += float((prec * f).sum() / min(n_rel, kmax))
        counted += 1
    if counted == 0:
        raise ValueError("no query has a relevant gallery item: check the match field / pairing")
    out = {f"recall@{k}": hits[k] / counted for k in ks}
    out[f"mAP@{kmax}"] = ap_sum / counted
    out["queries"] = counted
    return out


def _load_all(src: EmbeddingSource) -> tuple[np.ndarray, list[dict[str, Any]]]:
    vecs, meta = [], []
    for b in src.batches():
        vecs.append(b.vectors)
        meta += b.metadata
    if not vecs:
        raise ValueError(f"{src.name}: empty (0 vectors)")
    return np.concatenate(vecs), meta


def evaluate_retrieval(queries: Any, gallery: Any, *, match: str = "row", ks: Sequence[int] = (1, 5, 10),
                       params: dict[str, int] | None = None) -> dict[str, float]:
    """Evaluate query embeddings against gallery embeddings (exact) or an index folder (its own search)."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    qvec, qmeta = _load_all(open_sources(queries))
    is_index = isinstance(gallery, (str, os.PathLike)) and os.path.isfile(os.path.join(gallery, "anyalign_index.json"))
    if match != "row":
        missing = [i for i, m in enumerate(qmeta) if m.get(match) is None]
        if missing:
            raise ValueError(f"match field {match!r} missing from query metadata row {missing[0]}")
    if not is_index:
        gvec, gmeta = _load_all(open_sources(gallery))
        if gvec.shape[1] != qvec.shape[1]:
            raise ValueError(f"dimension mismatch: queries have dim {qvec.shape[1]}, gallery {gvec.shape[1]}")
        if match == "row":
            if len(gvec) < len(qvec):
                raise ValueError(f"row pairing needs at least as many gallery items ({len(gvec)}) as queries "
                                 f"({len(qvec)})")
            relevant = [np.array([i]) for i in range(len(qvec))]
        else:
            by_value: dict[Any, list[int]] = {}
            for i, m in enumerate(gmeta):
                by_value.setdefault(_key(m.get(match)), []).append(i)
            relevant = [np.array(by_value.get(_key(m[match]), []), dtype=np.int64) for m in qmeta]
        out = exact_metrics(qvec, gvec, relevant, ks)
        out["gallery"] = len(gvec)
        return out

    from .retriever import Retriever

    retriever = Retriever(gallery)
    results = retriever.search_vectors(qvec, max(ks), **(params or {}))
    if match == "row":
        flags = [[r.id == q for r in res] for q, res in enumerate(results)]
        n_rel = [1] * len(results)
    else:
        counts: Counter = Counter()
        for part in retriever.parts:
            counts.update(_key(v) for v in part.meta.field_values(match).values())
        flags = [[_key(r.metadata.get(match)) == _key(qm[match]) for r in res] for qm, res in zip(qmeta, results)]
        n_rel = [counts[_key(qm[match])] for qm in qmeta]
    out = ranked_metrics(flags, n_rel, ks)
    out["gallery"] = len(retriever)
    return out


def _key(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


__all__ = ["evaluate_retrieval", "exact_metrics", "ranked_metrics"]
