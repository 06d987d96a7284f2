"""Exact ground truth gathered while adding, and the search-time knob (nprobe / efSearch) tuned to a recall.

Tuning queries are held out of the index (or are the user's own queries), so the recall they measure is the one
new queries get. A query id >= 0 marks a query that is itself in the corpus: its own id is then dropped from both
the exact and the approximate neighbour lists. The knob chosen is the smallest whose recall@k reaches the target
with 95% confidence (the lower one-sided bound over the queries), so a fresh query set meets it too.
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
    """Apply search parameters (nprobe, efSearch, ...) through faiss's `ParameterSpace` (GPU-aware)."""
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
         target: float = 0.95) -> TuneResult:
    """Smallest nprobe/efSearch whose recall@k (vs exact search) reaches `target` with 95% confidence; else the
    best one found."""
    name, values = knob(index)
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
    logger.warning("target recall@%d=%.3f not reached; best %.4f at %s=%d (compressed codes limit recall: "
                   "allow more memory or use a Flat/IVF-Flat index)", k, target, best[0], name, best[2])
    return TuneResult(params_for(index, name, best[2]), best[0], trace, False, best[1])


__all__ = ["ExactNeighbours", "TuneResult", "drop_self", "ivf_of", "knob", "lower_bound", "params_for",
           "per_query_recall", "recall_at_k", "search_without_self", "set_params", "tune"]
