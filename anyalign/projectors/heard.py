"""The LLM reads what the words head heard: a clip's LLM input is its transcript as ordinary text tokens.

Why: soft tokens from a small projector teach a frozen LLM its training captions, not what was said (issue 22: WER
3.97x Whisper's); the CTC words head (`projectors/ctc.py`) spells new sentences, and as text the LLM answers about
speech as about the same words typed. No weights of its own: `MultimodalLM` tokenizes what the words head heard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .base import Projector, ProjectorOutput, register_projector


@dataclass
class HeardOptions:
    """Options of the "heard" LLM head."""

    template: str = field(default="{}", metadata={
        "help": "how the transcript appears to the LLM; '{}' is replaced by it, e.g. '\"{}\"' quotes it"})

    def __post_init__(self) -> None:
        if self.template.count("{}") != 1:
            raise ValueError(f"heard projector: template must contain '{{}}' once, got {self.template!r}")


@register_projector("heard", options=HeardOptions)
class HeardTextProjector(Projector):
    """The words head's transcript as the LLM's text input, ASR then LLM (a cascade, as AudioGPT, Huang et al., 2023).

    The LLM reads it as ids of its own tokenizer, inside one adapter."""

    differentiable = False

    def text(self, transcript: str) -> str:
        """What the LLM reads for one clip."""
        return self.opts.template.replace("{}", transcript)

    def token_ids(self, transcripts: list[str], tokenizer: Any) -> list[list[int]]:
        """The LLM tokenizer's ids of what the LLM reads for each clip (no special tokens)."""
        return [tokenizer(self.text(t), add_special_tokens=False)["input_ids"] for t in transcripts]

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                modality: str | None = None) -> ProjectorOutput:
        raise RuntimeError("heard projector: it makes text, not soft tokens; MultimodalLM reads "
                           "ModalityAdapter.transcribe() through it")


def reads_transcript(head: object) -> bool:
    """True for an LLM head that hands the LLM the words head's transcript as text."""
    return isinstance(head, HeardTextProjector)


__all__ = ["HeardTextProjector", "HeardOptions", "reads_transcript"]
