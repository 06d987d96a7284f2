"""Streamed training data from feature shards: bounded memory, shards split across ranks and workers, exact resume.

The stream is a pure function of (seed, epoch, lanes, buffer), never of the number of processes: each epoch the
shards are put in a seeded order and dealt to `lanes` lanes; a lane reads its shards sample by sample through a
seeded shuffle buffer; global batch n joins `batch_size / lanes` consecutive samples of every lane. Lane k is read by
rank `k % world` and, inside it, by one DataLoader worker, so ranks and workers read disjoint shards while the global
batch is the same whatever the process count. The position is (epoch, batches consumed): a resumed run replays its
epoch's lanes up to it without decoding the skipped samples.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..encoders import EncoderOutput
from ..features import decode_sample, iter_shard_raw, read_manifest, shard_files
from .config import DataSource
from .data import Batch, MediaBatch, fill_caption

logger = logging.getLogger(__name__)

#: `train.stream: auto` streams when the training features hold more records than this
AUTO_STREAM_RECORDS = 100_000


@dataclass(frozen=True)
class StreamShard:
    """One shard of a streamed source: its file, sample count (from the manifest) and source index."""

    path: Path
    count: int
    source: int


def feature_shards(sources: Sequence[DataSource]) -> list[StreamShard]:
    """Every shard of some feature sources with its sample count, from their manifests."""
    out = []
    for si, src in enumerate(sources):
        folder = Path(src.path).expanduser()
        manifest = read_manifest(folder)
        counts = {s.get("file", s.get("name")): s.get("count") for s in manifest.get("shards", [])
                  if isinstance(s, dict)}
        for path in shard_files(folder):
            count = counts.get(path.name)
            if not isinstance(count, int):
                raise ValueError(f"{folder / 'manifest.json'}: no sample count for shard {path.name} (streaming needs "
                                 f"the counts `anyalign extract` writes); use train.stream=map")
            if count:
                out.append(StreamShard(path, count, si))
    return out


def choose_mode(mode: str, sources: Sequence[DataSource]) -> str:
    """'map' or 'stream' for `train.stream` (auto: stream when all sources are features and they are large)."""
    if mode not in ("auto", "map", "stream"):
        raise ValueError(f"train.stream: expected auto, map or stream, got {mode!r}")
    features = all(s.kind == "features" for s in sources)
    if mode == "stream":
        if not features:
            kinds = sorted({s.kind for s in sources if s.kind != "features"})
            raise ValueError(f"train.stream=stream: only feature sources (kind: features) can be streamed, the "
                             f"training data also has kind {', '.join(kinds)}; use train.stream=map")
        return "stream"
    if mode == "map" or not features:
        return "map"
    total = sum(s.count for s in feature_shards(sources))
    return "stream" if total > AUTO_STREAM_RECORDS else "map"


def _label_id(label: Any) -> int:
    """A stable class id (equal labels -> equal ids on every rank and worker, without a global vocabulary)."""
    return zlib.crc32(str(label).encode()) & 0x7FFFFFFF


class _Lane:
    """One lane of one epoch: its shards read in turn through a seeded shuffle buffer of undecoded samples."""

    def __init__(self, shards: list[StreamShard], buffer: int, seed: Sequence[int]) -> None:
        self.shards, self.buffer = shards, buffer
        self.rng = np.random.default_rng(list(seed))

    def samples(self) -> Iterator[tuple[StreamShard, str, dict[str, memoryview]]]:
        buf: list[Any] = []
        draws: np.ndarray = np.empty(0, dtype=np.int64)
        d = 0
        for shard in self.shards:
            for key, parts in iter_shard_raw(shard.path):
                item = (shard, key, parts)
                if len(buf) < self.buffer:
                    buf.append(item)
                    continue
                if d == len(draws):  # draw positions in blocks: one RNG call per 4096 samples
                    draws, d = self.rng.integers(0, self.buffer, size=4096), 0
                j = int(draws[d])
                d += 1
                out, buf[j] = buf[j], item
                yield out
        for j in self.rng.permutation(len(buf)):
            yield buf[j]


class FeatureStream(IterableDataset):
    """The streamed training set of one rank: yields per-lane chunks; `batches()` joins them into `Batch`es."""

    def __init__(self, sources: Sequence[DataSource], *, batch_size: int, lanes: int, buffer: int, seed: int = 0,
                 rank: int = 0, world: int = 1, num_workers: int = 0) -> None:
        super().__init__()
        self.sources = list(sources)
        for i, src in enumerate(self.sources):
            if src.holdout > 0 or src.limit is not None:
                raise ValueError(f"data.train[{i}] ({src.path}): holdout/limit are not supported when streaming; "
                                 f"extract a separate eval folder or use train.stream=map")
            if src.task == "instruct":
                raise ValueError(f"data.train[{i}] ({src.path}): instruct data cannot be streamed from features")
        if lanes < 1 or lanes % world:
            raise ValueError(f"train.stream_lanes={lanes}: must be a positive multiple of the {world} processes")
        if batch_size % lanes:
            raise ValueError(f"train.batch_size={batch_size} must be divisible by train.stream_lanes={lanes} (every "
                             f"lane gives batch_size / lanes samples to each batch)")
        self.shards = feature_shards(self.sources)
        if len(self.shards) < lanes:
            raise ValueError(f"streaming with {lanes} lanes needs at least {lanes} shards, the training features have "
                             f"{len(self.shards)}; lower train.stream_lanes, write smaller shards, or use "
                             f"train.stream=map")
        self.modalities = [src.modality or read_manifest(src.path).get("modality") for src in self.sources]
        self.batch_size, self.lanes, self.buffer, self.seed = batch_size, lanes, buffer, seed
        self.per_lane = batch_size // lanes
        self.rank, self.world = rank, world
        self.my_lanes = [k for k in range(lanes) if k % world == rank]
        nw = max(0, min(num_workers, len(self.my_lanes)))
        while nw > 1 and len(self.my_lanes) % nw:  # every worker must hold as many lanes as the others
            nw -= 1
        self.num_workers = nw
        self.epoch, self.start = 0, 0
        self._lengths: dict[int, int] = {}

    # --- the order -------------------------------------------------------------------------------------------
    def shard_order(self, epoch: int) -> list[int]:
        """Indices into `self.shards` in the order of `epoch` (seeded, the same on every rank)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.shards), generator=g).tolist()

    def lane_shards(self, epoch: int, lane: int) -> list[StreamShard]:
        order = self.shard_order(epoch)
        return [self.shards[i] for i in order[lane::self.lanes]]

    def steps_in_epoch(self, epoch: int) -> int:
        """Global batches of `epoch`: the shortest lane's samples // (batch_size / lanes)."""
        if epoch not in self._lengths:
            self._lengths[epoch] = min(sum(s.count for s in self.lane_shards(epoch, k)) for k in range(self.lanes)
                                       ) // self.per_lane
            if self._lengths[epoch] == 0:
                raise ValueError(f"streamed data: a lane of epoch {epoch} holds fewer than {self.per_lane} samples; "
                                 f"lower train.batch_size or train.stream_lanes")
        return self._lengths[epoch]

    def position(self, micro: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of global micro-batch `micro`."""
        epoch = 0
        while micro >= self.steps_in_epoch(epoch):
            micro -= self.steps_in_epoch(epoch)
            epoch += 1
        return epoch, micro

    def state(self, micro: int) -> dict[str, Any]:
        """The stream position recorded in a checkpoint (epoch, shard order, offset) and the settings fixing it."""
        epoch, batch = self.position(micro)
        order = [str(self.shards[i].path.name) for i in self.shard_order(epoch)]
        return {"epoch": epoch, "batch": batch, "offset_per_lane": batch * self.per_lane, "lanes": self.lanes,
                "buffer": self.buffer, "shards": len(self.shards),
                "shard_order_sha256": hashlib.sha256("\n".join(order).encode()).hexdigest()}

    def set_position(self, epoch: int, batch: int) -> None:
        self.epoch, self.start = epoch, batch

    # --- reading ---------------------------------------------------------------------------------------------
    def _worker_lanes(self) -> list[int]:
        info = get_worker_info()
        if info is None:
            return self.my_lanes
        return self.my_lanes[info.id::info.num_workers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, start = self.epoch, self.start
        steps = self.steps_in_epoch(epoch)
        lanes = self._worker_lanes()
        streams = {k: _Lane(self.lane_shards(epoch, k), self.buffer, (self.seed, epoch, k)).samples() for k in lanes}
        rngs = {k: np.random.default_rng([self.seed, epoch, k, 1]) for k in lanes}  # template / prompt choice
        for n in range(steps):
            for k in lanes:
                items = [next(streams[k]) for _ in range(self.per_lane)]
                draws = rngs[k].integers(0, 1 << 30, size=(self.per_lane, 2))  # drawn for skipped batches too
                if n >= start:
                    yield self._chunk(items, draws, k)

    def _chunk(self, items: list[tuple[StreamShard, str, dict[str, memoryview]]], draws: np.ndarray,
               lane: int) -> dict[str, Any]:
        """Decode and pad one lane's share of a batch (tokens stay float16)."""
        per_mod: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        tasks, captions, prompts, targets, labels, keys = [], [], [], [], [], []
        for i, (shard, tar_key, parts) in enumerate(items):
            key, tokens, pooled, meta = decode_sample(tar_key, parts, shard.path)
            src = self.sources[shard.source]
            m = self.modalities[shard.source]
            per_mod.setdefault(m, []).append((i, tokens, pooled))
            label = meta.get("label")
            caption = fill_caption(src.caption_templates, src.label_text, meta.get("caption"), label, int(draws[i, 0]))
            prompt = target = None
            if src.task == "caption":
                prompt = src.prompts[int(draws[i, 1]) % len(src.prompts)].format(modality=m)
                target = caption
            tasks.append(src.task)
            captions.append(caption)
            prompts.append(prompt)
            targets.append(target)
            labels.append(_label_id(label) if label is not None else -1)
            keys.append(key)
        media = {}
        for m, rows in per_mod.items():
            lengths = [t.shape[0] for _, t, _ in rows]
            if min(lengths) == max(lengths):  # fixed-length encoders: one stacking copy, no padding
                tok = np.stack([t for _, t, _ in rows])  # [n, T, D]
            else:
                tok = np.zeros((len(rows), max(lengths), rows[0][1].shape[1]), dtype=rows[0][1].dtype)
                for j, (_, t, _) in enumerate(rows):
                    tok[j, : t.shape[0]] = t
            pooled = np.stack([p for _, _, p in rows])  # [n, P]
            media[m] = {"rows": torch.tensor([i for i, _, _ in rows]), "tokens": torch.from_numpy(tok),
                        "lengths": torch.tensor(lengths), "pooled": torch.from_numpy(pooled)}
        return {"lane": lane, "n": len(items), "media": media, "tasks": tasks, "captions": captions,
                "prompts": prompts, "targets": targets, "labels": torch.tensor(labels, dtype=torch.long),
                "keys": keys}

    def loader(self) -> DataLoader:
        """A DataLoader over this rank's lanes (workers split them; chunks come back in lane order)."""
        return DataLoader(self, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is,
                          prefetch_factor=4 if self.num_workers else None)

    def batches(self, loader: DataLoader | None = None) -> Iterator[Batch]:
        """This rank's batches from the current position to the end of the epoch."""
        per_batch = len(self.my_lanes)
        chunks: list[dict[str, Any]] = []
        for chunk in (loader if loader is not None else self):
            chunks.append(chunk)
            if len(chunks) == per_batch:
                yield join_chunks(chunks)
                chunks = []


def prefetched(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """`items` made `depth` ahead by one background thread: with no loader workers the next batch's shard reading and
    decoding (which release the GIL in reads and copies) overlap the step instead of adding to it. Same items, same
    order; an error while making one is raised here, at its turn. Closing this generator stops the thread."""
    it = iter(items)
    pool = ThreadPoolExecutor(1, thread_name_prefix="anyalign-prefetch")
    try:
        ahead = deque(pool.submit(next, it, _END) for _ in range(depth))
        while (item := ahead.popleft().result()) is not _END:
            ahead.append(pool.submit(next, it, _END))
            yield item
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def _as_is(chunk: dict[str, Any]) -> dict[str, Any]:
    """The loader's collate: chunks are made whole by `_chunk` (torch's default walks every caption in them)."""
    return chunk


def join_chunks(chunks: list[dict[str, Any]]) -> Batch:
    """Lane chunks -> one `Batch`: rows renumbered, tokens padded to the longest and made float32 once."""
    offsets = np.cumsum([0] + [c["n"] for c in chunks])
    media = {}
    for m in dict.fromkeys(m for c in chunks for m in c["media"]):
        parts = [(off, c["media"][m]) for off, c in zip(offsets, chunks) if m in c["media"]]
        t_max = max(p["tokens"].shape[1] for _, p in parts)
        n = sum(p["tokens"].shape[0] for _, p in parts)
        dim = parts[0][1]["tokens"].shape[2]
        tokens = torch.empty(n, t_max, dim, dtype=torch.float32)  # [N, T, D]; only padding is zeroed
        r = 0
        for _, p in parts:
            k, t = p["tokens"].shape[:2]
            tokens[r:r + k, :t] = p["tokens"]  # float16 -> float32 on the copy
            if t < t_max:
                tokens[r:r + k, t:] = 0
            r += k
        lengths = torch.cat([p["lengths"] for _, p in parts])
        mask = torch.arange(t_max)[None, :] < lengths[:, None]  # [N, T]
        rows = torch.cat([p["rows"] + int(off) for off, p in parts])
        pooled = torch.cat([p["pooled"] for _, p in parts]).float()
        media[m] = MediaBatch(rows, features=EncoderOutput(tokens, mask, pooled))
    cat = [x for c in chunks for x in c["tasks"]]
    return Batch(cat, media, [x for c in chunks for x in c["captions"]], [x for c in chunks for x in c["prompts"]],
                 [x for c in chunks for x in c["targets"]], torch.cat([c["labels"] for c in chunks]),
                 [x for c in chunks for x in c["keys"]])


__all__ = ["AUTO_STREAM_RECORDS", "FeatureStream", "StreamShard", "choose_mode", "feature_shards",
           "join_chunks", "prefetched"]
