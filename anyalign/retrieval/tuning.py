"""Exact ground truth gathered while adding, and the search-time knob (nprobe / efSearch) tuned to a recall.

Tuning queries are held out of the index while tuning and added back after (or are the user's own queries, never
added), so the recall they measure is the one new queries get when new queries look like them. An index whose
queries come from another modality than its corpus (its space's text side, e.g. text into an IMU index:
`query_side`) tunes on that side's rows where the index holds them; otherwise the build warns and names
`--tune-queries`, as corpus rows are another distribution than the queries. The knob chosen is the smallest whose
recall@k reaches the target with 95% confidence (the lower one-sided bound over the queries), so a fresh query set
meets it too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

logger = logging.getLogger(__name__)

NPROBE_VALUES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096, 8192, 16384,
                 32768, 65536)
EF_VALUES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048)
REFINE_VALUES = (1, 2, 4, 8, 16, 32, 64)  # candidates fetched per result for exact re-ranking (1: none)


@dataclass
class QuerySide:
    """Where an index's queries come from when that is not its corpus: the modality, and the id ranges of the
    source's rows of that modality (empty when the index holds none)."""

    modality: str
    ranges: list[tuple[int, int]]

    def warning(self, corpus: str) -> str | None:
        """The build's warning when the queries' side has no rows to tune on, naming `--tune-queries`."""
        if self.ranges:
            return None
        return (f"queries of this index come from {self.modality} (its space's text side), but it holds no "
                f"{self.modality} rows: recall was tuned on held-out {corpus} rows, another distribution; pass "
                f"--tune-queries with {self.modality} query embeddings to tune on what will be searched")


def query_side(source: Any, embedders: dict[str, Any]) -> QuerySide | None:
    """The space's text side when an index records it (a `text` embedder for queries) and its corpus is not all
    text: text queries into an IMU or image index are another distribution than its rows. Returns the side with
    the source's text rows (inputs whose modality is text), or None when queries look like the corpus."""
    corpus = {s.modality for s in source.shards if s.modality}
    side = "text"
    if not corpus or corpus == {side} or side not in embedders:
        return None
    ranges = [(s.offset, s.offset + s.count) for s in source.shards if s.modality == side and s.count]
    return QuerySide(side, ranges)


def sample_ranges(ranges: list[tuple[int, int]], n: int, seed: int, start: int, stop: int) -> np.ndarray:
    """Up to `n` sorted ids drawn uniformly from the union of `ranges` clipped to `[start, stop)`."""
    pool = np.concatenate([np.arange(max(a, start), min(b, stop), dtype=np.int64) for a, b in ranges] or
                          [np.zeros(0, np.int64)])
    if len(pool) <= n:
        return pool
    return np.sort(np.random.default_rng(seed).choice(pool, size=n, replace=False))


def describe_tuning(t: dict[str, Any]) -> str:
    """What tuning measured and what it held out, in one line for `index build` (no more than happened)."""
    n, what = t["queries"], t.get("query_set", "queries")
    held = int(t.get("held_out", n if what == "held-out corpus sample" else 0))
    if held:
        where = (f"{held} {what}: kept out of the index while tuning, then added to it "
                 f"(the index holds all {t.get('corpus_rows', 'its')} rows)")
    else:
        where = f"{n} queries from {what} (not in the index; nothing was held out of it)"
    line = (f"recall@{t['k']} = {t['recall']} (95% lower bound {t.get('recall_lower')}, target "
            f"{t['target_recall']}) on {where}")
    return line + ("" if t.get("reached", True) else "; TARGET NOT REACHED")


class ExactNeighbours:
    """Streaming exact top-k (inner product) of fixed queries over corpus batches, via faiss's `ResultHeap`."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)  # [Q, E]
        self.k = k
        self.heap = faiss.ResultHeap(len(queries), k, keep_max=True)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(self.queries) == 0 or len(ids) == 0:
            return
        kk = min(self.k, len(ids))
        scores, idx = faiss.knn(self.queries, vectors, kk, metric=faiss.METRIC_INNER_PRODUCT)  # [Q, kk]
        self.heap.add_result(scores, np.where(idx >= 0, np.asarray(ids)[np.maximum(idx, 0)], -1))

    def result(self) -> np.ndarray:
        """Exact neighbour ids `[Q, k]` (-1 where the corpus is too small)."""
        self.heap.finalize()
        return self.heap.I


def per_query_recall(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fraction of each row's true neighbours (`truth` `[Q, k]`, -1 = none) present in `found` `[Q, k']`: `[Q]`.

    Rows without true neighbours are left out.
    """
    found, truth = np.asarray(found), np.asarray(truth)
    if len(truth) == 0:
        return np.zeros(0)
    valid = truth >= 0
    hit = (truth[:, :, None] == found[:, None, :]).any(-1) & valid  # [Q, k]
    n = valid.sum(1)
    return hit.sum(1)[n > 0] / n[n > 0]


def lower_bound(per_query: np.ndarray, z: float = 1.645) -> float:
    """One-sided 95% lower confidence bound of the mean recall (normal approximation over queries)."""
    if len(per_query) < 2:
        return float(per_query.mean()) if len(per_query) else 1.0
    return float(per_query.mean() - z * per_query.std(ddof=1) / np.sqrt(len(per_query)))


def _inner(index: faiss.Index) -> faiss.Index:
    idx = faiss.downcast_index(index)
    while isinstance(idx, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform, faiss.IndexRefine)):
        idx = faiss.downcast_index(idx.base_index if isinstance(idx, faiss.IndexRefine) else idx.index)
    return idx


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def knob(index: faiss.Index) -> tuple[str | None, list[int]]:
    """The search-time parameter that trades speed for recall, and the values worth trying."""
    ivf = ivf_of(index)
    if ivf is not None:
        return "nprobe", [v for v in NPROBE_VALUES if v <= ivf.nlist] or [ivf.nlist]
    if isinstance(_inner(index), faiss.IndexHNSW):
        return "efSearch", list(EF_VALUES)
    return None, []


