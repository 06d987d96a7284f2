"""Feature extraction: run a frozen encoder once over a corpus and cache its features as webdataset shards.

Inputs are a folder (walked for the encoder's file types), a `.jsonl` manifest (`path`/`source` relative to the
file, or `text`, plus fields copied into the metadata), a `.txt` list (one path or sentence per line), or
webdataset `.tar` shards (one media member per sample). The input list is cut deterministically into shards of
`shard_size` items; shard i goes to rank `i % world_size`, so `accelerate launch` / `torchrun` splits the work
and every rank writes its own shards. A finished shard (tar + its `.json` sidecar listing failures) is never
redone, which makes a rerun resume after a kill. Files that fail to decode are skipped, counted and listed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..features import MANIFEST, SHARD_PATTERN, FeatureWriter, write_manifest
from ..io import iter_jsonl, read_json, write_json
from .base import Encoder
from .decoding import SafeDecode

logger = logging.getLogger(__name__)


@dataclass
class Item:
    """One input: what the encoder's `load` receives, a stable key, and metadata to store with it."""

    key: str
    value: Any
    meta: dict[str, Any]


@dataclass
class ExtractSummary:
    n_ok: int = 0
    n_failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    shards_written: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        return self.n_ok / self.seconds if self.seconds else 0.0


def discover_inputs(source: str | os.PathLike, encoder: Encoder) -> list[Item]:
    """List the items of a folder, jsonl/txt list or tar shards, checked against the encoder's modality."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"--input {path}: no such file or folder")
    is_text = encoder.modality == "text"
    if path.is_dir():
        tars = sorted(path.glob("*.tar"))
        if tars and not any(encoder.accepts_file(p) for p in path.iterdir()):
            return [it for t in tars for it in _tar_items(t, encoder)]
        files = sorted(p for p in path.rglob("*") if p.is_file() and encoder.accepts_file(p))
        if not files:
            want = ", ".join(encoder.extensions) or "(a .jsonl or .txt list for text encoders)"
            raise ValueError(f"--input {path}: no file this {encoder.modality} encoder reads; expected {want}")
        return [Item(str(p.relative_to(path)), str(p), {"source": str(p)}) for p in files]
    if path.suffix == ".jsonl":
        items = []
        for n, row in iter_jsonl(path):
            if is_text and "text" in row:
                value = row["text"]
            elif "path" in row or "source" in row:
                value = str((path.parent / (row.get("path") or row["source"])).resolve())
            else:
                raise ValueError(f"{path}:{n}: expected a 'path' (or 'source') field"
                                 + (" or a 'text' field" if is_text else ""))
            items.append(Item(str(row.get("key", n - 1)), value, {"source": value, **row}))
        return items
    if path.suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        values = lines if is_text else [str((path.parent / ln).resolve()) for ln in lines]
        return [Item(str(i), v, {"source": v}) for i, v in enumerate(values)]
    if path.suffix == ".tar":
        return _tar_items(path, encoder)
    if encoder.accepts_file(path):
        return [Item(path.name, str(path), {"source": str(path)})]
    raise ValueError(f"--input {path}: expected a folder, a .jsonl/.txt list, .tar shards or a "
                     f"{'/'.join(encoder.extensions)} file")


def _tar_items(tar: Path, encoder: Encoder) -> list[Item]:
    """Members of a webdataset shard that the encoder reads, as in-memory items (bytes kept lazily by path)."""
    import tarfile

    with tarfile.open(tar) as tf:
        names = [m.name for m in tf.getmembers() if m.isfile() and encoder.accepts_file(m.name)]
    return [Item(f"{tar.stem}/{n}", (str(tar), n), {"source": f"{tar}:{n}"}) for n in names]


class _ItemLoader:
    """Picklable `load` for DataLoader workers: tar members are unpacked first, then decoded by the encoder."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder

    def __call__(self, item: Item) -> Any:
        value = _read_member(*item.value) if isinstance(item.value, tuple) else item.value
        return self.encoder.load(value)


