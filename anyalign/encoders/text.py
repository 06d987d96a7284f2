"""Any Hugging Face sentence encoder folder or hub id, mean-pooled (sentence-transformers recipe)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from .base import Encoder, EncoderOutput, InputError, masked_mean
from .registry import register_encoder

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class HFTextEncoder(Encoder):
    """Transformer text encoder: token states `[B, T, H]`, pooled = L2-normalised masked mean `[B, H]`."""

    modality = "text"
    input_spec = "str: one sentence per item"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_length: int = 128, normalize: bool = True):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.normalize = normalize
        self.token_dim = self.pooled_dim = int(model.config.hidden_size)

    def load(self, item: Any) -> str:
        if not isinstance(item, str):
            raise InputError(f"text encoder expects strings, got {type(item).__name__}: {item!r:.80}")
        return item

    def collate(self, items: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(items), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return dict(enc)

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        mask = batch["attention_mask"].bool()
        tokens = self.model(**batch).last_hidden_state  # [B, T, H]
        pooled = masked_mean(tokens.float(), mask)
        if self.normalize:
            pooled = F.normalize(pooled, dim=-1)
        return EncoderOutput(tokens, mask, pooled)


@dataclass
class TextOptions:
    """Options of the "text" encoder (the model itself is `pretrained`)."""

    max_length: int = field(default=128, metadata={"help": "tokens per sentence; longer ones are truncated"})
    normalize: bool = field(default=True, metadata={"help": "L2-normalise the pooled embedding"})


@register_encoder("text", modality="text", token_dim=384, pooled_dim=384, input_spec=HFTextEncoder.input_spec,
                  default_model=DEFAULT_TEXT_MODEL, options=TextOptions)
def text_encoder(pretrained: str | None = None, *, max_length: int = 128, normalize: bool = True) -> HFTextEncoder:
    """A sentence encoder from a local folder or hub id (default: all-MiniLM-L6-v2)."""
    source = str(pretrained or DEFAULT_TEXT_MODEL)
    if source.startswith("hf-hub:"):
        source = source[len("hf-hub:"):]
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
    except OSError as e:
        raise FileNotFoundError(
            f"text encoder: cannot load {source!r} (expected a Hugging Face model folder or a reachable hub id): {e}"
        ) from None
    return HFTextEncoder(model, tokenizer, max_length=max_length, normalize=normalize)
