"""Raw (normalised) vectors kept on disk beside a compressed index, to re-rank its candidates exactly.

A PQ/SQ index's codes lose too much to rank near neighbours right, so compressed indexes keep the vectors as a flat
`vectors.f16` (or `.f32`) file `[rows, dim]`; a search with `refine=R` fetches `k * R` faiss candidates and returns
the best k by exact inner product. The file is memory-mapped (read through the page cache: its pages count in RSS
as shared, reclaimable file pages, outside the index's memory budget). Rows are found by id through `segments`,
`[first_id, first_row, count]` runs of consecutive ids; deleted ids keep their rows, skipped (NaN/zero) rows hold
zeros. The config's `raw` entry records file, dtype, rows and segments.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

DTYPES = {"float16": ("vectors.f16", np.float16), "float32": ("vectors.f32", np.float32)}
CHUNK_BYTES = 32 << 20  # candidate rows gathered at a time while re-ranking (as float32)
GPU_MAX_K = 2048


def check_dtype(dtype: str | None) -> str | None:
    """'float16' | 'float32' | None ('none'/'' also mean None), else a one-line error."""
    if dtype in (None, "", "none", "None"):
        return None
    if dtype not in DTYPES:
        raise ValueError(f"raw vector dtype must be float16, float32 or none, got {dtype!r}")
    return str(dtype)


class RawWriter:
    """Appends normalised rows to a raw-vector file and keeps the id -> row segments (see module docstring)."""

    def __init__(self, folder: Path, dtype: str, previous: dict[str, Any] | None = None, dim: int = 0) -> None:
        prev = previous or {}
        self.dtype = prev.get("dtype", dtype)
        self.name, self.np_dtype = DTYPES[self.dtype]
        self.path = Path(folder) / self.name
        self.dim = int(prev.get("dim", dim))
        self.rows = int(prev.get("rows", 0))
        self.segments: list[list[int]] = [list(map(int, s)) for s in prev.get("segments", [])]
        if prev:
            check_file(self.path, self.rows, self.dim, self.np_dtype)
            with self.path.open("r+b") as f:
                f.truncate(self.rows * self.dim * np.dtype(self.np_dtype).itemsize)  # drop any torn tail
        self._f: BinaryIO = self.path.open("ab")

    def add(self, ids: np.ndarray, vectors: np.ndarray, keep: np.ndarray | None = None) -> None:
        """Rows for consecutive `ids` `[B]` (normalised `vectors` `[B, dim]`; rows not in `keep` are zeros)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        x = np.asarray(vectors, dtype=self.np_dtype)
        if keep is not None and not keep.all():
            x = np.where(keep[:, None], x, 0).astype(self.np_dtype)
        first, n = int(ids[0]), len(ids)
        if n > 1 and not np.array_equal(ids, np.arange(first, first + n)):
            for i, v in zip(ids, x):  # not a run of consecutive ids: one segment per row (never in practice)
                self._segment(int(i), 1)
                self._f.write(np.ascontiguousarray(v[None]).tobytes())
            return
        self._segment(first, n)
        self._f.write(np.ascontiguousarray(x).tobytes())

    def _segment(self, first: int, n: int) -> None:
        last = self.segments[-1] if self.segments else None
        if last is not None and last[0] + last[2] == first and last[1] + last[2] == self.rows:
            last[2] += n
        else:
            self.segments.append([first, self.rows, n])
        self.rows += n

    def append_file(self, other: Path, config: dict[str, Any]) -> None:
        """Copy another raw-vector file's rows (and its segments, shifted) after these rows."""
        if config.get("dtype") != self.dtype or int(config.get("dim", -1)) != self.dim:
            raise ValueError(f"{other}: raw vectors of dtype {config.get('dtype')} dim {config.get('dim')} "
                             f"cannot join {self.dtype} dim {self.dim}")
        rows = int(config.get("rows", 0))
        check_file(other, rows, self.dim, self.np_dtype)
        self._f.flush()
        with other.open("rb") as src:
            left = rows * self.dim * np.dtype(self.np_dtype).itemsize
            while left > 0:
                block = src.read(min(left, CHUNK_BYTES))
                self._f.write(block)
                left -= len(block)
        for first, row, n in config.get("segments", []):
            self.segments.append([int(first), self.rows + int(row), int(n)])
        self.rows += rows

    def close(self) -> dict[str, Any]:
        """Flush to disk; the config entry describing the file."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return self.record()

    def record(self) -> dict[str, Any]:
        return {"file": self.name, "dtype": self.dtype, "dim": self.dim, "rows": self.rows,
                "segments": self.segments}


def check_file(path: Path, rows: int, dim: int, dtype: Any) -> None:
    """A raw-vector file shorter than its config says: a one-line error naming it."""
    need = rows * dim * np.dtype(dtype).itemsize
    have = path.stat().st_size if path.is_file() else -1
    if have < need:
        what = "missing" if have < 0 else f"truncated ({have} bytes)"
        raise ValueError(f"{path}: raw vectors for re-ranking {what}; the index expects {rows} x {dim} "
                         f"{np.dtype(dtype).name} ({need} bytes); rebuild the index, or search with refine=0")


class RawVectors:
    """Read side: memory-mapped rows, looked up by id, and the exact re-ranking of faiss candidates."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.dtype = config["dtype"]
        name, np_dtype = DTYPES[self.dtype]
        self.path = Path(folder) / config.get("file", name)
        self.dim, self.rows = int(config["dim"]), int(config["rows"])
        check_file(self.path, self.rows, self.dim, np_dtype)
        seg = np.asarray(config.get("segments", []), dtype=np.int64).reshape(-1, 3)
        order = np.argsort(seg[:, 0], kind="stable")
        self._first, self._row, self._count = seg[order, 0], seg[order, 1], seg[order, 2]
        self._row_bytes = self.dim * np.dtype(np_dtype).itemsize
        self._map: mmap.mmap | None = None
        if self.rows:
            with self.path.open("rb") as f:
                self._map = mmap.mmap(f.fileno(), self.rows * self._row_bytes, access=mmap.ACCESS_READ)
            self.data = np.frombuffer(self._map, dtype=np_dtype).reshape(self.rows, self.dim)
        else:
            self.data = np.zeros((0, self.dim), dtype=np_dtype)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (any shape; -1 for ids without a row, faiss's -1 padding included)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self._first):
            return np.full(ids.shape, -1, dtype=np.int64)
        j = np.maximum(np.searchsorted(self._first, ids, side="right") - 1, 0)
        off = ids - self._first[j]
        ok = (off >= 0) & (off < self._count[j])
        return np.where(ok, self._row[j] + off, -1)

    def scores(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact inner products `[Q, K]` of `queries` `[Q, dim]` with the rows of candidate `ids` `[Q, K]`
        (-inf where an id has no row)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        nq, kk = ids.shape
        out = np.full((nq, kk), -np.inf, dtype=np.float32)
        if not nq or not kk:
            return out
        step = max(1, CHUNK_BYTES // max(kk * self.dim * 4, 1))
        for lo in range(0, nq, step):
            hi = min(lo + step, nq)
            rows = self.rows_of(ids[lo:hi])  # [q, K]
            ok = rows >= 0
            flat = rows[ok]
            if not len(flat):
                continue
            gathered = self.data[flat].astype(np.float32)  # [M, dim], M = valid candidates of these queries
            qi = np.nonzero(ok)[0]  # query of each gathered row
            dots = np.einsum("md,md->m", gathered, q[lo:hi][qi])
            block = out[lo:hi]
            block[ok] = dots
        return out

    def rerank(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` of candidate `ids` `[Q, K]` by exact score: (scores `[Q, k]`, ids `[Q, k]`, -1 padded)."""
        s = self.scores(queries, ids)
        k = min(k, ids.shape[1])
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        top_s = np.take_along_axis(s, order, 1)
        top_i = np.take_along_axis(ids, order, 1)
        missing = ~np.isfinite(top_s)
        if missing.any():
            top_i = np.where(missing, -1, top_i)
            top_s = np.where(missing, -np.inf, top_s).astype(np.float32)
        return top_s, top_i


def refine_factor(params: dict[str, Any] | None) -> int:
    """The `refine` search parameter as a factor >= 1 (0, 1 or absent: no re-ranking)."""
    v = (params or {}).get("refine", 1)
    try:
        f = int(v)
    except (TypeError, ValueError):
        raise ValueError(f"refine must be an integer >= 0 (candidates fetched per result), got {v!r}") from None
    if f < 0 or f != float(v):
        raise ValueError(f"refine must be an integer >= 0 (candidates fetched per result), got {v!r}")
    return max(f, 1)


def refined_search(index: Any, raw: RawVectors | None, queries: np.ndarray, k: int, factor: int,
                   params: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """faiss search for `k * factor` candidates, re-ranked exactly to the top `k` (plain search when `factor` <= 1
    or there are no raw vectors)."""
    if raw is None or factor <= 1:
        return index.search(queries, k, params=params)
    kk = max(min(k * factor, int(index.ntotal)), k)
    if "Gpu" in type(index).__name__ or "Replicas" in type(index).__name__:
        kk = max(min(kk, GPU_MAX_K), k)  # faiss's GPU indexes return at most 2048 results per query
    _, cand = index.search(queries, kk, params=params)
    return raw.rerank(queries, cand, k)


__all__ = ["DTYPES", "RawVectors", "RawWriter", "check_dtype", "check_file", "refine_factor", "refined_search"]
