"""Linear projection (LLaVA v1 / ImageBind heads), with optional token pooling by striding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .base import Projector, ProjectorOutput, full_mask, pool_tokens, register_projector


@dataclass
class LinearOptions:
    """Options of the "linear" projector."""

    stride: int = field(default=1, metadata={"help": "average-pool groups of this many tokens first (1 = off)"})
    bias: bool = field(default=True, metadata={"help": "learn a bias"})


@register_projector("linear", options=LinearOptions)
class LinearProjector(Projector):
    """Linear projection (LLaVA, Liu et al., 2023; ImageBind heads, Girdhar et al., 2023), one layer per token.

    `stride` > 1 average-pools groups of tokens first (fewer soft tokens).
    """

    def __init__(self, in_dim: int, out_dim: int, opts: LinearOptions | None = None, **options: Any) -> None:
        super().__init__(in_dim, out_dim, opts, **options)
        self.proj = nn.Linear(in_dim, out_dim, bias=self.opts.bias)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                modality: str | None = None) -> ProjectorOutput:
        tokens, mask = pool_tokens(tokens, full_mask(tokens, mask), self.opts.stride)
        return ProjectorOutput(self.proj(tokens), mask)
