"""A training run's data: the map-style dataset with its seeded epoch sampler, or the feature stream of large
feature sets (`stream.py`); the eval sets; and the frozen text anchor's table of caption embeddings.

`batches(micro)` yields micro-batches from any global micro-step on, epoch after epoch, in the seeded order: the
order is a pure function of (seed, epoch), so a resumed run reads what an uninterrupted one would have read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from .config import Recipe
from .data import Batch, Collator, EpochSampler, PairedDataset
from .launch import BatchLargerThanData, TrainingError
from .model import AlignmentModel
from .stream import FeatureStream, choose_mode, prefetched
from .text_cache import table_for_anchor

logger = logging.getLogger(__name__)


@dataclass
class RunData:
    """What a run reads: `loader` is the map-style `DataLoader` (the trainer prepares it) or the stream's own."""

    mode: str  # "map" or "stream" (`train.stream`, `choose_mode`)
    train_set: Any  # a PairedDataset, or the FeatureStream
    loader: Any
    eval_sets: list[PairedDataset]
    collate_fns: dict[str, Any]
    stream: FeatureStream | None = None
    sampler: EpochSampler | None = None
    steps_per_epoch: int = 0

    def batches(self, accelerator: Any, micro: int) -> Iterator[Batch]:
        """Micro-batches from global micro-step `micro` on, epoch after epoch, in the seeded order."""
        if self.stream is not None:
            while True:
                self.stream.set_position(*self.stream.position(micro))
                batches = self.stream.batches(self.loader)
                for batch in batches if self.stream.num_workers else prefetched(batches):
                    yield batch.to(accelerator.device)
                    micro += 1
        while True:
            epoch, skip = divmod(micro, self.steps_per_epoch)
            for batch in epoch_batches(accelerator, self.loader, self.sampler, epoch, skip):
                yield batch
                micro += 1


def build_run_data(recipe: Recipe, model: AlignmentModel, accelerator: Any) -> RunData:
    """The run's training data (map-style or streamed, `train.stream`), eval sets and the encoders' collate
    functions, read through the model's frozen encoders for media given as files."""
    t = recipe.train
    media = list(recipe.adapters) + [a for a in recipe.anchors if a != "text"]
    encoders = {m: model.encoder_for(m) for m in media if model.has_encoder(m)}
    loaders = {m: e.load for m, e in encoders.items()}
    collate_fns = {m: e.collate for m, e in encoders.items()}
    eval_sets = [PairedDataset([s], media, seed=recipe.seed, train=False, loaders=loaders) for s in recipe.data.eval]
    mode = choose_mode(t.stream, recipe.data.train)
    if mode == "stream":  # large feature sets: read as a stream, never all in memory
        # default: one lane per (process, worker) slot, so every worker of every rank reads its own shards
        lanes = t.stream_lanes or accelerator.num_processes * max(1, t.num_workers)
        try:
            stream = FeatureStream(recipe.data.train, batch_size=t.batch_size, lanes=lanes, buffer=t.stream_buffer,
                                   seed=recipe.seed, rank=accelerator.process_index,
                                   world=accelerator.num_processes, num_workers=t.num_workers)
            stream.steps_in_epoch(0)
        except ValueError as e:
            raise TrainingError(str(e)) from None
        # not prepared: every rank reads only its own lanes
        return RunData(mode, stream, stream.loader(), eval_sets, collate_fns, stream=stream)
    train_set = PairedDataset(recipe.data.train, media, seed=recipe.seed, train=True, loaders=loaders)
    if len(train_set) < t.batch_size:
        raise BatchLargerThanData(t.batch_size, len(train_set))
    sampler = EpochSampler(len(train_set), seed=recipe.seed)
    loader = DataLoader(train_set, batch_size=t.batch_size, sampler=sampler, drop_last=True,
                        collate_fn=Collator(collate_fns, train_set.labels), num_workers=t.num_workers,
                        generator=torch.Generator().manual_seed(recipe.seed))
    return RunData(mode, train_set, loader, eval_sets, collate_fns, sampler=sampler,
                   steps_per_epoch=len(train_set) // t.batch_size)


def fill_text_table(recipe: Recipe, model: AlignmentModel, data: RunData, accelerator: Any) -> None:
    """Put the frozen text anchor's caption embeddings in an on-disk table: every known caption (map-style
    training data, eval captions, class prompts) is encoded now in length-sorted batches, streamed captions
    when first met; each is encoded once, ever (the table is shared by runs with the same anchor)."""
    spec = recipe.anchors["text"].encoder  # what fixes the embeddings: its spec and weight files
    table = table_for_anchor(spec, model.frozen.anchors["text"])
    texts: set[str] = set() if data.stream is not None else data.train_set.all_captions()
    for ds in data.eval_sets:
        texts |= ds.all_captions() | {x for xs in ds.class_prompts().values() for x in xs}
    with accelerator.main_process_first():  # the main process encodes, the others then find everything stored
        added = table.add(sorted(texts), progress=accelerator.is_local_main_process and len(texts) > 10_000)
    if added:
        logger.info("text anchor: %d new caption embeddings in %s", added, table.folder)
    model.text_tables["text"] = table


def epoch_batches(accelerator: Any, loader: Any, sampler: EpochSampler, epoch: int, skip: int = 0) -> Any:
    """The batches of `epoch` of a prepared map-style loader, from batch `skip` on (a resumed run's first epoch).

    The sampler's epoch is set directly: accelerate's `set_epoch` on a `skip_first_batches` loader reaches the
    sampler through one process's `BatchSampler`, but not through the `BatchSamplerShard` of a multi-process run
    (SkipBatchSampler -> BatchSamplerShard -> BatchSampler -> sampler), so a run resumed mid-epoch on 2+ processes
    used to read that epoch in epoch 0's order and draws."""
    loader = accelerator.skip_first_batches(loader, skip) if skip else loader
    loader.set_epoch(epoch)
    sampler.set_epoch(epoch)
    return iter(loader)


__all__ = ["RunData", "build_run_data", "epoch_batches", "fill_text_table"]
