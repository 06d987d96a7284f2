"""Linear projection (LLaVA v1 / ImageBind heads), with optional token pooling by striding."""

from __future__ import annotations

import torch
from torch import nn

from .base import Projector, ProjectorOutput, full_mask, register_projector
from .pooling import pool_tokens


@register_projector("linear")
class LinearProjector(Projector):
    """Linear projection (LLaVA, Liu et al., 2023; ImageBind heads, Girdhar et al., 2023), one layer per token.

    `stride` > 1 average-pools groups of tokens first (fewer soft tokens).
    """

    def __init__(self, in_dim: int, out_dim: int, *, stride: int = 1, bias: bool = True) -> None:
        super().__init__(in_dim, out_dim, stride=stride, bias=bias)
        self.stride = stride
        self.proj = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                modality: str | None = None) -> ProjectorOutput:
        tokens, mask = pool_tokens(tokens, full_mask(tokens, mask), self.stride)
        return ProjectorOutput(self.proj(tokens), mask)
