"""Attention blocks of the query-based projectors (perceiver, qformer, universal): one `Attention` on SDPA with
Unified-IO 2's optional stabilisers (QK-norm, scaled cosine logits), and 2D rotary positions for image grids."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [B, S, dim_head]


class Attention(nn.Module):
    """Multi-head attention of queries `[B, L, dim]` over a context `[B, S, kv_dim]` with a key padding mask.

    `qk_norm` applies a LayerNorm to each head's queries and keys; `cosine` L2-normalises them and multiplies the
    logits by a learnable per-head scale (Swin v2 / Unified-IO 2). Both bound the attention logits.
    """

    def __init__(self, dim: int, heads: int, *, kv_dim: int | None = None, qk_norm: bool = False,
                 cosine: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention: dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.dim_head = dim // heads
        self.dropout = dropout
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(kv_dim or dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(self.dim_head) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.dim_head) if qk_norm else nn.Identity()
        self.cosine = cosine
        if cosine:  # log of the logit scale, initialised at 10 and capped at 100 as in Swin v2
            self.logit_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(10.0)))

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None, *,
                k_rope: Rope | None = None) -> torch.Tensor:
        """`x` [B, L, dim], `context` [B, S, kv_dim], `key_mask` [B, S] (True = attend) -> [B, L, dim]."""
        b, n, _ = x.shape
        s = context.shape[1]
        q = self.to_q(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # [B, H, L, Dh]
        k, v = self.to_kv(context).view(b, s, 2, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)  # [B, H, S, Dh]
        q, k = self.q_norm(q), self.k_norm(k)
        scale = None
        if self.cosine:
            q = F.normalize(q, dim=-1) * self.logit_scale.clamp(max=math.log(100.0)).exp()
            k = F.normalize(k, dim=-1)
            scale = 1.0
        if k_rope is not None:
            k = apply_rope(k, k_rope)
        attn_mask = key_mask[:, None, None, :] if key_mask is not None else None  # [B, 1, 1, S]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Sequential):
    """Pre-norm MLP block: LayerNorm, Linear(dim, dim * mult), GELU, Linear back."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(dim * mult, dim))


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block (self-attention + MLP) over `[B, S, dim]` with a key padding mask."""

    def __init__(self, dim: int, heads: int, *, ff_mult: int = 4, dropout: float = 0.0, qk_norm: bool = False,
                 cosine: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qk_norm=qk_norm, cosine=cosine, dropout=dropout)
        self.ff = FeedForward(dim, ff_mult, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x)
        x = x + self.attn(h, h, mask)
        return x + self.ff(x)


def _rotate_half_2d(x: torch.Tensor) -> torch.Tensor:
    """Rotate each of the two halves (rows, columns) of the last dim by 90 degrees in its (first, second) split."""
    x1, x2 = x.unflatten(-1, (2, 2, -1)).unbind(-2)  # each [..., 2, Dh/4]
    return torch.stack((-x2, x1), dim=-2).flatten(-3)


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate heads `x` [B, H, S, Dh] by 2D rotary angles `rope` (cos, sin each [B, S, Dh])."""
    cos, sin = (r[:, None].to(x.dtype) for r in rope)
    return x * cos + _rotate_half_2d(x) * sin


def rope_2d(rows: torch.Tensor, cols: torch.Tensor, dim_head: int, theta: float = 10000.0) -> Rope:
    """2D rotary tables for token positions `rows`, `cols` [B, S]: the first half of each head encodes the row,
    the second half the column (position 0 = no rotation)."""
    if dim_head % 4:
        raise ValueError(f"2D rotary embeddings need a head dim divisible by 4, got {dim_head}")
    quarter = dim_head // 4
    inv_freq = theta ** (-torch.arange(quarter, dtype=torch.float32, device=rows.device) / quarter)  # [Dh/4]
    ang_r = rows.float()[..., None] * inv_freq  # [B, S, Dh/4]
    ang_c = cols.float()[..., None] * inv_freq
    ang = torch.cat([ang_r, ang_r, ang_c, ang_c], dim=-1)  # [B, S, Dh] laid out (half, split, freq)
    return ang.cos(), ang.sin()


def grid_positions(mask: torch.Tensor, *, grid_size: tuple[int, int] | None,
                   num_prefix_tokens: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based (row, col) of each valid token on its image grid, 0 for prefix (e.g. CLS) and padded tokens.

    Valid tokens are numbered in order (padding may sit anywhere). Without `grid_size` each sample's grid is
    inferred from its number of valid tokens n: square n -> no prefix; square n - 1 -> one prefix (CLS) token.
    """
    idx = mask.long().cumsum(1) - 1  # [B, T] index among valid tokens
    n = mask.sum(1)  # [B]
    if grid_size is not None:
        h, w = grid_size
        prefix = n - h * w if num_prefix_tokens is None else torch.full_like(n, num_prefix_tokens)
        width = torch.full_like(n, w)
        bad = (prefix < 0) | (n - prefix > h * w)
        if bad.any():
            raise ValueError(f"rope_2d: grid_size {h}x{w} (+{num_prefix_tokens} prefix tokens) does not match "
                             f"{n[bad].tolist()} valid tokens")
    else:
        if num_prefix_tokens is not None:
            prefix = torch.full_like(n, num_prefix_tokens)
        else:
            side = n.float().sqrt().round().long()
            prefix = (side * side != n).long()  # a square count has no prefix, otherwise one CLS token
        width = (n - prefix).clamp_min(0).float().sqrt().round().long()
        bad = width * width != n - prefix
        if bad.any():
            raise ValueError(f"rope_2d: cannot infer a square grid from {n[bad].tolist()} valid tokens "
                             f"(num_prefix_tokens={num_prefix_tokens}); pass grid_size=[rows, cols]")
    pos = idx - prefix[:, None]  # [B, T]; negative for prefix tokens
    on_grid = mask & (pos >= 0)
    pos = pos.clamp_min(0)
    w = width.clamp_min(1)[:, None]
    rows = torch.where(on_grid, pos // w + 1, 0)
    cols = torch.where(on_grid, pos % w + 1, 0)
    return rows, cols


__all__ = ["Attention", "FeedForward", "SelfAttentionBlock", "apply_rope", "grid_positions", "rope_2d"]
