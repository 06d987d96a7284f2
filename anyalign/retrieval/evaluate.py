"""Retrieval metrics for paired test sets: recall@K (a relevant item in the top K), mAP and median rank.

Relevance: `match="row"` pairs query i with gallery item i; `match=FIELD` makes every gallery item whose metadata
FIELD equals the query's relevant. Against embeddings (exact search) mAP ranks the whole gallery; against an index
folder, the index's top `max(ks)` (mAP@K). Ties are ranked pessimistically, as the trainer's eval does.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..hubness import Hubness
from .sources import EmbeddingSource, open_sources


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pessimistic_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based ranks `[R]` (ascending) of the relevant items of one query's `scores` `[N]`, ties broken against
    them: a non-relevant item scoring the same as a relevant one is ranked above it."""
    rel = np.asarray(relevant, dtype=np.int64)
    rel_scores = np.sort(scores[rel])[::-1]  # best relevant first
    other = np.ones(len(scores), dtype=bool)
    other[rel] = False
    above = (scores[other][None, :] >= rel_scores[:, None]).sum(1)  # [R] non-relevant items not below each
    return np.arange(len(rel)) + above


def exact_metrics(queries: np.ndarray, gallery: np.ndarray, relevant: Sequence[np.ndarray],
                  ks: Sequence[int] = (1, 5, 10), chunk: int = 1024, *, hubness: Hubness | None = None,
                  bank: np.ndarray | None = None) -> dict[str, float]:
    """Recall@K, mAP and median rank over full rankings of `gallery` `[N, E]` for `queries` `[Q, E]` (cosine).

    `relevant[q]` holds the gallery indices relevant to query q (queries with none are skipped); ties are
    ranked pessimistically (`pessimistic_ranks`). `hubness` ranks by corrected scores (`anyalign.hubness`), with
    `bank` `[B, E]` the reference queries (never the evaluated ones).
    """
    q_all, g = _normalize(queries), _normalize(gallery)
    bank_scores = _bank_scores(hubness, bank, g)
    hits = {k: 0 for k in ks}
    ap_sum, first = 0.0, []
    for lo in range(0, len(q_all), chunk):
        sim = q_all[lo: lo + chunk] @ g.T  # [C, N]
        if bank_scores is not None:
            sim = hubness.apply(sim, bank_scores)
        for r, row in enumerate(sim):
            rel = np.asarray(relevant[lo + r], dtype=np.int64)
            if rel.size == 0:
                continue
            ranks = pessimistic_ranks(row, rel)
            for k in ks:
                hits[k] += int(ranks[0] < k)
            ap_sum += float(np.mean(np.arange(1, len(ranks) + 1) / (ranks + 1)))
            first.append(int(ranks[0]) + 1)
    counted = len(first)
    if counted == 0:
        raise ValueError("no query has a relevant gallery item: check the match field / pairing")
    out: dict[str, Any] = {f"recall@{k}": hits[k] / counted for k in ks}
    out["mAP"] = ap_sum / counted
    out["median_rank"] = float(np.median(first))
    out["queries"] = counted
    return out


def _bank_scores(hubness: Hubness | None, bank: np.ndarray | None, gallery: np.ndarray) -> np.ndarray | None:
    """The bank queries' scores `[B, N]` on the gallery when a correction is asked for, else None."""
    if hubness is None or hubness.method == "none":
        return None
    if bank is None:
        raise ValueError(f"hubness {hubness.method!r} needs a bank of reference queries (e.g. training queries)")
    return _normalize(bank) @ gallery.T