def set_params(index: faiss.Index, params: dict[str, Any]) -> None:
    """Apply search parameters (nprobe, efSearch, ...) through faiss's `ParameterSpace` (GPU-aware); `refine` is
    ours (applied by `shards.search_parts`), not faiss's, and is left out."""
    params = {k: v for k, v in (params or {}).items() if k != "refine"}
    if not params:
        return
    gpu = "Gpu" in type(faiss.downcast_index(index)).__name__ or hasattr(index, "getDevice")
    ps = faiss.GpuParameterSpace() if gpu and hasattr(faiss, "GpuParameterSpace") else faiss.ParameterSpace()
    for name, value in params.items():
        ps.set_index_parameter(index, name, float(value))


def params_for(index: faiss.Index, name: str | None, value: int | None) -> dict[str, int]:
    """Full parameter set for one knob value (the HNSW coarse quantizer of IVF follows nprobe)."""
    if name is None or value is None:
        return {}
    params = {name: int(value)}
    ivf = ivf_of(index)
    if name == "nprobe" and ivf is not None and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
        params["quantizer_efSearch"] = max(64, 2 * int(value))
    return params


@dataclass
class TuneResult:
    params: dict[str, int] = field(default_factory=dict)
    recall: float = 1.0  # mean recall@k on the tuning queries
    trace: list[dict[str, float]] = field(default_factory=list)  # one entry per value tried
    reached: bool = True  # the lower confidence bound reached the target
    lower: float = 1.0  # one-sided 95% lower bound of `recall`


def tune(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, *, k: int = 10, target: float = 0.95,
         raw: Any = None) -> TuneResult:
    """Smallest nprobe/efSearch whose recall@k (vs the exact neighbours `truth`) reaches `target` with 95%
    confidence; else the best one found. With `raw` vectors (`rawvectors.RawVectors`) the re-ranking factor `refine`
    is swept at each knob value too (re-ranking prefixes of one faiss search for the most candidates any factor
    needs) and the setting of least measured time per query that reaches the target wins."""
    name, values = knob(index)
    if len(queries) == 0:
        return TuneResult()
    refined = raw is not None and index.ntotal > k + 1
    factors = [f for f in REFINE_VALUES if f == 1 or k * f // 2 < index.ntotal] if refined else [1]
    kmax = min(k * factors[-1], int(index.ntotal))
    trace: list[dict[str, float]] = []
    reached: tuple[float, dict[str, int], float, float] | None = None  # (ms, params, recall, lower)
    best: tuple[float, float, dict[str, int]] | None = None  # (recall, lower, params)
    top: list[float] = []  # best recall over factors at each knob value
    for v in values or [None]:
        if name == "efSearch" and v < k + 1:  # type: ignore[operator]
            continue
        base = params_for(index, name, v)
        set_params(index, base)
        t0 = time.perf_counter()
        _, plain = index.search(queries, k)
        t_plain = time.perf_counter() - t0
        if refined:
            t0 = time.perf_counter()
            _, cand = index.search(queries, kmax)
            t_cand = time.perf_counter() - t0
        recalls = []
        for f in factors:
            found, secs = plain, t_plain
            if f > 1:
                t0 = time.perf_counter()
                _, found = raw.rerank(queries, cand[:, : min(k * f, kmax)], k)
                secs = t_cand + time.perf_counter() - t0
            per = per_query_recall(found, truth)
            r, lo = (float(per.mean()), lower_bound(per)) if len(per) else (1.0, 1.0)
            ms = 1e3 * secs / len(queries)
            params = {**base, **({"refine": f} if f > 1 else {})}
            trace.append({**({name: v} if name else {}), **({"refine": f} if refined else {}), "recall": round(r, 4),
                          "lower": round(lo, 4), "ms_per_query": round(ms, 4)})
            recalls.append(r)
            logger.info("tune %s: recall@%d=%.4f (lower bound %.4f), %.3f ms/query", params or "-", k, r, lo, ms)
            if best is None or r > best[0] + 0.002:
                best = (r, lo, params)
            if lo >= target:
                if reached is None or ms < reached[0]:
                    reached = (ms, params, r, lo)
                break  # more re-ranking at this knob value only costs more (whatever a noisy timing says)
        top.append(max(recalls))
        if reached is not None and (not refined or 1e3 * t_plain / len(queries) > reached[0]):
            break  # the smallest knob value reached it, or faiss alone now costs more than the cheapest setting found
        if reached is None and len(top) >= 3 and max(top[-3:]) - top[-3] < 0.001:
            break  # recall has plateaued (compression limits it); more probes only cost time
    if reached is not None:
        _, params, r, lo = reached
        set_params(index, params)
        return TuneResult(params, r, trace, True, lo)
    assert best is not None
    r, lo, params = best
    set_params(index, params)
    why = ("the graph limits recall: rebuild with a larger ef_construction (--ef-construction, e.g. 120)"
           if name == "efSearch" else "compressed codes limit recall: allow more memory or use a Flat/IVF-Flat index")
    logger.warning("target recall@%d=%.3f not reached; best %.4f at %s (%s)", k, target, r, params, why)
    return TuneResult(params, r, trace, False, lo)


__all__ = ["REFINE_VALUES", "ExactNeighbours", "TuneResult", "ivf_of", "knob", "lower_bound", "params_for",
           "per_query_recall", "set_params", "tune"]
