"""Frame stacking + gated MLP: Ultravox's speech projector, which keeps word order at a lower frame rate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Projector, ProjectorOutput, full_mask, register_projector


@dataclass
class StackGatedOptions:
    """Options of the "stack_gated" projector."""

    stack: int = field(default=8, metadata={
        "help": "consecutive frames concatenated into one token (Whisper's 50 Hz / 8 = 6.25 tokens per second)"})
    hidden_dim: int | None = field(default=None, metadata={"help": "width of the gated hidden layer (None = 2 x "
                                                                    "out_dim)"})
    norm: bool = field(default=True, metadata={"help": "RMSNorm on the stacked input and on the output tokens"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the gated hidden layer"})

    def __post_init__(self) -> None:
        if self.stack < 1:
            raise ValueError(f"stack_gated projector: stack must be >= 1, got {self.stack}")


@register_projector("stack_gated", options=StackGatedOptions)
class StackGatedProjector(Projector):
    """Frame stacking then a SwiGLU MLP (Ultravox, Fixie.ai 2024; SwiGLU: Shazeer, 2020), per stacked token.

    Tokens `[B, T, D]` -> `[B, ceil(T/stack), stack*D]` (padded frames zeroed first, so they add nothing) ->
    RMSNorm -> `silu(x W_gate) * (x W_up)` -> `W_down` -> RMSNorm: `[B, ceil(T/stack), out_dim]`. A stacked
    token is valid when any of its frames is; order is kept, so an LLM reads the words in sequence.
    """

    def __init__(self, in_dim: int, out_dim: int, opts: StackGatedOptions | None = None, **options: Any) -> None:
        super().__init__(in_dim, out_dim, opts, **options)
        o = self.opts
        hidden, self.stack = o.hidden_dim or 2 * out_dim, o.stack
        self.norm_in = nn.RMSNorm(o.stack * in_dim) if o.norm else nn.Identity()
        self.gate_up = nn.Linear(o.stack * in_dim, 2 * hidden, bias=False)  # both halves in one matmul
        self.drop = nn.Dropout(o.dropout)
        self.down = nn.Linear(hidden, out_dim, bias=False)
        self.norm_out = nn.RMSNorm(out_dim) if o.norm else nn.Identity()

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                modality: str | None = None) -> ProjectorOutput:
        mask = full_mask(tokens, mask)
        b, t, d = tokens.shape
        pad = (-t) % self.stack
        x = tokens * mask.unsqueeze(-1).to(tokens.dtype)  # padded frames contribute zeros
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad))
        n = (t + pad) // self.stack
        x = x.reshape(b, n, self.stack * d)  # [B, N, stack*D]: frames of a group side by side, in order
        gate, up = self.gate_up(self.norm_in(x)).chunk(2, dim=-1)
        out = self.norm_out(self.down(self.drop(F.silu(gate) * up)))  # [B, N, out_dim]
        return ProjectorOutput(out, mask.reshape(b, n, self.stack).any(-1))
