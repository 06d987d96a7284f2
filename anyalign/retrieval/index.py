"""A faiss index folder over the shared embedding space: its config, GPU helpers, save and load.

An index folder holds `index.faiss`, `anyalign_index.json` (`IndexConfig`) and `metadata.sqlite`; compressed (PQ/SQ)
indexes also keep their normalised vectors on disk for exact re-ranking (`rawvectors.py`). Vectors are
L2-normalised and compared by inner product (cosine). Building is `index_build.py`, adding and deleting rows
`index_update.py`; the rules every writer follows (one writer at a time, never replacing a path it did not write,
rows with NaN/inf or zero norm skipped and counted) are `index_safety.py`'s.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..config import read_saved, to_dict
from ..io import write_json
from ..version import FORMAT_VERSION, __version__
from .index_safety import CONFIG_NAME, INDEX_NAME, IVFDATA_NAME, check_factory, check_k
from .metadata import MetadataStore
from .tuning import ExactNeighbours, _inner, ivf_of, set_params

logger = logging.getLogger(__name__)

MAX_SKIPPED_IDS = 20  # ids of skipped rows kept in the config (the count is exact)


@dataclass
class IndexConfig:
    """What `anyalign_index.json` records about an index folder."""

    dim: int
    factory: str
    kind: str = "single"  # single | set (parts searched together) | trained (empty, for independent builds)
    metric: str = "IP"
    normalized: bool = True
    ntotal: int = 0
    next_id: int = 0  # id given to the next added vector
    search_params: dict[str, int] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)  # target, k, held-out recall reached, queries used
    embedders: dict[str, dict[str, Any]] = field(default_factory=dict)  # modality -> how to embed queries
    modality: str | None = None  # modality of the corpus
    ondisk: bool = False  # inverted lists in index.ivfdata (merged from parts)
    tombstones: bool = False  # deletes are flagged in metadata (the index cannot remove vectors)
    trained_fingerprint: str | None = None  # sha256 of the empty trained index (parts that share it can merge)
    parts: list[str] = field(default_factory=list)  # kind == "set": part folders, relative to this folder
    raw: dict[str, Any] = field(default_factory=dict)  # raw vectors on disk for re-ranking (rawvectors.py)
    sources: list[str] = field(default_factory=list)
    skipped: dict[str, Any] = field(default_factory=dict)  # rows not indexed: nonfinite / zero counts, first ids
    choice: str = ""  # why the factory was chosen
    build_seconds: float = 0.0
    format_version: int = FORMAT_VERSION
    anyalign_version: str = __version__


# --- input checks ------------------------------------------------------------------------------------------
def invalid_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks `[N]` of rows with a NaN/inf value and of (finite) rows with zero norm."""
    nonfinite = ~np.isfinite(x).all(axis=1)
    zero = ~nonfinite & ~np.any(x != 0, axis=1)
    return nonfinite, zero


class _Skipped:
    """Counts (and the first ids of) rows left out of an index because they cannot be searched."""

    def __init__(self, previous: dict[str, Any] | None = None) -> None:
        prev = previous or {}
        self.nonfinite, self.zero = int(prev.get("nonfinite", 0)), int(prev.get("zero", 0))
        self.ids: list[int] = list(prev.get("ids", []))
        self.new = 0

    def keep(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Mask of rows to index; the others are counted."""
        nonfinite, zero = invalid_rows(vectors)
        bad = nonfinite | zero
        if bad.any():
            self.nonfinite += int(nonfinite.sum())
            self.zero += int(zero.sum())
            self.new += int(bad.sum())
            self.ids += [int(i) for i in ids[bad][: max(MAX_SKIPPED_IDS - len(self.ids), 0)]]
        return ~bad

    def record(self) -> dict[str, Any]:
        if not (self.nonfinite or self.zero):
            return {}
        return {"nonfinite": self.nonfinite, "zero": self.zero, "ids": self.ids}

    def log(self, name: str) -> None:
        if self.new:
            logger.warning("%s: skipped %d rows with NaN/inf values or zero norm (first ids %s); they are not "
                           "indexed", name, self.new, self.ids[:5])


# --- GPU ---------------------------------------------------------------------------------------------------
def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def to_gpu(index: faiss.Index) -> faiss.Index | None:
    """A copy of `index` on all GPUs, or None when there are none or faiss has no GPU version of this type."""
    if gpu_count() == 0 or isinstance(_inner(index), faiss.IndexHNSW):
        return None
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as e:
        logger.warning("faiss could not move %s to GPU (%s); using the CPU", type(index).__name__, e)
        return None


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if hasattr(faiss, "index_gpu_to_cpu") and _on_gpu(index) else index


def _on_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(faiss.downcast_index(index)).__name__ or "Gpu" in type(index).__name__


# --- creation --------------------------------------------------------------------------------------------
def new_index(factory: str, dim: int, ef_construction: int | None = None) -> faiss.Index:
    """An empty inner-product index from a factory string; types without native ids get an `IDMap2` wrapper.
    `ef_construction`: an HNSW graph's build-time beam (faiss's default 40; larger: better graphs, slower builds)."""
    check_factory(factory, dim)
    try:
        index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "rejected"
        raise ValueError(f"unknown or invalid faiss factory string {factory!r} for dim {dim}: {reason} "
                         "(examples: Flat, HNSW32,Flat, IVF1024,Flat, OPQ32_128,IVF1024,PQ32)") from None
    if ef_construction is not None:
        graph = getattr(faiss.downcast_index(index), "hnsw", None)
        if graph is None:
            raise ValueError(f"ef_construction applies to HNSW indexes; {factory!r} has no HNSW graph")
        graph.efConstruction = check_k(ef_construction, "ef_construction")
    if ivf_of(index) is None and not isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.IndexIDMap2(index)
    return index


def supports_remove(index: faiss.Index) -> bool:
    """True when `index.remove_ids` works for this type (HNSW graphs cannot drop vectors)."""
    try:
        index.remove_ids(faiss.IDSelectorBatch(np.zeros(0, dtype=np.int64)))
        return True
    except RuntimeError:
        return False


def fingerprint(index: faiss.Index) -> str:
    """sha256 of a trained, empty index: parts built from the same trained index share it."""
    return hashlib.sha256(faiss.serialize_index(to_cpu(index)).tobytes()).hexdigest()


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32, copy=True, order="C")
    faiss.normalize_L2(x)
    return x


# --- persistence -------------------------------------------------------------------------------------------
def read_config(index_dir: str | os.PathLike) -> IndexConfig:
    return read_saved(IndexConfig, Path(index_dir) / CONFIG_NAME, what="index")


def read_faiss(path: Path, *, ondisk: bool = False, mmap: bool = False) -> faiss.Index:
    """`faiss.read_index` with a clear error for missing, truncated or corrupt files."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: index file missing")
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if ondisk else (faiss.IO_FLAG_MMAP if mmap else 0)
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError as e:
        lines = [s for s in str(e).strip().splitlines() if s.strip()]
        reason = lines[-1].split("Error: ")[-1] if lines else str(e)
        raise ValueError(f"{path}: corrupt or unreadable faiss index ({reason})") from None
    if ondisk:
        _check_ivfdata(index, path.parent / IVFDATA_NAME)
    return index


