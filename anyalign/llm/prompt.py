"""Prompts with media placeholders (`<image>`, `<imu>`, ...) -> token-id plans -> a left-padded batch whose soft
media tokens are spliced into `inputs_embeds`.

Text between placeholders is tokenized segment by segment, so the tokenizer never needs new special tokens
and the LLM's embedding matrix never grows for soft tokens: a placeholder becomes a media slot that the layout
expands to as many positions as its adapter produces. Soft positions hold a placeholder id (only so the embedding
lookup stays in range) and one `masked_scatter` writes every soft token of the batch (row-major = reading order,
the LLaVA convention); discrete media (RVQ codes) are real vocabulary ids. Position ids come from the
attention-mask cumsum, so left padding does not shift positions. A prompt without placeholders tokenizes
exactly as the plain tokenizer would (special-token prefix/suffix included), which keeps the zero-adapter path
identical to the unmodified LLM. (SentencePiece tokenizers that prepend a word-boundary marker to every call
will mark the text right after a placeholder as a word start; byte-level BPE tokenizers are unaffected.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..language_model import DEFAULT_MODALITIES, placeholder_pattern  # the syntax training shares

IGNORE_INDEX = -100  # label of positions without loss (prompt, media, padding)


@dataclass(frozen=True)
class MediaSlot:
    """The `index`-th occurrence (reading order across the batch) of a `<modality>` placeholder."""

    modality: str
    index: int


@dataclass
class PromptPlan:
    """Per row: token-id lists and media slots in reading order, plus target ids (for the caption loss)."""

    rows: list[list[list[int] | MediaSlot]]
    targets: list[list[int]] | None
    counts: dict[str, int] = field(default_factory=dict)  # placeholders per modality over the whole batch

    def text_lengths(self) -> list[int]:
        """Tokens per row without media (prompt + target)."""
        out = []
        for i, row in enumerate(self.rows):
            n = sum(len(p) for p in row if isinstance(p, list))
            out.append(n + (len(self.targets[i]) if self.targets else 0))
        return out


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds around a text (e.g. `[bos]`, `[]`) when asked for special tokens."""
    probe = "hello"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain):])
    return [], []


def apply_template(tokenizer: Any, prompt: str) -> str:
    """Wrap a user prompt in the tokenizer's chat template (generation prompt added); placeholders stay text."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def plan_prompts(
    prompts: Sequence[str],
    tokenizer: Any,
    adapters: Iterable[str],
    *,
    targets: Sequence[str] | None = None,
    chat_template: bool = False,
) -> PromptPlan:
    """Template, split at placeholders and tokenize a batch of prompts (and targets) in one tokenizer call."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f"prompts: expected a non-empty list of strings, got {type(prompts).__name__}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}]: expected a string, got {type(p).__name__}")
    if targets is not None:
        if isinstance(targets, str) or len(targets) != len(prompts):
            raise ValueError(f"targets: expected a list of {len(prompts)} strings (one per prompt), got "
                             f"{len(targets) if not isinstance(targets, str) else 'a string'}")
        for i, t in enumerate(targets):
            if not isinstance(t, str):
                raise ValueError(f"targets[{i}]: expected a string, got {type(t).__name__}")
    adapters = set(adapters)
    pattern = placeholder_pattern(adapters)
    prefix, suffix = ([], []) if chat_template else special_affixes(tokenizer)

    texts: list[str] = []  # every non-empty text segment, tokenized together below
    layout: list[list[int | MediaSlot]] = []  # per row: index into `texts`, or a slot
    counts: dict[str, int] = {}
    for i, prompt in enumerate(prompts):
        text = apply_template(tokenizer, prompt) if chat_template else prompt
        parts = pattern.split(text)  # [text, modality, text, modality, ..., text]
        row: list[int | MediaSlot] = []
        for j, part in enumerate(parts):
            if j % 2:
                if part not in adapters:
                    raise ValueError(f"prompts[{i}]: placeholder <{part}> but no {part!r} adapter is loaded "
                                     f"(adapters: {sorted(adapters) or 'none'})")
                row.append(MediaSlot(part, counts.get(part, 0)))
                counts[part] = counts.get(part, 0) + 1
            elif part:
                row.append(len(texts))
                texts.append(part)
        layout.append(row)
    target_start = len(texts)
    if targets is not None:
        texts.extend(targets)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    rows: list[list[list[int] | MediaSlot]] = []
    for row in layout:
        out: list[list[int] | MediaSlot] = [list(prefix)] if prefix else []
        out += [p if isinstance(p, MediaSlot) else list(ids[p]) for p in row]
        if suffix:
            out.append(list(suffix))
        rows.append(out)
    target_ids = None
    if targets is not None:
        eos = tokenizer.eos_token_id
        target_ids = [list(ids[target_start + i]) + ([eos] if eos is not None else []) for i in range(len(targets))]
    return PromptPlan(rows, target_ids, counts)


def check_media(counts: Mapping[str, int], given: Mapping[str, int], adapters: Iterable[str]) -> None:
    """Placeholders and media must match one to one per modality; raise naming the modality otherwise."""
    adapters = set(adapters)
    for modality, n in given.items():
        if modality not in adapters:
            raise ValueError(f"{n} {modality} input(s) given but no {modality!r} adapter is loaded "
                             f"(adapters: {sorted(adapters) or 'none'})")
    for modality in sorted(set(counts) | set(given)):
        want, got = counts.get(modality, 0), given.get(modality, 0)
        if want != got:
            raise ValueError(f"the prompts contain {want} <{modality}> placeholder(s) but {got} {modality} "
                             f"input(s) were given; each placeholder needs exactly one input, in reading order")


