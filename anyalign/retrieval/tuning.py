"""Exact ground truth gathered while adding, and the search-time knob (nprobe / efSearch) tuned to a recall.

Tuning queries are held out of the index while tuning and added back after (or are the user's own queries, never
added), so the recall they measure is the one new queries get when new queries look like them. An index whose
queries come from another modality than its corpus (its space's text side, e.g. text into an IMU index:
`query_side`) tunes on that side's rows where the index holds them; otherwise the build warns and names
`--tune-queries`, as corpus rows are another distribution than the queries. A query id >= 0 marks a query that
is itself in the corpus: its own id is then dropped from both the exact and the approximate neighbour lists. The
knob chosen is the smallest whose recall@k reaches the target with 95% confidence (the lower one-sided bound over
the queries), so a fresh query set meets it too.
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
OUR_PARAMS = frozenset({"refine"})  # search parameters faiss does not know (see rawvectors.py)


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
    subs = list(getattr(source, "sources", [source]))
    corpus = {s.modality for s in subs if s.modality}
    side = "text"
    if not corpus or corpus == {side} or side not in embedders:
        return None
    offsets = getattr(source, "offsets", [0])
    ranges = [(int(off), int(off) + len(s)) for s, off in zip(subs, offsets) if s.modality == side and len(s)]
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

    def __init__(self, queries: np.ndarray, query_ids: np.ndarray, k: int) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)  # [Q, E]
        self.query_ids = np.asarray(query_ids, dtype=np.int64)  # [Q]
        self.k = k
        self.heap = faiss.ResultHeap(len(queries), k + 1, keep_max=True)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(self.queries) == 0 or len(ids) == 0:
            return
        kk = min(self.k + 1, len(ids))
        scores, idx = faiss.knn(self.queries, vectors, kk, metric=faiss.METRIC_INNER_PRODUCT)  # [Q, kk]
        self.heap.add_result(scores, np.where(idx >= 0, np.asarray(ids)[np.maximum(idx, 0)], -1))

    def result(self) -> np.ndarray:
        """Exact neighbour ids `[Q, k]` without each query's own id (-1 where the corpus is too small)."""
        self.heap.finalize()
        return drop_self(self.heap.I, self.query_ids, self.k)


