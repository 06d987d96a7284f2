"""Feature extraction: run a frozen encoder once over a corpus and cache its features as webdataset shards.

The sorted inputs are cut into chunks of `shard_size`; chunk i is written by rank `i % world_size` (so `torchrun` /
`accelerate launch` split the work). Inputs are decoded and collated in DataLoader workers, encoded under
`inference_mode`. A shard is finished once its tar and `.json` sidecar are both written (atomically), so a rerun skips
it: extraction resumes after a kill. Undecodable inputs are skipped, counted and listed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..features import MANIFEST, SHARD_PATTERN, FeatureWriter, write_manifest
from ..io import check_not_input, is_artifact, read_json, write_json
from .base import Encoder, EncoderOutput
from .inputs import Item, SafeDecode, discover_inputs, failure_reason, load_item
from .resume import drop_changed, input_fingerprint
from .spec import EncoderSpec

logger = logging.getLogger(__name__)


@dataclass
class ExtractSummary:
    """What one rank did: samples in its shards, failures, shards written now or found finished, speed."""

    n_ok: int = 0  # samples in this rank's shards (extracted now or by an earlier run)
    n_failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)  # this rank's shard files, in chunk order
    shards_written: int = 0
    shards_skipped: int = 0
    n_new: int = 0  # samples extracted by this run
    seconds: float = 0.0

    @property
    def throughput(self) -> float:
        """Samples extracted per second by this run (resumed shards excluded)."""
        return self.n_new / self.seconds if self.seconds else 0.0


def process_state() -> Any:
    """accelerate's view of this process (rank, world size); CPU-only multi-process runs use gloo."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


@dataclass
class _Batch:
    """A batch as it leaves a worker: its indices, collated groups of good items, failures. One group normally; when
    `collate` rejects the batch each item is collated alone (`isolated`), so an odd input costs only itself."""

    indices: list[int]
    groups: list[tuple[list[int], dict[str, Any]]]
    failed: list[tuple[int, str]]
    isolated: bool = False

    def pin_memory(self) -> _Batch:
        self.groups = [(ok, {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in t.items()})
                       for ok, t in self.groups]
        return self


class _Collate:
    """Collate the decoded items of a batch in the worker, falling back to one item at a time on error."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder

    def __call__(self, rows: list[tuple[int, Any, str | None]]) -> _Batch:
        indices = [i for i, _, _ in rows]
        failed = [(i, err) for i, _, err in rows if err is not None]
        good = [(i, x) for i, x, err in rows if err is None]
        if not good:
            return _Batch(indices, [], failed)
        try:
            return _Batch(indices, [([i for i, _ in good], self.encoder.collate([x for _, x in good]))], failed)
        except Exception as e:  # noqa: BLE001 - find the items responsible, keep the rest
            if len(good) == 1:
                return _Batch(indices, [], sorted([*failed, (good[0][0], failure_reason(e))]))
        groups = []
        for i, x in good:
            try:
                groups.append(([i], self.encoder.collate([x])))
            except Exception as e:  # noqa: BLE001
                failed.append((i, failure_reason(e)))
        return _Batch(indices, groups, sorted(failed), isolated=True)


def finished_shards(output: Path) -> dict[int, tuple[Path, dict[str, Any]]]:
    """Chunk index -> (shard, sidecar) for every finished shard in `output`, written by any rank."""
    done: dict[int, tuple[Path, dict[str, Any]]] = {}
    for sidecar in sorted(output.glob("features-r*-*.json")):
        shard = sidecar.with_suffix(".tar")
        if shard.is_file():
            done.setdefault(shard_index(sidecar), (shard, read_json(sidecar)))
    return done


def extract(encoder: Encoder, source: str | os.PathLike, output: str | os.PathLike, *, batch_size: int = 32,
            num_workers: int = 0, shard_size: int = 1000, spec: EncoderSpec | None = None,
            progress: bool = True, items: list[Item] | None = None) -> ExtractSummary:
    """Extract features of every input into `output` (resumable, rank-sharded); returns this rank's summary. `items`:
    the inputs of `source` if already discovered; `spec` (default: the encoder's) is recorded, a resume must match."""
    if batch_size < 1 or shard_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size and shard_size must be >= 1 and num_workers >= 0, got {batch_size}, "
                         f"{shard_size}, {num_workers}")
    t0 = time.perf_counter()
    state = process_state()
    output = Path(output)
    check_feature_output(output, source)
    items = discover_inputs(source, encoder) if items is None else items
    spec = spec or EncoderSpec.of(encoder)
    run_spec = {"encoder": spec.to_dict()}
    created = not output.exists()
    if state.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    try:
        return _extract(encoder, source, output, items, run_spec, batch_size, num_workers, shard_size, progress,
                        state, t0)
    except OSError as e:  # disk full, permission denied: name the folder; a folder this run made and left empty goes
        if created and state.is_main_process and not finished_shards(output):
            shutil.rmtree(output, ignore_errors=True)
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(output)) from None
        raise


