"""Perceiver resampler: a fixed number of learned latents summarise any number of encoder tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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


@register_projector("perceiver", options=PerceiverOptions)
class PerceiverProjector(Projector):
    """Perceiver resampler (Flamingo, Alayrac et al., 2022; AnyMAL, Moon et al., 2023) with Unified-IO 2 options.

    `num_latents` learned queries cross-attend to the encoder tokens (projected to `dim`) over `depth` layers;
    the output is always `num_latents` tokens of width `out_dim`. Padded tokens are masked out of the keys;
    the latents themselves are always valid keys, so a sample without valid tokens still gives finite output.

    Unified-IO 2 (Lu et al., 2023) stabilisers, all off by default:
    - `qk_norm`: LayerNorm on each head's queries and keys.
    - `cosine_attention`: L2-normalised queries/keys times a learnable per-head scale (capped at 100).
    - `rope_2d`: 2D rotary embeddings of the image tokens' (row, col) applied to their keys. The latent queries
      and all prefix tokens (CLS, registers) sit at position 0 = no rotation, so attention to them is
      position-free while grid tokens are seen at (row + 1, col + 1). The grid is `grid_size=[rows, cols]` with
      `num_prefix_tokens` (default: whatever precedes the rows * cols grid tokens), or, without `grid_size`,
      inferred per sample from its valid token count n: n square -> no prefix, n - 1 square -> one CLS token
      (or exactly `num_prefix_tokens`). Valid tokens are numbered in order, so right padding does not move them.
    """

    def __init__(self, in_dim: int, out_dim: int, *, num_latents: int = 64, dim: int = 256, depth: int = 2,
                 heads: int = 4, ff_mult: int = 4, dropout: float = 0.0, qk_norm: bool = False,
                 cosine_attention: bool = False, rope_2d: bool = False,
                 grid_size: int | Sequence[int] | None = None, num_prefix_tokens: int | None = None,
                 rope_theta: float = 10000.0) -> None:
        if num_latents < 1 or depth < 1:
            raise ValueError(f"perceiver: num_latents and depth must be >= 1, got {num_latents}, {depth}")
        grid = _parse_grid(grid_size)
        if rope_2d and (dim // heads) % 4:
            raise ValueError(f"perceiver: rope_2d needs dim / heads divisible by 4, got {dim} / {heads}")
        super().__init__(in_dim, out_dim, num_latents=num_latents, dim=dim, depth=depth, heads=heads,
                         ff_mult=ff_mult, dropout=dropout, qk_norm=qk_norm, cosine_attention=cosine_attention,
                         rope_2d=rope_2d, grid_size=list(grid) if grid else None,
                         num_prefix_tokens=num_prefix_tokens, rope_theta=rope_theta)
        self.grid_size = grid
        self.num_prefix_tokens = num_prefix_tokens
        self.use_rope = rope_2d
        self.rope_theta = rope_theta
        self.dim_head = dim // heads
        self.proj_in = nn.Linear(in_dim, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)  # [L, dim]
        self.layers = nn.ModuleList(_PerceiverLayer(dim, heads, ff_mult, dropout, qk_norm, cosine_attention)
                                    for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, out_dim)

    def _rope(self, mask: torch.Tensor, num_latents: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.use_rope:
            return None
        rows, cols = grid_positions(mask, grid_size=self.grid_size, num_prefix_tokens=self.num_prefix_tokens)
        pad = rows.new_zeros(rows.shape[0], num_latents)  # latent keys: position 0, no rotation
        return rope_2d(torch.cat([rows, pad], 1), torch.cat([cols, pad], 1), self.dim_head, self.rope_theta)

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


def _parse_grid(grid_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if grid_size is None:
        return None
    if isinstance(grid_size, int):
        grid_size = (grid_size, grid_size)
    grid = tuple(int(g) for g in grid_size)
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"perceiver: grid_size must be an int or [rows, cols] of positive ints, got {grid_size!r}")
    return grid  # type: ignore[return-value]
