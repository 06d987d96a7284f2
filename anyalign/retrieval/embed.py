"""`anyalign embed`: run an embedder over raw inputs (or cached features) and write embedding shards.

Output folder (written atomically): `embeddings-XXXXX.npy` (float32 `[N, E]`, L2-normalised) + `metadata-XXXXX.jsonl`
(`source`, `modality`, `caption` and user fields per row) + `embeddings.json` (dim, modality, the embedder's and
its space's records, shards, failures: inputs that fail to decode are skipped and listed). Under a launcher
(`WORLD_SIZE` > 1) each rank embeds its contiguous slice into `embeddings-rRRRRR-XXXXX.npy` shards and rank 0 writes
one manifest in input order, so the folder reads exactly like a 1-process run."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..datasets.records import BrokenInput, read_records
from ..embedder import Embedder
from ..encoders import InputError
from ..encoders.inputs import SafeDecode
from ..io import atomic_path, check_not_input, check_replaceable, read_json, replace_dir, write_json
from .preview import signal_preview
from .sources import EMBEDDINGS_MANIFEST, FEATURES_MANIFEST, rank_range

logger = logging.getLogger(__name__)


@dataclass
class EmbedItem:
    raw: Any  # what the encoder's `load` takes (a path or a string)
    meta: dict[str, Any] = field(default_factory=dict)


def collect_inputs(paths: Sequence[str | os.PathLike], embedder: Embedder) -> tuple[list[EmbedItem], list[Path]]:
    """Expand input paths (any format of the input layer, `anyalign.datasets.records`) into items to embed, plus
    the extraction feature folders among them. A text embedder embeds each record's text, a media embedder the
    file of its modality; files of other types in a folder are left out."""
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
            if isinstance(value, BrokenInput):  # an unreadable row or member: fails at its turn, counted and listed
                items.append(EmbedItem(value, {"source": value.where, "modality": modality, "key": rec.key}))
                found += 1
                continue
            is_file = isinstance(value, (str, os.PathLike)) or hasattr(value, "name")  # paths and tar members
            if value is None or (modality != "text" and is_file
                                 and not embedder.accepts_file(str(getattr(value, "name", value)))):
                continue
            meta = {**rec.metadata(), "modality": modality, "key": rec.key}
            if modality != "text" and not is_file:  # an in-memory array (a UEA window): a preview for the page
                meta.setdefault("signal", signal_preview(value))
            meta.setdefault("source", str(value) if is_file else rec.key)
            items.append(EmbedItem(value, meta))
            found += 1
        if not found:
            want = "a 'text' field (jsonl), one sentence per line (txt)" if modality == "text" else \
                f"{modality} files ({' '.join(embedder.extensions) or 'none declared'})"
            raise ValueError(f"{p}: nothing for the {modality} embedder; expected {want}")
    return items, feature_dirs


class EmbeddingWriter:
    """Writes `embeddings-XXXXX.npy` / `metadata-XXXXX.jsonl` shards of `shard_size` rows, then the manifest.

    `tag` goes into the file names (`embeddings-{tag}XXXXX.npy`: one rank's shards); `cut(segment)` ends the
    current shard so that rows of different inputs segments never share one, and tags later shards with it."""

    def __init__(self, folder: Path, dim: int, shard_size: int = 50_000, tag: str = "") -> None:
        self.folder, self.dim, self.shard_size, self.tag = folder, dim, shard_size, tag
        self.vecs: list[np.ndarray] = []
        self.meta: list[dict[str, Any]] = []
        self.shards: list[dict[str, Any]] = []
        self.count = 0
        self.segment: int | None = None

    def add(self, vectors: np.ndarray, metadata: Sequence[dict[str, Any]]) -> None:
        if vectors.shape[1] != self.dim:
            raise ValueError(f"embedder produced dim {vectors.shape[1]}, expected {self.dim}")
        self.vecs.append(np.asarray(vectors, dtype=np.float32))
        self.meta += list(metadata)
        while len(self.meta) >= self.shard_size:
            self._flush(self.shard_size)

    def flush(self) -> None:
        """Write the rows still held as a (short) shard."""
        if self.meta:
            self._flush(len(self.meta))

    def cut(self, segment: int) -> None:
        self.flush()
        self.segment = segment

    def _flush(self, n: int) -> None:
        allv = np.concatenate(self.vecs)
        vec, rest = allv[:n], allv[n:]
        i = len(self.shards)
        names = {"vectors": f"embeddings-{self.tag}{i:05d}.npy", "metadata": f"metadata-{self.tag}{i:05d}.jsonl"}
        np.save(self.folder / names["vectors"], vec)
        with (self.folder / names["metadata"]).open("w") as f:
            for row in self.meta[:n]:
                f.write(json.dumps(row, default=str) + "\n")
        self.shards.append({**names, "count": int(n), **({} if self.segment is None else {"segment": self.segment})})
        self.count += n
        self.vecs, self.meta = ([rest] if len(rest) else []), self.meta[n:]

    def close(self, **manifest: Any) -> dict[str, Any]:
        self.flush()
        data = {"format": "anyalign-embeddings", "dim": self.dim, "count": self.count, **manifest,
                "shards": self.shards}
        write_json(self.folder / EMBEDDINGS_MANIFEST, data)
        return data


OWN_FILES = r"embeddings\.json|embeddings-[\w-]+\.npy|metadata-[\w-]+\.jsonl"  # what an embeddings folder holds


def launcher_world_size() -> int:
    """Processes started by a launcher (`torchrun` / `accelerate launch` set `WORLD_SIZE`); 1 without one."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def check_embed_output(output: str | os.PathLike, inputs: Sequence[str | os.PathLike], *,
                       overwrite: bool = False) -> None:
    """`output` is apart from the inputs and new, empty or an embeddings folder (else `overwrite` is needed)."""
    check_not_input(output, inputs)
    check_replaceable(output, marker=EMBEDDINGS_MANIFEST, what="embeddings folder", overwrite=overwrite,
                      marker_keys=("format", "shards"), own=OWN_FILES)