def drop_self(ids: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    """Remove each row's own id from `[Q, k+1]` neighbour lists, keeping the first `k` others."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for r, (row, q) in enumerate(zip(ids, query_ids)):
        keep = row[(row != q) & (row >= 0)][:k]
        out[r, : len(keep)] = keep
    return out


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


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row's true neighbours present in `found` (1.0 when there are none)."""
    r = per_query_recall(found, truth)
    return float(r.mean()) if len(r) else 1.0


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
    params = {k: v for k, v in (params or {}).items() if k not in OUR_PARAMS}
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


def search_without_self(index: faiss.Index, queries: np.ndarray, query_ids: np.ndarray, k: int) -> np.ndarray:
    _, found = index.search(queries, k + 1)
    return drop_self(found, query_ids, k)


@dataclass
class TuneResult:
    params: dict[str, int] = field(default_factory=dict)
    recall: float = 1.0  # mean recall@k on the tuning queries
    trace: list[dict[str, float]] = field(default_factory=list)  # one entry per value tried
    reached: bool = True  # the lower confidence bound reached the target
    lower: float = 1.0  # one-sided 95% lower bound of `recall`


def tune(index: faiss.Index, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray, *, k: int = 10,
         target: float = 0.95, raw: Any = None) -> TuneResult:
    """Smallest nprobe/efSearch whose recall@k (vs exact search) reaches `target` with 95% confidence; else the
    best one found. With `raw` vectors (`rawvectors.RawVectors`) the re-ranking factor `refine` is tuned with it:
    the setting of least measured time per query that reaches the target."""
    name, values = knob(index)
    if raw is not None and len(queries) and index.ntotal > k + 1:
        return _tune_refined(index, name, values, queries, query_ids, truth, k, target, raw)
    if name is None or len(queries) == 0:
        r = per_query_recall(search_without_self(index, queries, query_ids, k), truth) if len(queries) else \
            np.ones(0)
        rec = float(r.mean()) if len(r) else 1.0
        return TuneResult({}, rec, [], lower_bound(r) >= target or name is None, lower_bound(r))
    trace: list[dict[str, float]] = []
    best: tuple[float, float, int] | None = None
    for v in values:
        if name == "efSearch" and v < k + 1:
            continue
        set_params(index, params_for(index, name, v))
        t0 = time.perf_counter()
        per = per_query_recall(search_without_self(index, queries, query_ids, k), truth)
        ms = 1e3 * (time.perf_counter() - t0) / len(queries)
        r, lo = (float(per.mean()), lower_bound(per)) if len(per) else (1.0, 1.0)
        trace.append({name: v, "recall": round(r, 4), "lower": round(lo, 4), "ms_per_query": round(ms, 4)})
        logger.info("tune %s=%d: recall@%d=%.4f (lower bound %.4f)", name, v, k, r, lo)
        if best is None or r > best[0] + 0.002:
            best = (r, lo, v)
        if lo >= target:
            return TuneResult(params_for(index, name, v), r, trace, True, lo)
        if len(trace) >= 3 and max(t["recall"] for t in trace[-3:]) - trace[-3]["recall"] < 0.001:
            break  # recall has plateaued (compression limits it); more probes only cost time
    assert best is not None
    set_params(index, params_for(index, name, best[2]))
    why = ("the graph limits recall: rebuild with a larger ef_construction (--ef-construction, e.g. 120)"
           if name == "efSearch" else "compressed codes limit recall: allow more memory or use a Flat/IVF-Flat index")
    logger.warning("target recall@%d=%.3f not reached; best %.4f at %s=%d (%s)", k, target, best[0], name, best[2],
                   why)
    return TuneResult(params_for(index, name, best[2]), best[0], trace, False, best[1])


def _tune_refined(index: faiss.Index, name: str | None, values: list[int], queries: np.ndarray,
                  query_ids: np.ndarray, truth: np.ndarray, k: int, target: float, raw: Any) -> TuneResult:
    """Sweep the knob upwards; at each value one faiss search for the most candidates any factor needs, each
    factor re-ranking a prefix of them (faiss's candidates are sorted, so a prefix is what the smaller search
    returns). Cost = faiss's time (at k+1 results without refine, at the most candidates with it) + re-ranking's;
    at each knob value only the smallest factor reaching the target is a candidate. Stops once faiss alone is
    slower than the cheapest setting that reached the target, or recall plateaus."""
    kq = k + 1 if (np.asarray(query_ids) >= 0).any() else k  # results a search asks for (+ the query itself)
    factors = [f for f in REFINE_VALUES if f == 1 or kq * f // 2 < index.ntotal]
    kmax = min(kq * factors[-1], int(index.ntotal))
    nq = len(queries)
    trace: list[dict[str, float]] = []
    reached: tuple[float, dict[str, int], float, float] | None = None  # (ms, params, recall, lower)
    best: tuple[float, float, float, dict[str, int]] | None = None  # (recall, ms, lower, params)
    top: list[float] = []  # best recall over factors at each knob value
    for v in values or [None]:
        if name == "efSearch" and v is not None and v < k + 1:
            continue
        base = params_for(index, name, v)
        set_params(index, base)
        t0 = time.perf_counter()
        _, plain = index.search(queries, k + 1)
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, cand = index.search(queries, kmax)
        t_cand = time.perf_counter() - t0
        recalls = []
        for f in factors:
            if f == 1:
                found, secs = plain, t_plain
            else:
                t0 = time.perf_counter()
                _, found = raw.rerank(queries, cand[:, : min(kq * f, kmax)], kq)
                secs = t_cand + time.perf_counter() - t0
            per = per_query_recall(drop_self(found, query_ids, k), truth)
            r, lo = (float(per.mean()), lower_bound(per)) if len(per) else (1.0, 1.0)
            ms = 1e3 * secs / nq
            params = {**base, **({"refine": f} if f > 1 else {})}
            entry = {**({name: v} if name else {}), "refine": f, "recall": round(r, 4), "lower": round(lo, 4),
                     "ms_per_query": round(ms, 4)}
            trace.append(entry)
            recalls.append(r)
            logger.info("tune %s refine=%d: recall@%d=%.4f (lower bound %.4f), %.3f ms/query",
                        ", ".join(f"{a}={b}" for a, b in base.items()) or "-", f, k, r, lo, ms)
            if best is None or r > best[0] + 0.002:
                best = (r, ms, lo, params)
            if lo >= target:
                if reached is None or ms < reached[0]:
                    reached = (ms, params, r, lo)
                break  # more re-ranking at this knob value only costs more (whatever a noisy timing says)
        top.append(max(recalls))
        if reached is not None and 1e3 * t_plain / nq > reached[0]:
            break  # faiss alone now costs more than the cheapest setting found
        if reached is None and len(top) >= 3 and max(top[-3:]) - top[-3] < 0.001:
            break  # recall has plateaued even with the most re-ranking
    if reached is not None:
        ms, params, r, lo = reached
        set_params(index, params)
        return TuneResult(params, r, trace, True, lo)
    assert best is not None
    r, _, lo, params = best
    set_params(index, params)
    logger.warning("target recall@%d=%.3f not reached; best %.4f at %s (compressed codes limit recall even with "
                   "re-ranking %d candidates per result: allow more memory or use a Flat/IVF-Flat index)", k, target,
                   r, params, factors[-1])
    return TuneResult(params, r, trace, False, lo)


__all__ = ["OUR_PARAMS", "REFINE_VALUES", "ExactNeighbours", "TuneResult", "drop_self", "ivf_of", "knob",
           "lower_bound", "params_for", "per_query_recall", "recall_at_k", "search_without_self", "set_params", "tune"]
