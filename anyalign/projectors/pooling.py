"""Mask-aware token pooling shared by the simple projectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average groups of `stride` consecutive valid tokens: `[B, T, D]` -> `[B, ceil(T/stride), D]`.

    Padded positions do not contribute; a group with no valid token stays masked out.
    """
    if stride <= 1:
        return tokens, mask
    b, t, d = tokens.shape
    pad = (-t) % stride
    w = mask.to(tokens.dtype)
    if pad:
        tokens = F.pad(tokens, (0, 0, 0, pad))
        w = F.pad(w, (0, pad))
    g = (t + pad) // stride
    wsum = w.view(b, g, stride).sum(-1)  # [B, G]
    pooled = (tokens * w.unsqueeze(-1)).view(b, g, stride, d).sum(2) / wsum.clamp_min(1.0).unsqueeze(-1)
    return pooled, wsum > 0