def embed_to_folder(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, embedder: Embedder, *,
                    batch_size: int = 32, shard_size: int = 50_000, num_workers: int = 0,
                    overwrite: bool = False) -> dict[str, Any]:
    """Embed `inputs` (see the module docstring) into an embeddings folder, replaced atomically; returns its
    manifest (every rank returns the whole folder's). An existing `output` that is not an embeddings folder is
    refused unless `overwrite`."""
    check_embed_output(output, inputs, overwrite=overwrite)
    items, feature_dirs = collect_inputs(inputs, embedder)
    if launcher_world_size() > 1:
        return _embed_ranks(items, feature_dirs, Path(output), embedder, batch_size, shard_size, num_workers)
    with atomic_path(output, is_dir=True) as tmp:
        writer = EmbeddingWriter(tmp, embedder.dim, shard_size)
        failures = _embed_slice(items, feature_dirs, writer, embedder, batch_size, num_workers, 0, 1)
        if writer.count + len(writer.meta) == 0:
            raise ValueError(_nothing(failures))
        manifest = writer.close(modality=embedder.modality, embedders=embedder.space_records(),
                                failures=failures)
    return manifest


def _nothing(failures: list[dict[str, str]]) -> str:
    return f"nothing embedded: all {len(failures)} inputs failed to decode" if failures else "no inputs to embed"


