"""The `ctc` task: adapters with a words head (`projectors/ctc.py`) learn to spell the rows' transcripts.

A row of a `task: ctc` data source gives its media's frames and its caption (the transcript); the loss is CTC per
target character. It needs no pairing beyond the transcript and no negatives, and because the head is local in time,
what it learns carries over to sentences it never heard (issue 22), unlike a pooled contrastive head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..encoders import EncoderOutput
from .data import Batch
from .tasks import AlignmentModel, LossTerms, Task, TermKey, register_task


@register_task("ctc")
class CTCTask(Task):
    """CTC on the transcript (Graves et al., 2006) for every adapter whose shared-space head is a `ctc` projector."""

    def __init__(self, modalities: list[str]) -> None:
        super().__init__()
        self.modalities = list(modalities)

    @classmethod
    def from_recipe(cls, recipe: Any, *, adapters: Mapping[str, Any], anchors: Mapping[str, Any],
                    mllm: Any) -> CTCTask | None:
        mods = [m for m, a in adapters.items() if a.words_head is not None]
        return cls(mods) if mods else None

    def terms(self) -> list[TermKey]:
        return [(self.name, m) for m in self.modalities]

    @classmethod
    def term_name(cls, key: TermKey) -> str:
        return f"ctc-{key[1]}" if len(key) > 1 else "ctc"

    def training_forward(self, model: AlignmentModel, batch: Batch, feats: dict[str, EncoderOutput]) -> LossTerms:
        mine = {i for i in self.rows(batch) if batch.captions[i]}
        out: LossTerms = {}
        for m in self.modalities:
            mb = batch.media.get(m)
            if mb is None:
                continue
            idx = [j for j, r in enumerate(mb.rows.tolist()) if r in mine]
            if not idx:
                continue
            sub = feats[m][torch.tensor(idx, device=feats[m].tokens.device)]
            texts = [batch.captions[int(mb.rows[j])] for j in idx]
            head = model.adapters[m].words_head
            tokens, mask = model.adapters[m]._features(sub)
            out[(self.name, m)] = head.ctc_loss(tokens, mask, texts)
        return out


__all__ = ["CTCTask"]