@dataclass
class MediaTokens:
    """One modality's media for a batch: per-item lengths and either soft tokens or discrete vocabulary ids."""

    lengths: list[int]  # positions each item occupies
    soft: torch.Tensor | None = None  # [S, D] the valid soft tokens of all items, item after item
    ids: list[list[int]] | None = None  # discrete vocabulary ids per item


@dataclass
class Layout:
    """A left-padded batch ready for the LLM (all tensors on CPU until `to`)."""

    input_ids: torch.Tensor  # [B, L] long; placeholder id at soft positions
    attention_mask: torch.Tensor  # [B, L] long, 0 on left padding
    position_ids: torch.Tensor  # [B, L] long
    labels: torch.Tensor | None  # [B, L] long, IGNORE_INDEX except on target tokens
    soft_mask: torch.Tensor  # [B, L] bool, positions that receive soft tokens
    soft_index: torch.Tensor  # [S] long, row of the soft pool for each soft position in reading order

    def to(self, device: torch.device | str) -> Layout:
        labels = None if self.labels is None else self.labels.to(device)
        return Layout(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                      labels, self.soft_mask.to(device), self.soft_index.to(device))


def row_lengths(plan: PromptPlan, media: dict[str, MediaTokens]) -> list[int]:
    """Total positions per row (text + media + target), to check against the context length before compute."""
    out = []
    for i, row in enumerate(plan.rows):
        n = sum(len(p) if isinstance(p, list) else media[p.modality].lengths[p.index] for p in row)
        out.append(n + (len(plan.targets[i]) if plan.targets else 0))
    return out


def soft_pool(media: dict[str, MediaTokens]) -> tuple[torch.Tensor | None, dict[str, list[int]]]:
    """Concatenate all soft tokens (modalities in sorted order) -> `[S, D]` and each item's first row in it."""
    parts, starts, offset = [], {}, 0
    for modality in sorted(media):
        m = media[modality]
        if m.soft is None:
            continue
        item_starts = []
        for n in m.lengths:
            item_starts.append(offset)
            offset += n
        starts[modality] = item_starts
        parts.append(m.soft)
    return (torch.cat(parts) if parts else None), starts


def layout_batch(plan: PromptPlan, media: dict[str, MediaTokens], *, placeholder_id: int, pad_id: int) -> Layout:
    """Build left-padded ids, masks, position ids, labels and the soft-token index for a planned batch."""
    _, starts = soft_pool(media)
    seqs: list[list[int]] = []
    softs: list[list[bool]] = []
    n_prompt: list[int] = []
    index: list[int] = []
    for i, row in enumerate(plan.rows):
        ids: list[int] = []
        soft: list[bool] = []
        for part in row:
            if isinstance(part, list):
                ids += part
                soft += [False] * len(part)
                continue
            assert isinstance(part, MediaSlot)
            m = media[part.modality]
            n = m.lengths[part.index]
            if m.ids is not None:  # discrete codes: ordinary (extended) vocabulary ids
                ids += m.ids[part.index]
                soft += [False] * n
            else:
                start = starts[part.modality][part.index]
                index += range(start, start + n)
                ids += [placeholder_id] * n
                soft += [True] * n
        n_prompt.append(len(ids))
        if plan.targets is not None:
            ids += plan.targets[i]
            soft += [False] * len(plan.targets[i])
        seqs.append(ids)
        softs.append(soft)

    batch, length = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention = torch.zeros(batch, length, dtype=torch.long)
    soft_mask = torch.zeros(batch, length, dtype=torch.bool)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long) if plan.targets is not None else None
    for i, (ids, soft) in enumerate(zip(seqs, softs)):
        pad = length - len(ids)  # left padding
        input_ids[i, pad:] = torch.tensor(ids, dtype=torch.long)
        attention[i, pad:] = 1
        soft_mask[i, pad:] = torch.tensor(soft, dtype=torch.bool)
        if labels is not None:
            labels[i, pad + n_prompt[i]:] = input_ids[i, pad + n_prompt[i]:]
    position_ids = (attention.cumsum(-1) - 1).clamp_min(0)  # [B, L]
    return Layout(input_ids, attention, position_ids, labels, soft_mask, torch.tensor(index, dtype=torch.long))


def splice(embeds: torch.Tensor, layout: Layout, pool: torch.Tensor | None) -> torch.Tensor:
    """Write the soft tokens into the text embeddings `[B, L, D]` at `layout.soft_mask`, in one masked_scatter."""
    n = int(layout.soft_index.numel())
    if n == 0:
        return embeds
    if pool is None or int(layout.soft_mask.sum()) != n:
        raise RuntimeError(f"splice: {int(layout.soft_mask.sum())} soft positions but {n} soft tokens")
    source = pool.index_select(0, layout.soft_index).to(embeds.dtype)  # [S, D] in reading order
    return embeds.masked_scatter(layout.soft_mask.unsqueeze(-1), source)


__all__ = ["DEFAULT_MODALITIES", "IGNORE_INDEX", "Layout", "MediaSlot", "MediaTokens", "PromptPlan", "apply_template",
           "check_media", "layout_batch", "placeholder_pattern", "plan_prompts", "row_lengths", "soft_pool",
           "special_affixes", "splice"]
