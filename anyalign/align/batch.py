"""Training batches: the items of each modality (`MediaBatch`: collated encoder inputs or padded cached features)
and the rows' tasks, captions, prompts, targets, labels and keys (`Batch`); `Collator` turns examples into one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..encoders import EncoderOutput
from ..features import FeatureRecord


@dataclass
class MediaBatch:
    """All items of one modality in a batch: raw (collated encoder inputs) or cached features."""

    rows: torch.Tensor  # [N] long: the example each item belongs to (reading order)
    inputs: dict[str, torch.Tensor] | None = None
    features: EncoderOutput | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MediaBatch:
        inputs = None if self.inputs is None else {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v)
                                                   else v for k, v in self.inputs.items()}
        return MediaBatch(self.rows.to(device), inputs, None if self.features is None else self.features.to(device))


@dataclass
class Batch:
    tasks: list[str]
    media: dict[str, MediaBatch]
    captions: list[str | None]
    prompts: list[str | None]
    targets: list[str | None]
    labels: torch.Tensor  # [B] long, -1 where unlabelled
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tasks)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(self.tasks, {m: mb.to(device, non_blocking) for m, mb in self.media.items()}, self.captions,
                     self.prompts, self.targets, self.labels.to(device), self.keys)


def pad_features(records: Sequence[FeatureRecord]) -> EncoderOutput:
    """Cached records -> float32 `EncoderOutput`, as the streamed path builds its batches: tokens padded in their
    stored dtype by plain per-item copies (numpy, no thread-pool round per item), then made float32 by one op over
    the whole `[N, T_max, D]` batch; padding zeroed, mask from the lengths."""
    lengths = [int(r.tokens.shape[0]) for r in records]
    t_max = max(lengths)
    stored = [r.tokens.numpy() for r in records]
    dtype = np.result_type(*{a.dtype for a in stored})
    buf = np.empty((len(records), t_max, stored[0].shape[1]), dtype=dtype)  # [N, T, D]
    for j, (a, n) in enumerate(zip(stored, lengths)):
        buf[j, :n] = a
        if n < t_max:
            buf[j, n:] = 0
    tokens = torch.from_numpy(buf).float()  # one conversion (none when stored as float32)
    mask = torch.arange(t_max)[None, :] < torch.tensor(lengths)[:, None]  # [N, T]
    pooled = torch.stack([r.pooled for r in records]).float()  # [N, P]
    return EncoderOutput(tokens, mask, pooled)


class Collator:
    """Examples -> `Batch`; raw media go through each encoder's `collate`, cached ones are padded."""

    def __init__(self, collators: dict[str, Callable[[list[Any]], dict[str, torch.Tensor]]],
                 label_vocab: Sequence[str]) -> None:
        self.collators = collators
        self.label_ids = {label: i for i, label in enumerate(label_vocab)}

    def __call__(self, examples: list[dict[str, Any]]) -> Batch:
        per_mod: dict[str, tuple[list[int], list[Any]]] = {}
        for row, ex in enumerate(examples):
            for m, items in ex["media"].items():
                rows, its = per_mod.setdefault(m, ([], []))
                rows.extend([row] * len(items))
                its.extend(items)
        media = {}
        for m, (rows, items) in per_mod.items():
            cached = [isinstance(x, FeatureRecord) for x in items]
            if all(cached):
                media[m] = MediaBatch(torch.tensor(rows), features=pad_features(items))
            elif any(cached):
                raise ValueError(f"{m}: a batch mixes cached features and raw inputs; use one kind per modality")
            else:
                if m not in self.collators:
                    raise ValueError(f"{m}: raw inputs but no encoder to collate them")
                media[m] = MediaBatch(torch.tensor(rows), inputs=self.collators[m](items))
        labels = torch.tensor([self.label_ids.get(ex["label"], -1) if ex["label"] is not None else -1
                               for ex in examples], dtype=torch.long)
        return Batch([ex["task"] for ex in examples], media, [ex["caption"] for ex in examples],
                     [ex["prompt"] for ex in examples], [ex["target"] for ex in examples], labels,
                     [ex["key"] for ex in examples])


__all__ = ["Batch", "Collator", "MediaBatch", "pad_features"]
