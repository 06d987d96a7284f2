"""Cached encoder features on disk: webdataset tar shards plus a `manifest.json`.

Layout of a feature folder (written by `anyalign extract`, read by training and `anyalign embed`)::

    manifest.json                      encoder, pretrained, modality, dims, dtype, shards + counts, failures
    features-r{rank:02d}-{index:05d}.tar   one webdataset shard per chunk of inputs
        <key>.tokens.npy   [T, D] float16, valid tokens only (no padding)
        <key>.pooled.npy   [P] float32
        <key>.meta.json    {"source": ..., user fields such as label or caption}
    features-r{rank:02d}-{index:05d}.json  `anyalign extract` only: marks the shard finished (count, failures)

Each shard is written to a temporary file and renamed when complete, so a folder never holds a half shard.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from .encoders.base import EncoderOutput, pad_sequences
from .io import atomic_path, read_json, write_json

MANIFEST = "manifest.json"
SHARD_PATTERN = "features-r{rank:02d}-{index:05d}.tar"


@dataclass
class FeatureRecord:
    """One cached sample: valid tokens `[T, D]`, pooled `[P]`, and metadata (source, label, caption, ...)."""

    key: str
    tokens: torch.Tensor
    pooled: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class FeatureWriter:
    """Writes one shard atomically: `add(...)` records, then `close()` (or use as a context manager)."""

    def __init__(self, path: str | os.PathLike, *, token_dtype: str = "float16") -> None:
        self.path = Path(path)
        self.token_dtype = np.dtype(token_dtype)
        self.token_dtype_torch = getattr(torch, self.token_dtype.name)
        self.count = 0
        self._used: set[str] = set()  # tar keys written so far: two keys may sanitise alike ("a.b", "a_b")
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        # integer mtime and no encoder: plain ustar headers (no per-member pax records) and bytes as given
        self._sink = wds.TarWriter(str(self._tmp), encoder=False, mtime=int(time.time()))

    def add(self, key: str, tokens: torch.Tensor | np.ndarray, pooled: torch.Tensor | np.ndarray,
            meta: dict[str, Any] | None = None) -> None:
        """Append one sample; `tokens` must hold only valid positions `[T, D]`."""
        if torch.is_tensor(tokens):
            tokens = tokens.detach().to("cpu", self.token_dtype_torch)
        if torch.is_tensor(pooled):
            pooled = pooled.detach().to("cpu", torch.float32)
        tok, pool = np.asarray(tokens), np.asarray(pooled)
        if tok.ndim != 2 or pool.ndim != 1:
            raise ValueError(f"{key}: expected tokens [T, D] and pooled [P], got {tok.shape} and {pool.shape}")
        tar_key = key.replace(".", "_")  # webdataset splits member names at the first dot
        if tar_key in self._used:
            tar_key = f"{tar_key}_{self.count}"
        self._used.add(tar_key)
        self._sink.write({"__key__": tar_key, "tokens.npy": _npy(tok.astype(self.token_dtype, copy=False)),
                          "pooled.npy": _npy(pool.astype(np.float32, copy=False)),
                          "meta.json": json.dumps({"key": key, **(meta or {})}, default=str).encode()})
        self.count += 1

    def add_batch(self, keys: Sequence[str], out: EncoderOutput, metas: Sequence[dict[str, Any]]) -> None:
        """Append a batch of encoder outputs, dropping padded token positions."""
        tokens = out.tokens.detach().to("cpu", self.token_dtype_torch).numpy()  # [B, T, D], one conversion per batch
        mask = out.mask.detach().cpu().numpy()  # [B, T]
        pooled = out.pooled.detach().float().cpu().numpy()  # [B, P]
        for i, key in enumerate(keys):
            self.add(key, tokens[i] if mask[i].all() else tokens[i][mask[i]], pooled[i], metas[i])

    def close(self) -> Path:
        self._sink.close()
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Discard the shard being written (nothing appears at `path`)."""
        self._sink.close()
        try:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except RuntimeError:
            pass

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def shard_files(folder: str | os.PathLike) -> list[Path]:
    """The shards of a feature folder: those its manifest lists, else every finished shard in name order."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if manifest.is_file():
        listed = read_json(manifest).get("shards")
        if isinstance(listed, list) and all(isinstance(s, dict) and "file" in s for s in listed):
            paths = [folder / s["file"] for s in listed]
            missing = [p.name for p in paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{manifest}: lists shards that are missing: {', '.join(missing[:5])}")
            return paths
    return sorted(folder.glob("features-r*-*.tar"))


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The folder's manifest, with an error naming the folder when it is not a feature folder."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a feature folder (missing {MANIFEST}; anyalign extract writes one)")
    return read_json(path)


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    write_json(Path(folder) / MANIFEST, manifest)


def iter_features(folder: str | os.PathLike) -> Iterator[FeatureRecord]:
    """Stream every record of a feature folder (shard by shard, in order)."""
    shards = shard_files(folder)
    if not shards and not (Path(folder) / MANIFEST).is_file():
        raise FileNotFoundError(f"{folder}: not a feature folder (no {MANIFEST} and no feature shards)")
    for shard in shards:
        for sample in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False).decode():
            try:
                tokens, pooled, meta = sample["tokens.npy"], sample["pooled.npy"], sample.get("meta.json", {})
            except KeyError as e:
                raise ValueError(f"{shard}: sample {sample.get('__key__')!r} lacks {e}") from None
            yield FeatureRecord(str(meta.get("key", sample["__key__"])), torch.from_numpy(np.asarray(tokens)).float(),
                                torch.from_numpy(np.asarray(pooled)).float(), meta)


def load_features(folder: str | os.PathLike) -> list[FeatureRecord]:
    """All records of a feature folder in memory (small corpora; stream with `iter_features` otherwise)."""
    return list(iter_features(folder))


def collate_features(records: Sequence[FeatureRecord]) -> EncoderOutput:
    """Pad records' tokens into an `EncoderOutput` batch (tokens `[B, T, D]`, mask, pooled `[B, P]`)."""
    if not records:
        raise ValueError("collate_features: no records")
    tokens, mask = pad_sequences([r.tokens for r in records])
    return EncoderOutput(tokens, mask, torch.stack([r.pooled for r in records]))