def _embed_slice(items: list[EmbedItem], feature_dirs: list[Path], writer: EmbeddingWriter, embedder: Embedder,
                 batch_size: int, num_workers: int, rank: int, world: int) -> list[dict[str, str]]:
    """Embed this rank's slice of the items and of each feature folder (segments 0, 1, ...); returns failures."""
    failures: list[dict[str, str]] = []
    lo, hi = rank_range(len(items), rank, world)
    mine = items[lo:hi]
    if world > 1:
        writer.cut(0)
    if mine:
        order = _length_order(mine, embedder, batch_size * _SORT_WINDOW)
        decode = SafeDecode([mine[j].raw for j in order], embedder.load, errors=(InputError, OSError))
        loader = DataLoader(decode, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
        done: dict[int, np.ndarray | None] = {}  # input position -> vector (None: failed), until written in order
        written = 0
        for batch in tqdm(loader, desc=f"embedding {embedder.modality}", unit="batch", disable=len(loader) < 2):
            ok = [(order[i], x) for i, x, err in batch if err is None]
            for i, _, err in batch:
                if err is not None:
                    item = mine[order[i]]
                    logger.warning("skipping %s: %s", item.meta.get("source"), err)
                    failures.append({"source": str(item.meta.get("source")), "error": err})
                    done[order[i]] = None
            if ok:
                done.update(zip((j for j, _ in ok), embedder.embed_loaded([x for _, x in ok])))
            run = []
            while written in done:  # the rows whose predecessors are all done go out, in input order
                if (v := done.pop(written)) is not None:
                    run.append((written, v))
                written += 1
            if run:
                writer.add(np.stack([v for _, v in run]), [mine[j].meta for j, _ in run])
    for segment, folder in enumerate(feature_dirs, 1):
        start, stop = 0, None
        if world > 1:
            writer.cut(segment)
            start, stop = rank_range(_feature_count(folder), rank, world)
        _embed_features(folder, embedder, writer, batch_size, start, stop)
    return failures


_SORT_WINDOW = 32  # batches of sentences sorted by length together (bounded: results wait to go out in order)


def _length_order(items: list[EmbedItem], embedder: Embedder, window: int) -> list[int]:
    """The order to embed `items` in: for a text embedder, sentences sorted by length within windows of `window`
    (a batch pads to its longest sentence: ~1.7x fewer tokens on mixed real text); else input order."""
    if embedder.modality != "text" or not all(isinstance(it.raw, str) for it in items):
        return list(range(len(items)))
    order: list[int] = []
    for lo in range(0, len(items), window):
        order += sorted(range(lo, min(lo + window, len(items))), key=lambda j: len(items[j].raw))
    return order


def _embed_ranks(items: list[EmbedItem], feature_dirs: list[Path], output: Path, embedder: Embedder,
                 batch_size: int, shard_size: int, num_workers: int) -> dict[str, Any]:
    """One rank of a launched run: embed this rank's slice into a staging folder beside `output`, then rank 0
    writes the manifest of all ranks' shards (in input order) and swaps the folder into place."""
    from ..encoders.extract import process_state

    state = process_state()
    rank, world = state.process_index, state.num_processes
    staging = output.parent / f".{output.name}.embed-ranks.tmp"
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    state.wait_for_everyone()
    writer = EmbeddingWriter(staging, embedder.dim, shard_size, tag=f"r{rank:05d}-")
    failures = _embed_slice(items, feature_dirs, writer, embedder, batch_size, num_workers, rank, world)
    writer.flush()
    write_json(staging / f"rank-{rank:05d}.json", {"count": writer.count, "shards": writer.shards,
                                                    "failures": failures})
    state.wait_for_everyone()
    parts = [read_json(staging / f"rank-{r:05d}.json") for r in range(world)]
    total = sum(p["count"] for p in parts)
    every_failure = [f for p in parts for f in p["failures"]]
    state.wait_for_everyone()  # every rank has read the part records before rank 0 moves them
    if state.is_main_process:
        if total == 0:
            shutil.rmtree(staging, ignore_errors=True)
        else:
            order = sorted(((s.pop("segment", 0), r, j), s)
                           for r, p in enumerate(parts) for j, s in enumerate(p["shards"]))
            for r in range(world):
                (staging / f"rank-{r:05d}.json").unlink()
            write_json(staging / EMBEDDINGS_MANIFEST, {
                "format": "anyalign-embeddings", "dim": embedder.dim, "count": total, "modality": embedder.modality,
                "embedders": embedder.space_records(), "failures": every_failure, "world_size": world,
                "shards": [s for _, s in order]})
            replace_dir(staging, output)
    state.wait_for_everyone()
    if total == 0:
        raise ValueError(_nothing(every_failure))
    return read_json(output / EMBEDDINGS_MANIFEST)


def _feature_count(folder: Path) -> int:
    """Records of a feature folder: its manifest's count, else counted from the shards (without decoding)."""
    from ..features import iter_shard_raw, read_manifest, shard_files

    count = read_manifest(folder).get("count")
    return count if isinstance(count, int) else sum(1 for p in shard_files(folder) for _ in iter_shard_raw(p))


def _embed_features(folder: Path, embedder: Embedder, writer: EmbeddingWriter, batch_size: int, start: int = 0,
                    stop: int | None = None) -> None:
    """The adapter's head over cached features of records `[start, stop)` of a feature folder."""
    from ..features import collate_features, iter_features

    def flush(recs: list[Any]) -> None:
        with torch.no_grad():
            vecs = embedder.embed_features(collate_features(recs))
        metas = [{"key": str(r.key), "modality": embedder.modality, **(r.meta or {})} for r in recs]
        writer.add(vecs, metas)

    batch: list[Any] = []
    for i, rec in enumerate(tqdm(iter_features(folder), desc=f"embedding {folder.name}", unit="item")):
        if stop is not None and i >= stop:
            break
        if i < start:
            continue
        batch.append(rec)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)


__all__ = ["EmbedItem", "EmbeddingWriter", "check_embed_output", "collect_inputs", "embed_to_folder",
           "launcher_world_size"]
