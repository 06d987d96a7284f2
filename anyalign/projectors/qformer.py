"""Q-Former-lite: a small BLIP-2-shaped querying transformer over encoder tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .attention import Attention, FeedForward
from .base import Projector, ProjectorOutput, full_mask, register_projector


class _QFormerBlock(nn.Module):
    """Query self-attention, optional cross-attention to the encoder tokens, MLP; each pre-norm residual."""

    def __init__(self, dim: int, kv_dim: int, heads: int, ff_mult: int, dropout: float, cross: bool) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout=dropout)
        self.cross = cross
        if cross:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross_attn = Attention(dim, heads, kv_dim=kv_dim, dropout=dropout)
        self.ff = FeedForward(dim, ff_mult, dropout)

    def forward(self, queries: torch.Tensor, media: torch.Tensor, key_mask: torch.Tensor,
                has_media: torch.Tensor) -> torch.Tensor:
        h = self.norm_self(queries)
        queries = queries + self.self_attn(h, h)
        if self.cross:
            # samples without any valid token attend to all (masked-out) keys and their update is zeroed
            x = self.cross_attn(self.norm_cross(queries), media, key_mask | ~has_media[:, None])
            queries = queries + x * has_media[:, None, None].to(x.dtype)
        return queries + self.ff(queries)


@dataclass
class QFormerOptions:
    """Options of the "qformer" projector."""

    num_queries: int = field(default=32, metadata={"help": "learned queries = output tokens"})
    dim: int = field(default=256, metadata={"help": "query width"})
    depth: int = field(default=2, metadata={"help": "blocks"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    ff_mult: int = field(default=4, metadata={"help": "MLP width multiplier"})
    cross_attention_every: int = field(default=1, metadata={"help": "cross-attention in every n-th block (BLIP-2: 2)"})
    dropout: float = field(default=0.0, metadata={"help": "attention and MLP dropout"})

    def __post_init__(self) -> None:
        if self.num_queries < 1 or self.depth < 1 or self.cross_attention_every < 1:
            raise ValueError(f"qformer: num_queries, depth and cross_attention_every must be >= 1, got "
                             f"{self.num_queries}, {self.depth}, {self.cross_attention_every}")


@register_projector("qformer", options=QFormerOptions)
class QFormerProjector(Projector):
    """Q-Former-lite (BLIP-2, Li et al., 2023): learned queries with self-attention, cross-attention and MLP blocks.

    A small, randomly initialised version of BLIP-2's querying transformer: `num_queries` learned queries of width
    `dim` pass through `depth` blocks; cross-attention to the (LayerNorm-ed) encoder tokens sits in every
    `cross_attention_every`-th block (BLIP-2 uses 2) with keys/values read at the encoder width, like BLIP-2's.
    Blocks are pre-norm (BLIP-2's BERT is post-norm) for stable training from scratch. Output: `num_queries`
    tokens of width `out_dim`; padded encoder tokens are masked out of every cross-attention.
    """

    def __init__(self, in_dim: int, out_dim: int, opts: QFormerOptions | None = None, **options: Any) -> None:
        super().__init__(in_dim, out_dim, opts, **options)
        o = self.opts
        self.queries = nn.Parameter(torch.randn(o.num_queries, o.dim) * 0.02)  # [N, dim]
        self.norm_media = nn.LayerNorm(in_dim)
        self.blocks = nn.ModuleList(_QFormerBlock(o.dim, in_dim, o.heads, o.ff_mult, o.dropout,
                                                  cross=i % o.cross_attention_every == 0) for i in range(o.depth))
        self.norm_out = nn.LayerNorm(o.dim)
        self.proj_out = nn.Linear(o.dim, out_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                modality: str | None = None) -> ProjectorOutput:
        mask = full_mask(tokens, mask)  # [B, T]
        b = tokens.shape[0]
        media = self.norm_media(tokens)  # [B, T, D_in]
        has_media = mask.any(1)  # [B]
        queries = self.queries.expand(b, -1, -1)  # [B, N, dim]
        for block in self.blocks:
            queries = block(queries, media, mask, has_media)
        out = self.proj_out(self.norm_out(queries))  # [B, N, out_dim]
        return ProjectorOutput(out, mask.new_ones(b, out.shape[1]))