def _extract(encoder: Encoder, source: str | os.PathLike, output: Path, items: list[Item], run_spec: dict[str, Any],
             batch_size: int, num_workers: int, shard_size: int, progress: bool, state: Any,
             t0: float) -> ExtractSummary:
    """The body of `extract` once the output folder exists."""
    rank, world = state.process_index, state.num_processes
    with _writer_lock(output, rank):
        if state.is_main_process:
            for stale in output.glob(".features-r*.tmp"):  # half-written shards of a killed run
                logger.info("removing %s left by an interrupted run", stale)
                stale.unlink(missing_ok=True)
        fingerprints = {it.key: input_fingerprint(it.value) for it in items}
        if state.is_main_process:  # inputs changed since their shard was written leave it, to be extracted again
            drop_changed(finished_shards(output), fingerprints)
        state.wait_for_everyone()
        done = finished_shards(output)
        chunks = _plan(items, done, run_spec, shard_size, output)  # chunk index -> item positions
        summary = ExtractSummary()
        todo = [index for index in sorted(chunks) if index % world == rank and index not in done]
        for index in sorted(done):
            if index % world == rank:
                shard, side = done[index]
                summary.n_ok += side["n_ok"]
                summary.failures += side["failures"]
                summary.shards.append(shard.name)
                summary.shards_skipped += 1
        mine = [i for i in sorted(chunks) if i % world == rank]
        bar = tqdm(total=sum(len(chunks[i]) for i in mine), desc=f"extract {encoder.modality}", unit="item",
                   initial=sum(len(chunks[i]) for i in mine if i in done),
                   disable=not progress or not state.is_local_main_process)
        try:
            _run(encoder, items, chunks, todo, output, rank, run_spec, batch_size, num_workers, summary, bar,
                 fingerprints)
        finally:
            bar.close()
        summary.n_failed = len(summary.failures)
        summary.shards.sort(key=lambda name: shard_index(Path(name)))
        summary.seconds = time.perf_counter() - t0
        state.wait_for_everyone()
        if state.is_main_process:
            _write_manifest(output, encoder, run_spec, source, len(items), shard_size, chunks)
    return summary


FEATURE_FILES = r"features-r\d+-\d+\.(tar|json)|manifest\.json|\.extract-r\d+\.lock|\.features-r.*\.tmp"


def check_feature_output(output: Path, source: str | os.PathLike) -> None:
    """`output` must be new, empty or a feature folder of this library (to resume), and apart from the input."""
    check_not_input(output, [source], what="--output")
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output}: is a file; expected a feature folder (new, or one to resume)")
    if output.is_dir():
        foreign = sorted(p.name for p in output.iterdir() if not re.fullmatch(FEATURE_FILES, p.name))
        if (output / MANIFEST).is_file() and not is_artifact(output, marker=MANIFEST, marker_keys=("pooled_dim",)):
            foreign.insert(0, MANIFEST)
        if foreign:
            raise ValueError(f"--output {output}: holds files that are not an anyalign feature folder's "
                             f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); extract into a new "
                             "or empty folder")


