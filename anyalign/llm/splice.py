"""Lay out a planned batch (text ids + media slots) as left-padded tensors and splice soft tokens into embeddings.

Soft media positions hold a reserved placeholder id (only so that the embedding lookup stays in range) and are
marked in `soft_mask`; one `masked_scatter` then writes every soft token of the batch into `inputs_embeds`
(row-major = reading order, the LLaVA convention). Discrete media (RVQ codes) are real vocabulary ids and need no
splice. Position ids come from the attention-mask cumsum, so left padding does not shift positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompt import MediaSlot, PromptPlan

IGNORE_INDEX = -100  # label of positions without loss (prompt, media, padding)


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


__all__ = ["IGNORE_INDEX", "Layout", "MediaTokens", "layout_batch", "row_lengths", "soft_pool", "splice"]