def ranked_metrics(retrieved: Sequence[Sequence[bool]], n_relevant: Sequence[int],
                   ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K, mAP@max(K) and median rank from ranked relevance flags per query (the top max(K) or deeper)
    and each query's number of relevant items."""
    kmax = max(ks)
    hits = {k: 0 for k in ks}
    ap_sum, first = 0.0, []
    for flags, n_rel in zip(retrieved, n_relevant):
        if n_rel == 0:
            continue
        all_flags = np.asarray(flags, dtype=bool)
        f = all_flags[:kmax]
        for k in ks:
            hits[k] += int(f[:k].any())
        prec = np.cumsum(f) / np.arange(1, len(f) + 1)
        ap_sum += float((prec * f).sum() / min(n_rel, kmax))
        first.append(int(np.argmax(all_flags)) + 1 if all_flags.any() else np.inf)
    counted = len(first)
    if counted == 0:
        raise ValueError("no query has a relevant gallery item: check the match field / pairing")
    out: dict[str, Any] = {f"recall@{k}": hits[k] / counted for k in ks}
    out[f"mAP@{kmax}"] = ap_sum / counted
    med = float(np.median(first))
    out["median_rank"] = med if np.isfinite(med) else None
    out["queries"] = counted
    return out


def _pessimistic_order(scores: Sequence[float], flags: Sequence[bool]) -> np.ndarray:
    """Relevance flags of one ranked list with each run of equal scores reordered non-relevant first."""
    out = np.zeros(len(flags), dtype=bool)
    out[pessimistic_ranks(np.asarray(scores, dtype=np.float64), np.flatnonzero(flags))] = True
    return out


def _search_untied(retriever: Any, qvec: np.ndarray, depth: int, params: dict[str, int]) -> list[list[Any]]:
    """Index results at least `depth` deep per query, deeper where scores tie across the cut (so that the
    pessimistic tie rule sees every item tied with one inside the top `depth`)."""
    total = retriever.ntotal
    k = min(depth + 1, total)
    results = list(retriever.search_vectors(qvec, k, **params))
    for q, res in enumerate(results):
        kq = k
        while len(res) >= kq and kq < total and len(res) > depth and res[-1].score == res[depth - 1].score:
            kq = min(2 * kq, total)
            res = retriever.search_vectors(qvec[q: q + 1], kq, **params)[0]
        results[q] = res
    return results


def _load_all(src: EmbeddingSource) -> tuple[np.ndarray, list[dict[str, Any]]]:
    vecs, meta = [], []
    for b in src.batches():
        vecs.append(b.vectors)
        meta += b.metadata
    if not vecs:
        raise ValueError(f"{src.name}: empty (0 vectors)")
    return np.concatenate(vecs), meta


def evaluate_retrieval(queries: Any, gallery: Any, *, match: str = "row", ks: Sequence[int] = (1, 5, 10),
                       params: dict[str, int] | None = None, hubness: Hubness | None = None,
                       bank: Any = None) -> dict[str, float]:
    """Evaluate query embeddings against gallery embeddings (exact) or an index folder (its own search);
    `hubness` with a `bank` of reference query embeddings corrects hub items (exact search only)."""
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
            _check_rows(len(qvec), len(gvec), queries, gallery)
            relevant = [np.array([i]) for i in range(len(qvec))]
        else:
            by_value: dict[Any, list[int]] = {}
            for i, m in enumerate(gmeta):
                by_value.setdefault(_key(m.get(match)), []).append(i)
            relevant = [np.array(by_value.get(_key(m[match]), []), dtype=np.int64) for m in qmeta]
        bvec = _load_all(open_sources(bank))[0] if bank is not None else None
        out = exact_metrics(qvec, gvec, relevant, ks, hubness=hubness, bank=bvec)
        out["gallery"] = len(gvec)
        return out
    if hubness is not None and hubness.method != "none":
        raise ValueError("hubness correction needs exact search: pass gallery embeddings, not an index folder")

    from .retriever import Retriever

    retriever = Retriever(gallery)
    if retriever.dim != qvec.shape[1]:
        raise ValueError(f"dimension mismatch: queries have dim {qvec.shape[1]}, index {gallery} has dim "
                         f"{retriever.dim}")
    if match == "row":
        _check_rows(len(qvec), len(retriever), queries, gallery)
    results = _search_untied(retriever, qvec, max(ks), params or {})
    if match == "row":
        flags = [[r.id == q for r in res] for q, res in enumerate(results)]
        n_rel = [1] * len(results)
    else:
        counts: Counter = Counter()
        for part in retriever.parts:
            counts.update(_key(v) for v in part.meta.field_values(match).values())
        flags = [[_key(r.metadata.get(match)) == _key(qm[match]) for r in res] for qm, res in zip(qmeta, results)]
        n_rel = [counts[_key(qm[match])] for qm in qmeta]
    flags = [_pessimistic_order([r.score for r in res], f) for res, f in zip(results, flags)]
    out = ranked_metrics(flags, n_rel, ks)
    out["gallery"] = len(retriever)
    return out


def _check_rows(n_queries: int, n_items: int, queries: Any, gallery: Any) -> None:
    if n_queries != n_items:
        raise ValueError(f"--match row pairs query i with item i, but {_name(queries)} has {n_queries} queries and "
                         f"{_name(gallery)} {n_items} items; give equal counts or match on a metadata field")


def _name(x: Any) -> str:
    return str(x) if isinstance(x, (str, os.PathLike)) else type(x).__name__


def _key(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


__all__ = ["evaluate_retrieval", "exact_metrics", "pessimistic_ranks", "ranked_metrics"]
