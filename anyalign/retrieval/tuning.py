"""Exact ground truth gathered while adding, and the search-time knob (nprobe / efSearch) tuned to a recall.

Tuning queries are corpus vectors; each query's own id is dropped from both the exact and the approximate
neighbour lists, so recall@k measures the k true neighbours other than the query itself.
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


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row's true neighbours (`truth` `[Q, k]`, -1 = none) present in `found` `[Q, k]`."""
    hits, total = 0, 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t))
        total += len(t)
    return hits / total if total else 1.0


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
    recall: float = 1.0
    trace: list[dict[str, float]] = field(default_factory=list)  # one entry per value tried
    reached: bool = True


def tune(index: faiss.Index, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray, *, k: int = 10,
         target: float = 0.95) -> TuneResult:
    """Smallest nprobe/efSearch whose recall@k (vs exact search) reaches `target`; else the best one found."""
    name, values = knob(index)
    if name is None or len(queries) == 0:
        found = search_without_self(index, queries, query_ids, k) if len(queries) else truth
        return TuneResult({}, recall_at_k(found, truth))
    trace: list[dict[str, float]] = []
    best: tuple[float, int] | None = None
    for v in values:
        if name == "efSearch" and v < k + 1:
            continue
        set_params(index, params_for(index, name, v))
        t0 = time.perf_counter()
        r = recall_at_k(search_without_self(index, queries, query_ids, k), truth)
        trace.append({name: v, "recall": r, "ms_per_query": 1e3 * (time.perf_counter() - t0) / len(queries)})
        logger.info("tune %s=%d: recall@%d=%.4f", name, v, k, r)
        if best is None or r > best[0] + 0.002:
            best = (r, v)
        if r >= target:
            return TuneResult(params_for(index, name, v), r, trace, True)
        if len(trace) >= 3 and max(t["recall"] for t in trace[-3:]) - trace[-3]["recall"] < 0.001:
            break  # recall has plateaued (compression limits it); more probes only cost time
    assert best is not None
    set_params(index, params_for(index, name, best[1]))
    logger.warning("target recall@%d=%.3f not reached; best %.4f at %s=%d (compressed codes limit recall: "
                   "allow more memory or use a Flat/IVF-Flat index)", k, target, best[0], name, best[1])
    return TuneResult(params_for(index, name, best[1]), best[0], trace, False)


__all__ = ["ExactNeighbours", "TuneResult", "drop_self", "ivf_of", "knob", "params_for", "recall_at_k",
           "search_without_self", "set_params", "tune"]