def _read_member(tar: str, name: str) -> Any:
    import tarfile
    import tempfile

    with tarfile.open(tar) as tf:
        data = tf.extractfile(name).read()  # type: ignore[union-attr]
    tmp = Path(tempfile.gettempdir()) / f"anyalign-extract-{os.getpid()}{Path(name).suffix}"
    tmp.write_bytes(data)  # decoders take paths; one scratch file per worker process
    return str(tmp)


def process_state() -> Any:
    """accelerate's view of this process (rank, world size); CPU-only multi-process runs use gloo."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def extract(encoder: Encoder, source: str | os.PathLike, output: str | os.PathLike, *, batch_size: int = 32,
            num_workers: int = 0, shard_size: int = 1000, spec: dict[str, Any] | None = None,
            progress: bool = True) -> ExtractSummary:
    """Extract features of every input into `output` (resumable, rank-sharded); returns this rank's summary."""
    state = process_state()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    items = discover_inputs(source, encoder)
    chunks = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    mine = [(i, c) for i, c in enumerate(chunks) if i % state.num_processes == state.process_index]
    summary = ExtractSummary()
    t0 = time.perf_counter()
    bar = tqdm(total=sum(len(c) for _, c in mine), desc=f"extract {encoder.modality}", unit="item",
               disable=not progress or not state.is_local_main_process)
    for index, chunk in mine:
        done_shard = _finished(output, index)
        if done_shard is not None:
            done = read_json(done_shard.with_suffix(".json"))
            summary.n_ok += done["n_ok"]
            summary.failures += done["failures"]
            summary.shards_skipped += 1
            bar.update(len(chunk))
            continue
        shard = output / SHARD_PATTERN.format(rank=state.process_index, index=index)
        sidecar = shard.with_suffix(".json")
        n_ok, failures = _extract_shard(encoder, chunk, shard, batch_size, num_workers, bar)
        write_json(sidecar, {"n_ok": n_ok, "failures": failures})
        summary.n_ok += n_ok
        summary.failures += failures
        summary.shards_written += 1
    bar.close()
    summary.n_failed = len(summary.failures)
    summary.seconds = time.perf_counter() - t0
    state.wait_for_everyone()
    if state.is_main_process:
        _write_manifest(output, encoder, spec or {}, len(chunks))
    return summary


def _finished(output: Path, index: int) -> Path | None:
    """The finished shard of chunk `index` (written by any rank), if there is one."""
    for shard in output.glob(f"features-r*-{index:05d}.tar"):
        if shard.with_suffix(".json").exists():
            return shard
    return None


def _extract_shard(encoder: Encoder, chunk: list[Item], shard: Path, batch_size: int, num_workers: int,
                   bar: tqdm) -> tuple[int, list[dict[str, str]]]:
    loader = DataLoader(SafeDecode(chunk, _ItemLoader(encoder)), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=list)
    failures: list[dict[str, str]] = []
    n_ok = 0
    with FeatureWriter(shard) as writer, torch.inference_mode():
        for batch in loader:
            good = [(i, x) for i, x, err in batch if err is None]
            for i, _, err in batch:
                if err is not None:
                    logger.warning("skipping %s: %s", chunk[i].meta["source"], err)
                    failures.append({"source": str(chunk[i].meta["source"]), "error": err})
            if good:
                out = encoder.run(encoder.collate([x for _, x in good]))
                writer.add_batch([chunk[i].key for i, _ in good], out, [chunk[i].meta for i, _ in good])
                n_ok += len(good)
            bar.update(len(batch))
    return n_ok, failures


def _write_manifest(output: Path, encoder: Encoder, spec: dict[str, Any], n_shards: int) -> None:
    shards, failures, total = [], [], 0
    for index in range(n_shards):
        done_shard = _finished(output, index)
        if done_shard is not None:
            done = read_json(done_shard.with_suffix(".json"))
            shards.append({"file": done_shard.name, "count": done["n_ok"]})
            failures += done["failures"]
            total += done["n_ok"]
    write_manifest(output, {"encoder": encoder.registry_name, **spec, "modality": encoder.modality,
                            "token_dim": encoder.token_dim, "pooled_dim": encoder.pooled_dim,
                            "token_dtype": "float16", "count": total, "shards": shards, "failures": failures,
                            "complete": len(shards) == n_shards})


__all__ = ["ExtractSummary", "Item", "discover_inputs", "extract", "MANIFEST"]
