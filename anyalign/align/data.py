"""Paired training data: sources -> examples -> `Batch`es (`Collator`), in an order fixed by the seed (exact resume).

An example is `{"task", "media": {modality: [item, ...]}, "caption", "prompt", "target", "label", "key"}`;
media items are raw inputs (decoded by the adapter's encoder `load` in DataLoader workers) or cached
features (tokens kept float16, as stored). Randomness is a pure function of (seed, epoch, index), never of global
state, so a resumed run sees exactly the examples an uninterrupted one would: template and prompt choices are
counter-based hashes drawn for a whole batch at once (`item_draws`), augmentation uses
`numpy.random.default_rng([seed, epoch, index])`, made only for items that are augmented.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..datasets.uea import DEFAULT_UEA_TEMPLATES
from ..encoders import EncoderOutput
from ..features import FeatureRecord
from .augment import augment_series
from .captions import CaptionPool
from .config import DataSource
from .sources import read_source

logger = logging.getLogger(__name__)


# --- batches ---------------------------------------------------------------------------------------------------
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



# --- per-item randomness ---------------------------------------------------------------------------------------
_M64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic): a cheap, well-spread bijection."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def item_draws(seed: int, epoch: int, indices: Sequence[int] | np.ndarray, k: int = 2) -> np.ndarray:
    """`[n, k]` uint64 random draws, each a pure function of (seed, epoch, index, j): one vectorised call per
    batch instead of a generator per item, and independent of how indices are grouped into batches or workers."""
    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        key = _mix64(np.array([seed & _M64], dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        key = _mix64(key ^ np.uint64(epoch & _M64))
        x = _mix64(key ^ (idx * np.uint64(0x9E3779B97F4A7C15)))  # [n, 1]
        return _mix64(x + np.arange(1, k + 1, dtype=np.uint64)[None, :])  # [n, k]


def fill_caption(templates: Sequence[str], label_text: dict[str, str], caption: str | None, label: Any,
                 draw: int | None) -> str | None:
    """A record's caption: the template chosen by `draw` (None: the first) filled with its caption and label phrase
    (`label_text`, else the lower-cased label); None when it has neither."""
    if caption is None and label is None:
        return None
    phrase = label_text.get(str(label), str(label).lower()) if label is not None else ""
    t = templates[draw % len(templates)] if draw is not None else templates[0]
    return t.format(caption=caption or phrase, label=phrase)


# --- the dataset ---------------------------------------------------------------------------------------------
def _conversation_to_pair(conv: list[dict[str, Any]], where: str) -> tuple[str, str]:
    """LLaVA `[{"from": human|gpt, "value"}]` or chat `[{"role", "content"}]` -> (prompt, last answer).
    Earlier turns stay in the prompt as context; the loss is on the final answer."""
    turns = [(t.get("from", t.get("role")), t.get("value", t.get("content"))) for t in conv]
    if not turns or turns[-1][0] not in ("gpt", "assistant") or not isinstance(turns[-1][1], str):
        raise ValueError(f"{where}: the conversation must end with an assistant ('gpt') turn")
    lines = []
    for role, text in turns[:-1]:
        lines.append(text if role in ("human", "user") else f"Assistant: {text}")
    return "\n".join(lines), turns[-1][1]


class PairedDataset(Dataset):
    """All examples of a list of sources. `dataset[(epoch, i)]` is deterministic in (seed, epoch, i)."""

    def __init__(self, sources: Sequence[DataSource], media_names: Sequence[str], *, seed: int = 0,
                 train: bool = True, loaders: dict[str, Callable[[Any], Any]] | None = None) -> None:
        self.sources = list(sources)
        self.seed = seed
        self.train = train
        self.loaders = loaders or {}
        self.records: list[tuple[int, dict[str, Any]]] = []
        self._pools: dict[int, CaptionPool] = {}  # per source with `captions:` (align/captions.py)
        for si, src in enumerate(self.sources):
            for rec in read_source(src, media_names):
                self._check(src, rec)
                self.records.append((si, rec))
        self.labels = sorted({r["label"] for _, r in self.records if r.get("label") is not None})
        logger.info("%d %s examples from %d source(s)", len(self.records), "train" if train else "eval",
                    len(self.sources))

    @staticmethod
    def _check(src: DataSource, rec: dict[str, Any]) -> None:
        where = rec.get("where", f"{src.path} ({rec['key']})")
        if src.task in ("caption", "distill"):
            for p in src.prompts:
                if src.modality and "<{modality}>" not in p and f"<{src.modality}>" not in p:
                    raise ValueError(f"{src.path}: caption prompt {p!r} lacks the <{src.modality}> placeholder")
        if src.task == "instruct":
            prompt, _ = _conversation_to_pair(rec["conversation"], where)
            for m, items in rec["media"].items():
                if prompt.count(f"<{m}>") != len(items):
                    raise ValueError(f"{where}: {prompt.count(f'<{m}>')} <{m}> placeholder(s) in the conversation "
                                     f"but {len(items)} {m} item(s)")

    def __len__(self) -> int:
        return len(self.records)

    def caption(self, si: int, rec: dict[str, Any], draw: int | None) -> str | None:
        """The paired caption: a template (or pool entry) chosen by `draw` (None: the first), filled with the
        record's caption / label phrase."""
        src = self.sources[si]
        if src.captions is not None:  # caption diversity: draw from the source's pool
            pool = self.caption_pool(si).captions(rec)
            return (pool[draw % len(pool)] if draw is not None else pool[0]) if pool else None
        return fill_caption(self._templates(si), src.label_text, rec.get("caption"), rec.get("label"), draw)

    def all_captions(self) -> set[str]:
        """Every caption any epoch can produce (all templates), for precomputing frozen text-anchor embeddings."""
        out: set[str | None] = set()
        for si, rec in self.records:
            if self.sources[si].captions is not None:
                out.update(self.caption_pool(si).captions(rec))
            else:
                out.update(self.caption(si, rec, d) for d in range(len(self._templates(si))))
        out.discard(None)
        return out  # type: ignore[return-value]

    def _templates(self, si: int) -> list[str]:
        src = self.sources[si]
        if src.kind == "uea" and src.caption_templates == ["{caption}"]:
            return DEFAULT_UEA_TEMPLATES
        return src.caption_templates

    def caption_pool(self, si: int) -> CaptionPool:
        """The caption pool of source `si` (its `captions:` section, else its templates), built once."""
        if si not in self._pools:
            src = self.sources[si]
            self._pools[si] = CaptionPool(src.captions, self._templates(si), src.label_text,
                                          where=f"data source {src.path}: captions")
        return self._pools[si]

    def class_prompts(self, si: int = 0) -> dict[str, list[str]]:
        """Every caption template for every class (zero-shot classification prompts)."""
        src = self.sources[si]
        if src.captions is not None:
            return {label: self.caption_pool(si).class_prompts(label) for label in self.labels}
        templates = self._templates(si)
        out = {}
        for label in self.labels:
            phrase = src.label_text.get(label, label.lower())
            out[label] = [t.format(caption=phrase, label=phrase) for t in templates]
        return out

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[tuple[int, int] | int]) -> list[dict[str, Any]]:
        """The examples of a batch of `(epoch, index)` keys (the DataLoader's batched fetch); their template and
        prompt draws come from one vectorised `item_draws` call per epoch present."""
        pairs = [k if isinstance(k, tuple) else (0, k) for k in keys]
        draws: list[tuple[int, int] | None] = [None] * len(pairs)
        if self.train:
            for epoch in dict.fromkeys(e for e, _ in pairs):
                at = [j for j, (e, _) in enumerate(pairs) if e == epoch]
                d = item_draws(self.seed, epoch, [pairs[j][1] for j in at]).tolist()  # python ints
                for j, row in zip(at, d):
                    draws[j] = (row[0], row[1])
        return [self._example(e, i, d) for (e, i), d in zip(pairs, draws)]

    def _example(self, epoch: int, i: int, draw: tuple[int, int] | None) -> dict[str, Any]:
        si, rec = self.records[i]
        src = self.sources[si]
        media = {}
        rng: np.random.Generator | None = None
        for m, items in rec["media"].items():
            out = []
            for item in items:
                if isinstance(item, FeatureRecord):  # cached: nothing to decode or augment
                    out.append(item)
                    continue
                augment = self.train and src.augment is not None
                if augment and rng is None:  # only augmented items pay for a generator
                    rng = np.random.default_rng([self.seed, epoch, i])
                if augment and isinstance(item, np.ndarray):
                    item = augment_series(item, src.augment, rng)
                    augment = False
                if m in self.loaders:
                    item = self.loaders[m](item)
                if augment and isinstance(item, np.ndarray) and item.ndim == 2:  # a series read from a file
                    item = augment_series(item, src.augment, rng)
                out.append(item)
            media[m] = out
        caption = self.caption(si, rec, draw[0] if draw is not None else None)
        prompt = target = None
        if src.task == "caption" or (src.task == "distill" and not rec.get("conversation")):
            m = src.modality or next(iter(media))
            p = src.prompts[draw[1] % len(src.prompts)] if draw is not None else src.prompts[0]
            prompt, target = p.format(modality=m), caption
        elif src.task in ("instruct", "distill"):
            prompt, target = _conversation_to_pair(rec["conversation"], rec.get("where", rec["key"]))
        return {"task": src.task, "media": media, "caption": caption, "prompt": prompt, "target": target,
                "label": rec.get("label"), "key": rec["key"]}


class EpochSampler(Sampler):
    """A seeded permutation per epoch, yielding `(epoch, index)` so the dataset can seed per-sample randomness.

    Stateless apart from `set_epoch`: the order of epoch e is a pure function of (seed, e), which is what lets
    `accelerate.skip_first_batches` resume mid-epoch exactly.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        return iter([(self.epoch, i) for i in order])

    def __len__(self) -> int:
        return self.n


__all__ = ["Batch", "Collator", "EpochSampler", "MediaBatch", "PairedDataset", "fill_caption", "item_draws",
           "pad_features"]
