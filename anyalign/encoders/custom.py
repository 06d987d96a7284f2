"""Bring your own encoder: `wrap_module(my_net, modality="ecg", load=read_ecg, token_dim=256)`. `my_net(batch)` may
return tokens `[B, T, D]`, pooled `[B, D]`, `(tokens, mask)` or an `EncoderOutput`; missing parts are filled in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .base import Encoder, EncoderOutput, masked_mean


class ModuleEncoder(Encoder):
    """An arbitrary module exposed through the encoder interface."""

    def __init__(
        self,
        module: nn.Module,
        *,
        modality: str,
        token_dim: int,
        pooled_dim: int | None = None,
        load: Callable[[Any], Any] | None = None,
        collate: Callable[[Sequence[Any]], torch.Tensor | dict[str, torch.Tensor]] | None = None,
        extensions: Sequence[str] = (),
        input_spec: str = "",
    ) -> None:
        super().__init__()
        self.module = module
        self.modality = modality  # type: ignore[misc]  # instance-level override of the class attribute
        self.extensions = tuple(e.lower() for e in extensions)  # type: ignore[misc]
        self.input_spec = input_spec or f"whatever {type(module).__name__} takes"  # type: ignore[misc]
        self.token_dim = token_dim
        self.pooled_dim = pooled_dim or token_dim
        self._load = load
        self._collate = collate or (lambda items: torch.stack([torch.as_tensor(x) for x in items]))

    def load(self, item: Any) -> Any:
        return self._load(item) if self._load else item

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        out = self._collate(items)
        return out if isinstance(out, dict) else {"inputs": out}

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        out = self.module(batch["inputs"]) if set(batch) == {"inputs"} else self.module(**batch)
        if isinstance(out, EncoderOutput):
            return out
        mask = None
        if isinstance(out, tuple):
            out, mask = out
        if out.dim() == 2:
            out = out[:, None, :]  # [B, 1, D]
        if mask is None:
            mask = torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)
        return EncoderOutput(out, mask, masked_mean(out, mask))


def wrap_module(module: nn.Module, *, modality: str, token_dim: int, **kwargs: Any) -> ModuleEncoder:
    """Wrap `module` as a frozen-capable anyalign encoder (see `ModuleEncoder` for the options)."""
    return ModuleEncoder(module, modality=modality, token_dim=token_dim, **kwargs)
