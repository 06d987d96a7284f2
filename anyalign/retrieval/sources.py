"""Read embedding vectors for indexing without loading the corpus into RAM.

Inputs (`open_source(path)`): an `anyalign embed` folder (`embeddings.json` + `embeddings-XXXXX.npy` `[N, E]` +
`metadata-XXXXX.jsonl`), an extraction feature folder (its pooled vectors, read into memory), or `.npy` files
`[N, E]` (memory-mapped; optional sidecar `NAME.jsonl`). Every row's global id is its position across the inputs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..io import read_json

logger = logging.getLogger(__name__)

EMBEDDINGS_MANIFEST = "embeddings.json"
FEATURES_MANIFEST = "manifest.json"


@dataclass
class Batch:
    """Consecutive rows of a source: global ids `[B]`, vectors `[B, E]` float32, one metadata dict per row."""

    ids: np.ndarray
    vectors: np.ndarray
    metadata: list[dict[str, Any]]


@dataclass
class Shard:
    """Consecutive rows of a source: an `.npy` file (memory-mapped when first read) or an in-memory array `[n, E]`,
    their metadata (a `.jsonl` file, a list of dicts, or none) and their modality."""

    vectors: Path | np.ndarray
    metadata: Path | Sequence[dict[str, Any]] | None
    count: int
    modality: str | None = None
    offset: int = 0  # global id of the first row
    _array: np.ndarray | None = field(default=None, repr=False)
    _offsets: list[int] | None = field(default=None, repr=False)

    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self.vectors if isinstance(self.vectors, np.ndarray) else _open_npy(self.vectors)
        return self._array

    def read_metadata(self, start: int, stop: int) -> list[dict[str, Any]]:
        if self.metadata is None:
            return [{} for _ in range(start, stop)]
        if not isinstance(self.metadata, Path):
            return list(self.metadata[start:stop])
        if self._offsets is None:  # byte offset of every line, so that any row range is one seek away
            with self.metadata.open("rb") as f:
                self._offsets = [0] + [f.tell() for _ in iter(f.readline, b"")]
        if len(self._offsets) - 1 < self.count:
            raise ValueError(f"{self.metadata}: has {len(self._offsets) - 1} rows but {self.vectors} has "
                             f"{self.count} vectors")
        rows: list[dict[str, Any]] = []
        with self.metadata.open("rb") as f:
            f.seek(self._offsets[start])
            for i in range(start, stop):
                line = f.readline()
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{self.metadata}:{i + 1}: not valid JSON ({e})") from None
                rows.append(row if isinstance(row, dict) else {"value": row})
        return rows


def _open_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from None
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-d array [N, dim] of embeddings, got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{path}: expected float embeddings, got dtype {arr.dtype}")
    return arr


class EmbeddingSource:
    """Rows of one or more shards, addressable by global id (their position across the shards); see the module
    docstring."""

    def __init__(self, shards: Sequence[Shard], *, name: str, modality: str | None = None,
                 embedders: dict[str, dict[str, Any]] | None = None, dim: int | None = None) -> None:
        self.name = name
        self.modality = modality
        self.embedders = dict(embedders or {})  # modality -> embedder spec (how these vectors were made)
        self.shards = list(shards)
        offset = 0
        for s in self.shards:
            s.offset, s.modality = offset, s.modality or modality
            offset += s.count
        self._count = offset
        self.dim = dim if dim is not None else (self.shards[0].array().shape[1] if self.shards else 0)
        for s in self.shards:
            if s.array().shape[1] != self.dim:
                raise ValueError(f"{s.vectors if isinstance(s.vectors, Path) else name}: dimension "
                                 f"{s.array().shape[1]} differs from {self.dim} (first file of {name})")

    def __len__(self) -> int:
        return self._count

    def batches(self, batch_size: int = 65536, *, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Rows with global ids in `[start, stop)`, in order, as float32 batches."""
        stop = self._count if stop is None else min(stop, self._count)
        for s in self.shards:
            lo, hi = max(start, s.offset), min(stop, s.offset + s.count)
            for b in range(lo, hi, batch_size):
                e = min(b + batch_size, hi)
                vecs = np.ascontiguousarray(s.array()[b - s.offset: e - s.offset], dtype=np.float32)
                yield Batch(np.arange(b, e, dtype=np.int64), vecs, s.read_metadata(b - s.offset, e - s.offset))

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Vectors `[len(ids), E]` float32 of the given (sorted, unique) global ids: reads only those rows."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for s in self.shards:
            sel = (ids >= s.offset) & (ids < s.offset + s.count)
            if sel.any():
                out[sel] = s.array()[ids[sel] - s.offset]
        return out

    def sample(self, n: int, seed: int = 0, *, start: int = 0,
               stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A uniform random sample of up to `n` rows from `[start, stop)`: (sorted ids `[n]`, vectors `[n, E]`)."""
        stop = self._count if stop is None else min(stop, self._count)
        total = max(stop - start, 0)
        rng = np.random.default_rng(seed)
        ids = np.arange(start, stop, dtype=np.int64) if n >= total else \
            np.sort(rng.choice(total, size=n, replace=False)).astype(np.int64) + start
        return ids, self.take(ids)


class ArraySource(EmbeddingSource):
    """An in-memory array `[N, E]` (with optional metadata rows): for the Python API and benchmarks."""

    def __init__(self, vectors: np.ndarray, metadata: Sequence[dict[str, Any]] | None = None, *,
                 modality: str | None = None, name: str = "array",
                 embedders: dict[str, dict[str, Any]] | None = None) -> None:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"{name}: expected embeddings of shape [N, dim], got {tuple(vectors.shape)}")
        if metadata is not None and len(metadata) != len(vectors):
            raise ValueError(f"{name}: {len(metadata)} metadata rows for {len(vectors)} vectors")
        super().__init__([Shard(vectors, metadata, len(vectors))], name=name, modality=modality,
                         embedders=embedders, dim=int(vectors.shape[1]))


class ConcatSource(EmbeddingSource):
    """Several sources one after another; ids continue across them, each shard keeps its source's modality."""

    def __init__(self, sources: Sequence[EmbeddingSource]) -> None:
        if not sources:
            raise ValueError("no embeddings inputs given")
        dims = {s.dim for s in sources}
        if len(dims) > 1:
            raise ValueError("embeddings inputs have different dimensions: "
                             + ", ".join(f"{s.name} ({s.dim})" for s in sources))
        mods = {s.modality for s in sources if s.modality}
        embedders: dict[str, dict[str, Any]] = {}
        for s in sources:
            embedders.update(s.embedders)
        super().__init__([replace(sh, offset=0) for s in sources for sh in s.shards],
                         name=", ".join(s.name for s in sources), modality=mods.pop() if len(mods) == 1 else None,
                         embedders=embedders, dim=sources[0].dim)


def rank_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous id range `[start, stop)` of `n` rows that process `rank` of `world_size` takes."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    return n * rank // world_size, n * (rank + 1) // world_size


def _embeddings_dir(path: Path) -> EmbeddingSource:
    manifest = read_json(path / EMBEDDINGS_MANIFEST)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ValueError(f"{path / EMBEDDINGS_MANIFEST}: expected an object with a 'shards' list")
    shards = []
    for i, entry in enumerate(manifest["shards"]):
        try:
            vec = path / entry["vectors"]
            meta = path / entry["metadata"] if entry.get("metadata") else None
        except (KeyError, TypeError):
            raise ValueError(f"{path / EMBEDDINGS_MANIFEST}: shards[{i}] needs a 'vectors' file name") from None
        if not vec.is_file():
            raise FileNotFoundError(f"{vec}: listed in {path / EMBEDDINGS_MANIFEST} but missing")
        shards.append(Shard(vec, meta, int(_open_npy(vec).shape[0])))
    return EmbeddingSource(shards, name=str(path), modality=manifest.get("modality"),
                           embedders=manifest.get("embedders") or {}, dim=manifest.get("dim"))


def _npy_files(paths: Sequence[Path]) -> EmbeddingSource:
    shards = []
    for p in paths:
        side = p.with_suffix(".jsonl")
        arr = _open_npy(p)
        shards.append(Shard(p, side if side.is_file() else None, int(arr.shape[0])))
    return EmbeddingSource(shards, name=", ".join(str(p) for p in paths))


def _features_dir(path: Path) -> EmbeddingSource:
    """The pooled vectors of an extraction feature folder (read into memory: one `[E]` row per record)."""
    from ..features import iter_features, manifest_encoder

    manifest = read_json(path / FEATURES_MANIFEST)
    if not isinstance(manifest, dict) or "pooled_dim" not in manifest:
        raise ValueError(f"{path / FEATURES_MANIFEST}: not an extraction manifest (expected 'pooled_dim')")
    vectors, metadata = [], []
    for rec in iter_features(path):
        vectors.append(rec.pooled.float().numpy().reshape(-1))
        metadata.append({**(rec.meta or {}), "key": (rec.meta or {}).get("key", str(rec.key))})
    dim = int(manifest["pooled_dim"])
    modality = manifest.get("modality")
    encoder = manifest_encoder(manifest, str(path / FEATURES_MANIFEST))
    spec = {"encoder": encoder.to_dict()} if encoder is not None else None
    return ArraySource(np.stack(vectors) if vectors else np.zeros((0, dim), np.float32), metadata,
                       modality=modality, name=str(path), embedders={modality: spec} if modality and spec else {})


def open_source(path: str | os.PathLike) -> EmbeddingSource:
    """Open one embeddings input (folder from `anyalign embed`, feature folder, `.npy` file or folder of them)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such embeddings file or folder")
    if p.is_dir():
        if (p / EMBEDDINGS_MANIFEST).is_file():
            return _embeddings_dir(p)
        if (p / FEATURES_MANIFEST).is_file():
            return _features_dir(p)
        files = sorted(p.glob("*.npy"))
        if not files:
            raise ValueError(f"{p}: no {EMBEDDINGS_MANIFEST}, {FEATURES_MANIFEST} or .npy files "
                             "(expected the output of `anyalign embed` or `anyalign extract`, or .npy arrays)")
        return _npy_files(files)
    if p.suffix != ".npy":
        raise ValueError(f"{p}: expected a .npy array [N, dim] or an embeddings folder")
    return _npy_files([p])


def open_sources(paths: Sequence[str | os.PathLike] | EmbeddingSource | np.ndarray) -> EmbeddingSource:
    """One source over several inputs (paths), or pass an `EmbeddingSource` / array through."""
    if isinstance(paths, EmbeddingSource):
        return paths
    if isinstance(paths, np.ndarray):
        return ArraySource(paths)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sources = [open_source(p) for p in paths]
    return sources[0] if len(sources) == 1 else ConcatSource(sources)


__all__ = ["ArraySource", "Batch", "ConcatSource", "EmbeddingSource", "EMBEDDINGS_MANIFEST", "Shard", "open_source",
           "open_sources", "rank_range"]
