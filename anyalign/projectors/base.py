"""The projector interface: encoder tokens `[B, T, D_in]` (+ mask) -> projected tokens `[B, N, D_out]` (+ mask).

Projectors are the small trainable part of anyalign. The same module type serves both targets: the shared
embedding space (its output tokens are pooled and L2-normalised by the adapter) and a frozen LLM's input
space (its output tokens are spliced into `inputs_embeds` as soft tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..registry import Registry


@dataclass
class ProjectorOutput:
    """Projected tokens, their mask, auxiliary losses (e.g. VQ commitment) and discrete codes if any."""

    tokens: torch.Tensor  # [B, N, D_out]
    mask: torch.Tensor  # [B, N] bool
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    codes: torch.Tensor | None = None  # [B, N, n_quantizers] for discrete projectors


class Projector(nn.Module):
    """Base class. Subclasses take `in_dim`, `out_dim` and keyword-only options, and record the options in
    `self.config` (a JSON-able dict) so that `create_projector(name, in_dim, out_dim, **config)` rebuilds them."""

    name: str = ""

    def __init__(self, in_dim: int, out_dim: int, **config: Any) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"{type(self).__name__}: in_dim and out_dim must be positive, got {in_dim}, {out_dim}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.config: dict[str, Any] = dict(config)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                modality: str | None = None) -> ProjectorOutput:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this projector: name, dims and options."""
        return {"name": self.name, "in_dim": self.in_dim, "out_dim": self.out_dim, **self.config}


PROJECTORS: Registry[Projector] = Registry("projector")


def register_projector(name: str) -> Callable[[type[Projector]], type[Projector]]:
    """Class decorator registering a projector under `name`."""

    def wrap(cls: type[Projector]) -> type[Projector]:
        cls.name = name
        return PROJECTORS.register(name)(cls)

    return wrap


def create_projector(name: str, *, in_dim: int, out_dim: int, **config: Any) -> Projector:
    """Build a registered projector, e.g. `create_projector("perceiver", in_dim=768, out_dim=576, num_latents=32)`."""
    from . import _import_builtin

    _import_builtin()
    return PROJECTORS.get(name)(in_dim, out_dim, **config)


def list_projectors() -> list[str]:
    """Registered projector names."""
    from . import _import_builtin

    _import_builtin()
    return PROJECTORS.names()


def full_mask(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Return `mask` or an all-valid `[B, T]` mask for `tokens`."""
    if mask is None:
        return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    return mask.bool()