@contextlib.contextmanager
def _writer_lock(output: Path, rank: int) -> Iterator[None]:
    """One extraction run per output folder: a second concurrent run (same rank) fails at once, naming it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(output / f".extract-r{rank:02d}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ValueError(f"{output}: another `anyalign extract` is writing to this folder; wait for it to finish or "
                         f"extract into another --output") from None
    try:
        yield
    finally:
        lock.release()


def _plan(items: list[Item], done: dict[int, tuple[Path, dict[str, Any]]], run_spec: dict[str, Any],
          shard_size: int, output: Path) -> dict[int, list[int]]:
    """Chunk index -> positions in `items`. Finished shards keep their chunks (checked: same encoder settings);
    items not in any finished shard are cut into new chunks after them, so a rerun with added inputs extracts
    exactly the new ones."""
    for index, (shard, side) in done.items():
        old = side.get("spec", run_spec)
        if old != run_spec:
            was = EncoderSpec.from_dict(old["encoder"]).describe() if isinstance(old.get("encoder"), dict) else old
            raise ValueError(f"{shard}: written with encoder {was}, but this run uses "
                             f"{EncoderSpec.from_dict(run_spec['encoder']).describe()}; use the same settings, or "
                             f"a new --output folder")
    position = {it.key: n for n, it in enumerate(items)}
    if len(position) != len(items):
        dup = next(k for k in position if sum(it.key == k for it in items) > 1)
        raise ValueError(f"{output}: input key {dup!r} appears more than once; keys must be unique")
    chunks: dict[int, list[int]] = {}
    covered: set[str] = set()
    for index, (_, side) in done.items():
        covered.update(side["keys"])
        chunks[index] = [position[k] for k in side["keys"] if k in position]
    new = [n for n, it in enumerate(items) if it.key not in covered]
    start = max(done, default=-1) + 1
    for j, lo in enumerate(range(0, len(new), shard_size)):
        chunks[start + j] = new[lo: lo + shard_size]
    return chunks


def _run(encoder: Encoder, items: list[Item], chunks: dict[int, list[int]], todo: list[int], output: Path,
         rank: int, run_spec: dict[str, Any], batch_size: int, num_workers: int, summary: ExtractSummary,
         bar: tqdm, fingerprints: dict[str, str]) -> None:
    """Decode/collate in workers and encode this rank's unfinished chunks, one shard per chunk."""
    if not todo:
        return
    chunk_of = {n: index for index in todo for n in chunks[index]}
    batches = [chunks[index][lo: lo + batch_size]  # batches never cross a shard boundary
               for index in todo for lo in range(0, len(chunks[index]), batch_size)]
    decode = SafeDecode([it.value for it in items], partial(load_item, encoder))  # tar members via a scratch file
    loader = DataLoader(decode, batch_sampler=batches, num_workers=num_workers, collate_fn=_Collate(encoder),
                        pin_memory=encoder.device.type == "cuda")
    shard: _Shard | None = None
    pool = ThreadPoolExecutor(1, thread_name_prefix="anyalign-shard-writer")  # writes overlap the next forward
    try:
        with torch.inference_mode():
            for batch in loader:
                if shard is None:  # first batch of the next chunk
                    index = chunk_of[batch.indices[0]]
                    shard = _Shard(output / SHARD_PATTERN.format(rank=rank, index=index), len(chunks[index]), pool)
                for i, err in batch.failed:
                    shard.fail(items[i], err)
                for ok, tensors in batch.groups:
                    try:
                        out = encoder.run(tensors)
                    except Exception as e:  # noqa: BLE001 - only a lone item that broke its batch is skipped
                        if not batch.isolated:
                            raise
                        shard.fail(items[ok[0]], failure_reason(e))
                        continue
                    shard.add([items[i].key for i in ok], out, [items[i].meta for i in ok])
                shard.remaining -= len(batch.indices)
                bar.update(len(batch.indices))
                if shard.remaining == 0:
                    keys = [items[n].key for n in chunks[shard_index(shard.path)]]
                    shard.finish({"keys": keys, "fingerprints": [fingerprints[k] for k in keys], "spec": run_spec},
                                 summary)
                    shard = None
                    if summary.failures:
                        bar.set_postfix(failed=len(summary.failures))
    finally:
        if shard is not None:
            shard.abort()
        pool.shutdown(wait=True, cancel_futures=True)


