"""`anyalign embed`: run an embedder over raw inputs (or cached features) and write embedding shards.

Output folder: `embeddings-XXXXX.npy` (float32 `[N, E]`, L2-normalised) + `metadata-XXXXX.jsonl` (one row per
vector: `source`, `modality`, `caption` and user fields) + `embeddings.json` (dim, modality, the records of the
embedder and of the other sides of its space, shard list, failures). It is written atomically. Inputs: any
format of the input layer (`anyalign.datasets.records`: folders, globs, jsonl, txt, csv, tar shards ...), media
files, or extraction feature folders (`manifest.json`: the adapter's head runs on the cached features).
Inputs that fail to decode are skipped and listed under `failures`."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..embedder import Embedder
from ..encoders import InputError
from ..encoders.decoding import SafeDecode
from ..io import atomic_path, check_replaceable, write_json
from .sources import EMBEDDINGS_MANIFEST, FEATURES_MANIFEST

logger = logging.getLogger(__name__)


@dataclass
class EmbedItem:
    raw: Any  # what the encoder's `load` takes (a path or a string)
    meta: dict[str, Any] = field(default_factory=dict)


def collect_inputs(paths: Sequence[str | os.PathLike], embedder: Embedder) -> tuple[list[EmbedItem], list[Path]]:
    """Expand input paths (any format of the input layer, `anyalign.datasets.records`) into items to embed, plus
    the extraction feature folders among them. A text embedder embeds each record's text, a media embedder the
    file of its modality; files of other types in a folder are left out."""
    from ..datasets.records import read_records

    modality = embedder.modality
    items: list[EmbedItem] = []
    feature_dirs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists() and not any(c in str(p) for c in "*?["):
            raise FileNotFoundError(f"{p}: no such input file or folder")
        if p.is_dir() and (p / FEATURES_MANIFEST).is_file():
            feature_dirs.append(p)
            continue
        if p.is_file() and embedder.accepts_file(p):
            items.append(EmbedItem(str(p.resolve()), {"source": str(p.resolve()), "modality": modality}))
            continue
        found = 0
        for rec in read_records(p, modalities=[modality]):
            value = rec.input(modality)
            if value is None or (modality != "text" and not embedder.accepts_file(str(getattr(value, "name", value)))):
                continue
            meta = {**rec.metadata(), "modality": modality, "key": rec.key}
            meta.setdefault("source", str(value))
            items.append(EmbedItem(value, meta))
            found += 1
        if not found:
            want = "a 'text' field (jsonl), one sentence per line (txt)" if modality == "text" else \
                f"{modality} files ({' '.join(embedder.extensions) or 'none declared'})"
            raise ValueError(f"{p}: nothing for the {modality} embedder; expected {want}")
    return items, feature_dirs


class _RawLoader:
    """Picklable `load` for DataLoader workers: an item's raw input through the embedder."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def __call__(self, item: EmbedItem) -> Any:
        return self.embedder.load(item.raw)


class EmbeddingWriter:
    """Writes `embeddings-XXXXX.npy` / `metadata-XXXXX.jsonl` shards of `shard_size` rows, then the manifest."""

    def __init__(self, folder: Path, dim: int, shard_size: int = 50_000) -> None:
        self.folder, self.dim, self.shard_size = folder, dim, shard_size
        self.vecs: list[np.ndarray] = []
        self.meta: list[dict[str, Any]] = []
        self.shards: list[dict[str, Any]] = []
        self.count = 0

    def add(self, vectors: np.ndarray, metadata: Sequence[dict[str, Any]]) -> None:
        if vectors.shape[1] != self.dim:
            raise ValueError(f"embedder produced dim {vectors.shape[1]}, expected {self.dim}")
        self.vecs.append(np.asarray(vectors, dtype=np.float32))
        self.meta += list(metadata)
        while len(self.meta) >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        allv = np.concatenate(self.vecs)
        vec, rest = allv[:n], allv[n:]
        i = len(self.shards)
        names = {"vectors": f"embeddings-{i:05d}.npy", "metadata": f"metadata-{i:05d}.jsonl"}
        np.save(self.folder / names["vectors"], vec)
        with (self.folder / names["metadata"]).open("w") as f:
            for row in self.meta[:n]:
                f.write(json.dumps(row, default=str) + "\n")
        self.shards.append({**names, "count": int(n)})
        self.count += n
        self.vecs, self.meta = ([rest] if len(rest) else []), self.meta[n:]

    def close(self, **manifest: Any) -> dict[str, Any]:
        if self.meta:
            self._flush(len(self.meta))
        data = {"format": "anyalign-embeddings", "dim": self.dim, "count": self.count, **manifest,
                "shards": self.shards}
        write_json(self.folder / EMBEDDINGS_MANIFEST, data)
        return data


def embed_to_folder(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, embedder: Embedder, *,
                    batch_size: int = 32, shard_size: int = 50_000, num_workers: int = 0,
                    overwrite: bool = False) -> dict[str, Any]:
    """Embed `inputs` (see the module docstring) into an embeddings folder, replaced atomically; returns its
    manifest. An existing `output` that is not an embeddings folder is refused unless `overwrite`."""
    check_replaceable(output, marker=EMBEDDINGS_MANIFEST, what="embeddings folder", overwrite=overwrite)
    items, feature_dirs = collect_inputs(inputs, embedder)
    failures: list[dict[str, str]] = []
    with atomic_path(output, is_dir=True) as tmp:
        writer = EmbeddingWriter(tmp, embedder.dim, shard_size)
        if items:
            decode = SafeDecode(items, _RawLoader(embedder), errors=(InputError, OSError))
            loader = DataLoader(decode, batch_size=batch_size, num_workers=num_workers,
                                collate_fn=list)
            for batch in tqdm(loader, desc=f"embedding {embedder.modality}", unit="batch",
                              disable=len(loader) < 2):
                ok = [(i, x) for i, x, err in batch if err is None]
                for i, _, err in batch:
                    if err is not None:
                        logger.warning("skipping %s: %s", items[i].meta.get("source"), err)
                        failures.append({"source": str(items[i].meta.get("source")), "error": err})
                if ok:
                    writer.add(embedder.embed_loaded([x for _, x in ok]), [items[i].meta for i, _ in ok])
        for folder in feature_dirs:
            _embed_features(folder, embedder, writer, batch_size)
        if writer.count + len(writer.meta) == 0:
            raise ValueError(f"nothing embedded: all {len(failures)} inputs failed to decode"
                             if failures else "no inputs to embed")
        manifest = writer.close(modality=embedder.modality, embedders=embedder.space_records(),
                                failures=failures)
    return manifest


def _embed_features(folder: Path, embedder: Embedder, writer: EmbeddingWriter, batch_size: int) -> None:
    from ..features import collate_features, iter_features

    def flush(recs: list[Any]) -> None:
        with torch.no_grad():
            vecs = embedder.embed_features(collate_features(recs))
        metas = [{"key": str(r.key), "modality": embedder.modality, **(r.meta or {})} for r in recs]
        writer.add(vecs, metas)

    batch: list[Any] = []
    for rec in tqdm(iter_features(folder), desc=f"embedding {folder.name}", unit="item"):
        batch.append(rec)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)


__all__ = ["EmbedItem", "EmbeddingWriter", "collect_inputs", "embed_to_folder"]
