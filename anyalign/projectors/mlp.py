"""MLP projection in LLaVA-1.5's `mlp2x_gelu` shape (Linear, GELU, Linear), depth configurable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .base import Projector, ProjectorOutput, full_mask, pool_tokens, register_projector


@dataclass
class MLPOptions:
    """Options of the "mlp" projector."""

    depth: int = field(default=2, metadata={"help": "linear layers (GELU between them); 2 = LLaVA-1.5"})
    hidden_dim: int | None = field(default=None, metadata={"help": "hidden width (None = out_dim)", "min": 1})
    stride: int = field(default=1, metadata={"help": "average-pool groups of this many tokens first (1 = off)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout after each hidden GELU"})

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"mlp projector: depth must be >= 1, got {self.depth}")


@register_projector("mlp", options=MLPOptions)
class MLPProjector(Projector):
    """GELU MLP projection (LLaVA-1.5 `mlp2x_gelu`, Liu et al., 2023), applied per token.

    `depth` linear layers with GELU between them, after optional stride pooling.
    """

    def __init__(self, in_dim: int, out_dim: int, opts: MLPOptions | None = None, **options: Any) -> None:
        super().__init__(in_dim, out_dim, opts, **options)
        o = self.opts
        dims = [in_dim] + [o.hidden_dim or out_dim] * (o.depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(o.depth):
            if i:
                layers += [nn.GELU(), nn.Dropout(o.dropout)]
            layers.append(nn.Linear(dims[i], dims[i + 1]))
        self.net = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                modality: str | None = None) -> ProjectorOutput:
        tokens, mask = pool_tokens(tokens, full_mask(tokens, mask), self.opts.stride)
        return ProjectorOutput(self.net(tokens), mask)