def shard_index(path: Path) -> int:
    """Chunk index of a shard or sidecar name `features-rRR-IIIII.tar|json`."""
    return int(path.stem.rsplit("-", 1)[1])


class _Shard:
    """The shard being written: its writer (fed by a writer thread), failures so far, and items still to come."""

    def __init__(self, path: Path, size: int, pool: ThreadPoolExecutor) -> None:
        self.path, self.remaining, self.n_ok = path, size, 0
        self.failures: list[dict[str, str]] = []
        self.writer = FeatureWriter(path)
        self.pool, self.pending = pool, deque[Future]()

    def add(self, keys: list[str], out: EncoderOutput, metas: list[dict[str, Any]]) -> None:
        """Queue a batch for the writer thread; at most two batches wait, so memory stays bounded."""
        self.pending.append(self.pool.submit(self.writer.add_batch, keys, out, metas))
        self.n_ok += len(keys)
        while len(self.pending) > 2:
            self.pending.popleft().result()

    def abort(self) -> None:
        for f in self.pending:
            f.cancel()
        wait(self.pending)
        self.writer.abort()

    def fail(self, item: Item, reason: str) -> None:
        logger.warning("skipping %s: %s", item.meta["source"], reason)
        self.failures.append({"key": item.key, "source": str(item.meta["source"]), "error": reason})

    def finish(self, info: dict[str, Any], summary: ExtractSummary) -> None:
        """Close the tar, then write the sidecar that marks it finished; drop any orphan copy of a killed run."""
        while self.pending:
            self.pending.popleft().result()
        self.writer.close()
        write_json(self.path.with_suffix(".json"), {"n_ok": self.n_ok, "failures": self.failures, **info})
        for other in self.path.parent.glob(f"features-r*-{shard_index(self.path):05d}.tar"):
            if other != self.path and not other.with_suffix(".json").exists():
                other.unlink(missing_ok=True)
        summary.n_ok += self.n_ok
        summary.n_new += self.n_ok
        summary.failures += self.failures
        summary.shards.append(self.path.name)
        summary.shards_written += 1


def _write_manifest(output: Path, encoder: Encoder, run_spec: dict[str, Any], source: str | os.PathLike,
                    n_inputs: int, shard_size: int, chunks: dict[int, list[int]]) -> None:
    done = finished_shards(output)
    shards, failures, total = [], [], 0
    for index in sorted(chunks):
        if index in done:
            shard, side = done[index]
            shards.append({"file": shard.name, "count": side["n_ok"], "failed": len(side["failures"])})
            failures += side["failures"]
            total += side["n_ok"]
    n_chunks = len(chunks)
    write_manifest(output, {**run_spec, "modality": encoder.modality, "token_dim": encoder.token_dim,
                            "pooled_dim": encoder.pooled_dim, "dtype": "float16", "token_dtype": "float16",
                            "pooled_dtype": "float32", "input": str(source), "num_inputs": n_inputs,
                            "shard_size": shard_size, "count": total, "n_failed": len(failures),
                            "complete": len(shards) == n_chunks, "shards": shards, "failures": failures})


__all__ = ["MANIFEST", "ExtractSummary", "Item", "discover_inputs", "extract", "finished_shards", "process_state"]
