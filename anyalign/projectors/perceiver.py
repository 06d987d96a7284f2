"""Perceiver resampler: a fixed number of learned latents summarise any number of encoder tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .attention import Attention, FeedForward, grid_positions, rope_2d
from .base import Projector, ProjectorOutput, full_mask, register_projector


class _PerceiverLayer(nn.Module):
    """Latents attend to [media; latents] (Flamingo's concatenated keys), then an MLP; both pre-norm residual."""

    def __init__(self, dim: int, heads: int, ff_mult: int, dropout: float, qk_norm: bool, cosine: bool) -> None:
        super().__init__()
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qk_norm=qk_norm, cosine=cosine, dropout=dropout)
        self.ff = FeedForward(dim, ff_mult, dropout)

    def forward(self, media: torch.Tensor, latents: torch.Tensor, key_mask: torch.Tensor,
                k_rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        lat = self.norm_latents(latents)
        context = torch.cat([self.norm_media(media), lat], dim=1)  # [B, T + L, dim]
        latents = latents + self.attn(lat, context, key_mask, k_rope=k_rope)
        return latents + self.ff(latents)


@dataclass
class PerceiverOptions:
    """Options of the "perceiver" projector."""

    num_latents: int = field(default=64, metadata={"help": "learned queries = output tokens"})
    dim: int = field(default=256, metadata={"help": "internal width"})
    depth: int = field(default=2, metadata={"help": "cross-attention layers"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    ff_mult: int = field(default=4, metadata={"help": "MLP width multiplier"})
    dropout: float = field(default=0.0, metadata={"help": "attention and MLP dropout"})
    qk_norm: bool = field(default=False, metadata={"help": "LayerNorm on queries and keys (Unified-IO 2)"})
    cosine_attention: bool = field(default=False, metadata={"help": "scaled cosine attention logits"})
    rope_2d: bool = field(default=False, metadata={"help": "2D rotary positions of image-grid tokens on the keys"})
    grid_size: int | list[int] | None = field(default=None, metadata={
        "help": "rope_2d token grid [rows, cols] (None = inferred per sample)"})
    num_prefix_tokens: int | None = field(default=None, metadata={"help": "rope_2d: tokens before the grid (CLS)"})
    rope_theta: float = field(default=10000.0, metadata={"help": "rope_2d frequency base"})

    def __post_init__(self) -> None:
        if self.num_latents < 1 or self.depth < 1:
            raise ValueError(f"perceiver: num_latents and depth must be >= 1, got {self.num_latents}, {self.depth}")
        if self.rope_2d and (self.dim // self.heads) % 4:
            raise ValueError(f"perceiver: rope_2d needs dim / heads divisible by 4, got {self.dim} / {self.heads}")
        grid = self.grid_size
        if grid is not None:
            grid = [grid, grid] if isinstance(grid, int) else list(grid)
            if len(grid) != 2 or not all(isinstance(g, int) and g >= 1 for g in grid):
                raise ValueError(f"perceiver: grid_size must be an int or [rows, cols] of positive ints, got "
                                 f"{self.grid_size!r}")
            self.grid_size = grid


@register_projector("perceiver", options=PerceiverOptions)
class PerceiverProjector(Projector):
    """Perceiver resampler (Flamingo, Alayrac et al., 2022; AnyMAL, Moon et al., 2023) with Unified-IO 2 options.

    `num_latents` learned queries cross-attend to [encoder tokens; latents] (padding masked out, so a sample
    without valid tokens still gives finite output) and give `num_latents` tokens of width `out_dim`. Unified-IO 2
    (Lu et al., 2023) stabilisers, off by default: `qk_norm`, `cosine_attention`, and `rope_2d` (2D rotary
    positions of the image grid on the keys; latents and prefix tokens such as CLS at position 0, the grid from
    `grid_size` or inferred per sample, see `attention.grid_positions`).
    """

    def __init__(self, in_dim: int, out_dim: int, opts: PerceiverOptions | None = None, **options: Any) -> None:
        super().__init__(in_dim, out_dim, opts, **options)
        o = self.opts
        self.proj_in = nn.Linear(in_dim, o.dim)
        self.latents = nn.Parameter(torch.randn(o.num_latents, o.dim) * 0.02)  # [L, dim]
        self.layers = nn.ModuleList(_PerceiverLayer(o.dim, o.heads, o.ff_mult, o.dropout, o.qk_norm,
                                                    o.cosine_attention) for _ in range(o.depth))
        self.norm_out = nn.LayerNorm(o.dim)
        self.proj_out = nn.Linear(o.dim, out_dim)

    def _rope(self, mask: torch.Tensor, num_latents: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        o = self.opts
        if not o.rope_2d:
            return None
        rows, cols = grid_positions(mask, grid_size=o.grid_size, num_prefix_tokens=o.num_prefix_tokens)
        pad = rows.new_zeros(rows.shape[0], num_latents)  # latent keys: position 0, no rotation
        return rope_2d(torch.cat([rows, pad], 1), torch.cat([cols, pad], 1), o.dim // o.heads, o.rope_theta)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                modality: str | None = None) -> ProjectorOutput:
        mask = full_mask(tokens, mask)  # [B, T]
        b = tokens.shape[0]
        media = self.proj_in(tokens)  # [B, T, dim]
        latents = self.latents.expand(b, -1, -1)  # [B, L, dim]
        n_lat = latents.shape[1]
        key_mask = torch.cat([mask, mask.new_ones(b, n_lat)], dim=1)  # [B, T + L]
        k_rope = self._rope(mask, n_lat)
        for layer in self.layers:
            latents = layer(media, latents, key_mask, k_rope)
        out = self.proj_out(self.norm_out(latents))  # [B, L, out_dim]
        return ProjectorOutput(out, mask.new_ones(b, n_lat))