def _check_ivfdata(index: faiss.Index, data: Path) -> None:
    """A memory-mapped inverted-list file shorter than the index expects would crash searches (SIGBUS)."""
    ivf = ivf_of(index)
    invlists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if not isinstance(invlists, faiss.OnDiskInvertedLists):
        return
    have = data.stat().st_size if data.is_file() else -1
    if have < int(invlists.totsize):
        raise ValueError(f"{data}: truncated or missing inverted lists ({max(have, 0)} bytes, the index expects "
                         f"{int(invlists.totsize)})")


def load_index(index_dir: str | os.PathLike, *, mmap: bool = False) -> tuple[faiss.Index, IndexConfig]:
    """Read a single (or trained) index folder; tuned search parameters are applied."""
    config = read_config(index_dir)
    if config.kind == "set":
        raise ValueError(f"{index_dir}: a sharded index set; open it with Retriever or shards.load_parts")
    index = read_faiss(Path(index_dir) / INDEX_NAME, ondisk=config.ondisk, mmap=mmap)
    if index.d != config.dim:
        raise ValueError(f"{index_dir}: {INDEX_NAME} has dim {index.d} but {CONFIG_NAME} says {config.dim}")
    set_params(index, config.search_params)
    return index, config


def write_index_dir(folder: Path, index: faiss.Index, config: IndexConfig) -> None:
    config.ntotal = int(index.ntotal)
    try:
        faiss.write_index(to_cpu(index), str(folder / INDEX_NAME))
    except RuntimeError as e:  # faiss reports a failed write (disk full, permission) as a RuntimeError
        raise faiss_write_error(e, folder / INDEX_NAME) from None
    write_json(folder / CONFIG_NAME, to_dict(config))


def faiss_write_error(e: RuntimeError, path: Path) -> OSError:
    """The OSError behind faiss's RuntimeError of a failed write (its errno when the message names one)."""
    import errno as errno_

    text = str(e)
    for code in (errno_.ENOSPC, errno_.EDQUOT, errno_.EACCES, errno_.EROFS, errno_.EIO):
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code), str(path))
    return OSError(errno_.EIO, f"faiss could not write the index ({text.strip().splitlines()[-1][-200:]})", str(path))


# --- adding rows (build and update) ------------------------------------------------------------------
def _add_rows(index: faiss.Index, meta: MetadataStore, ids: np.ndarray, vectors: np.ndarray,
              metadata: Sequence[dict[str, Any]], keep: np.ndarray, modality: str | None,
              exact: ExactNeighbours | None, *, normalized: bool = False) -> None:
    """Add the kept rows (vectors, ids, metadata) to the index, the metadata store and the exact neighbours."""
    if not keep.any():
        return
    sel = np.flatnonzero(keep)
    ids = np.ascontiguousarray(ids[sel], dtype=np.int64)
    vecs = np.ascontiguousarray(vectors[sel], dtype=np.float32) if normalized else _normalized(vectors[sel])
    index.add_with_ids(vecs, ids)
    if exact is not None:
        exact.add(ids, vecs)
    rows = [metadata[j] for j in sel]
    if modality:
        for row in rows:
            row.setdefault("modality", modality)
    meta.add(ids, rows)


__all__ = ["IndexConfig", "gpu_count", "invalid_rows", "load_index", "new_index", "read_config", "read_faiss",
           "supports_remove", "to_gpu", "write_index_dir"]
