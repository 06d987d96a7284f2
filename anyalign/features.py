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
import re
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
    """An `.npy` payload in C order (encoders often return transposed views, which numpy would store in Fortran
    order: readers then copy with strides)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
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


def manifest_encoder(manifest: dict[str, Any], source: str = MANIFEST) -> Any:
    """The `EncoderSpec` a feature folder was extracted with (None when not recorded)."""
    from .encoders.spec import EncoderSpec

    enc = manifest.get("encoder")
    return None if enc is None else EncoderSpec.from_dict(enc, source=f"{source}: encoder")


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    write_json(Path(folder) / MANIFEST, manifest)


_NPY_HEADER = re.compile(rb"'descr':\s*'([^']+)',\s*'fortran_order':\s*(True|False),\s*'shape':\s*\(([^)]*)\)")


def decode_npy(data: bytes | memoryview, where: str = "") -> np.ndarray:
    """An `.npy` payload as an array view (no pickle, no copy); falls back to `np.load` for unusual headers."""
    mv = memoryview(data)
    if bytes(mv[:6]) != b"\x93NUMPY":
        raise ValueError(f"{where}: not an .npy payload")
    major = mv[6]
    hlen_size = 2 if major == 1 else 4
    hlen = int.from_bytes(mv[8:8 + hlen_size], "little")
    start = 8 + hlen_size
    m = _NPY_HEADER.search(bytes(mv[start:start + hlen]))
    if m is None:
        return np.load(io.BytesIO(bytes(mv)), allow_pickle=False)
    shape = tuple(int(x) for x in m.group(3).split(b",") if x.strip())
    flat = np.frombuffer(mv[start + hlen:], dtype=np.dtype(m.group(1).decode()))
    if m.group(2) == b"True":  # Fortran order (shards written before C order was enforced): a transposed view
        return flat.reshape(shape[::-1]).T
    return flat.reshape(shape)


def _tar_members(path: Path) -> Iterator[tuple[str, memoryview]]:
    """(member name, payload) of every regular file in a tar, read sequentially (ustar, GNU long names, pax)."""
    with open(path, "rb") as f:
        long_name: str | None = None
        while True:
            header = f.read(512)
            if len(header) < 512 or header == b"\0" * 512:
                return
            try:
                size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            except ValueError:
                raise ValueError(f"{path}: corrupt tar header (not a feature shard, or truncated)") from None
            kind = header[156:157]
            name = header[:100].split(b"\0", 1)[0].decode()
            prefix = header[345:500].split(b"\0", 1)[0].decode() if header[257:262] == b"ustar" else ""
            data = f.read(size)
            if len(data) < size:
                raise ValueError(f"{path}: truncated tar member {name!r} ({len(data)} of {size} bytes)")
            f.seek((-size) % 512, 1)
            if kind == b"L":  # GNU long name of the next member
                long_name = data.split(b"\0", 1)[0].decode()
                continue
            if kind in (b"x", b"g"):  # pax header: take its path
                for rec in data.decode().splitlines():
                    if " path=" in rec:
                        long_name = rec.split(" path=", 1)[1]
                continue
            if kind not in (b"0", b"\0"):
                continue
            full = long_name or (f"{prefix}/{name}" if prefix else name)
            long_name = None
            yield full, memoryview(data)


def iter_shard_raw(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, memoryview]]]:
    """(tar key, {extension: payload}) of every sample of one shard, in order, undecoded (cheap to skip)."""
    path = Path(path)
    key, parts = None, {}
    for name, data in _tar_members(path):
        base = name.rsplit("/", 1)[-1]
        stem, _, ext = base.partition(".")  # webdataset: the key ends at the first dot of the file name
        sample_key = name[: len(name) - len(base)] + stem
        if sample_key != key:
            if key is not None:
                yield key, parts
            key, parts = sample_key, {}
        parts[ext] = data
    if key is not None:
        yield key, parts


def decode_sample(key: str, parts: dict[str, memoryview], where: str | os.PathLike = ""
                  ) -> tuple[str, np.ndarray, np.ndarray, dict[str, Any]]:
    """(key, tokens as stored, pooled, meta) of one raw sample from `iter_shard_raw`."""
    try:
        tokens, pooled = parts["tokens.npy"], parts["pooled.npy"]
    except KeyError as e:
        raise ValueError(f"{where}: sample {key!r} lacks {e}") from None
    meta = json.loads(bytes(parts["meta.json"])) if "meta.json" in parts else {}
    return str(meta.get("key", key)), decode_npy(tokens, f"{where}:{key}"), decode_npy(pooled, f"{where}:{key}"), meta


def iter_shard(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]]:
    """(key, tokens `[T, D]` as stored (float16), pooled `[P]`, meta) of every sample of one shard, in order."""
    for key, parts in iter_shard_raw(path):
        yield decode_sample(key, parts, path)


def iter_features(folder: str | os.PathLike, *, dtype: torch.dtype | None = torch.float32
                  ) -> Iterator[FeatureRecord]:
    """Stream every record of a feature folder (shard by shard, in order); tokens as `dtype` (None: as stored)."""
    shards = shard_files(folder)
    if not shards and not (Path(folder) / MANIFEST).is_file():
        raise FileNotFoundError(f"{folder}: not a feature folder (no {MANIFEST} and no feature shards)")
    for shard in shards:
        for key, tokens, pooled, meta in iter_shard(shard):
            tok = torch.from_numpy(tokens.copy())
            yield FeatureRecord(key, tok if dtype is None else tok.to(dtype), torch.from_numpy(pooled.copy()).float(),
                                meta)


def load_features(folder: str | os.PathLike, *, dtype: torch.dtype | None = torch.float32) -> list[FeatureRecord]:
    """All records of a feature folder in memory (small corpora; stream with `iter_features` otherwise)."""
    return list(iter_features(folder, dtype=dtype))


def collate_features(records: Sequence[FeatureRecord]) -> EncoderOutput:
    """Pad records' tokens into an `EncoderOutput` batch (tokens `[B, T, D]`, mask, pooled `[B, P]`)."""
    if not records:
        raise ValueError("collate_features: no records")
    tokens, mask = pad_sequences([r.tokens for r in records])
    return EncoderOutput(tokens, mask, torch.stack([r.pooled for r in records]))
