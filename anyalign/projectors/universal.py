"""OneLLM's universal projection: shared projection experts, per-modality routers and modality tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..encoders.base import masked_mean
from .attention import SelfAttentionBlock
from .base import Projector, ProjectorOutput, full_mask, register_projector

Router = Literal["token", "static"]


class _Expert(nn.Module):
    """One projection expert: `depth` pre-norm transformer blocks over [modality tokens; input tokens]."""

    def __init__(self, dim: int, depth: int, heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(SelfAttentionBlock(dim, heads, ff_mult=ff_mult, dropout=dropout)
                                    for _ in range(depth))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return x


@dataclass
class UniversalOptions:
    """Options of the "universal" projector."""

    modalities: list[str] = field(metadata={"help": "modality names sharing the experts"})
    in_dims: dict[str, int] | None = field(default=None, metadata={"help": "input width per modality (or in_dim)"})
    num_experts: int = field(default=3, metadata={"help": "shared projection experts"})
    num_modality_tokens: int = field(default=30, metadata={"help": "learned tokens per modality = output tokens"})
    dim: int = field(default=256, metadata={"help": "internal width"})
    expert_depth: int = field(default=1, metadata={"help": "transformer blocks per expert"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    ff_mult: int = field(default=4, metadata={"help": "MLP width multiplier"})
    router: Router = field(default="token", metadata={"help": "token (content-dependent) or static expert weights"})
    dropout: float = field(default=0.0, metadata={"help": "attention and MLP dropout"})

    def __post_init__(self) -> None:
        m = self.modalities
        if isinstance(m, str) or not m:
            raise ValueError(f"universal: modalities must be a non-empty list of names, got {m!r}")
        if len(set(m)) != len(m):
            raise ValueError(f"universal: duplicate names in modalities {list(m)}")
        if self.router not in ("token", "static"):
            raise ValueError(f"universal: router must be 'token' or 'static', got {self.router!r}")
        if self.num_experts < 1 or self.num_modality_tokens < 1 or self.expert_depth < 1:
            raise ValueError("universal: num_experts, num_modality_tokens and expert_depth must be >= 1")
        unknown = sorted(set(self.in_dims or {}) - set(m))
        if unknown:
            raise ValueError(f"universal: in_dims names {unknown}, which are not in modalities {list(m)}")


@register_projector("universal", options=UniversalOptions)
class UniversalProjector(Projector):
    """Universal projection module (OneLLM, Han et al., 2024): shared experts mixed by per-modality routers.

    Each modality has its own input projection, `num_modality_tokens` learned tokens and router; the experts
    (transformer stacks over [modality tokens; input tokens]) are shared, and their outputs at the modality-token
    positions, mixed by the router (`"token"`: from the content; `"static"`: one learned mix), are the output.
    `forward(..., modality=m)` picks the modality; `add_modality` adds one later (recorded in `spec()`).
    """

    def __init__(self, in_dim: int, out_dim: int, opts: UniversalOptions | None = None, **options: Any) -> None:
        super().__init__(in_dim, out_dim, opts, **options)
        o = self.opts
        self.config.update(modalities=[], in_dims={})  # filled in by add_modality
        self.experts = nn.ModuleList(_Expert(o.dim, o.expert_depth, o.heads, o.ff_mult, o.dropout)
                                     for _ in range(o.num_experts))
        self.inputs = nn.ModuleDict()
        self.modality_tokens = nn.ParameterDict()
        self.routers = nn.ModuleDict() if o.router == "token" else nn.ParameterDict()
        self.norm_out = nn.LayerNorm(o.dim)
        self.proj_out = nn.Linear(o.dim, out_dim)
        for m in o.modalities:
            self.add_modality(m, in_dim=(o.in_dims or {}).get(m))

    @property
    def modalities(self) -> list[str]:
        return list(self.config["modalities"])

    def add_modality(self, name: str, *, in_dim: int | None = None) -> None:
        """Add a modality: its input projection, modality tokens and router; the experts stay shared."""
        if not name or not isinstance(name, str):
            raise ValueError(f"universal: a modality name must be a non-empty string, got {name!r}")
        if name in self.inputs:
            raise ValueError(f"universal: modality {name!r} already exists ({self.modalities})")
        width, o = in_dim or self.in_dim, self.opts
        ref = self.proj_out.weight
        self.inputs[name] = nn.Linear(width, o.dim).to(ref.device, ref.dtype)
        self.modality_tokens[name] = nn.Parameter(
            torch.randn(o.num_modality_tokens, o.dim, device=ref.device, dtype=ref.dtype) * 0.02)
        if o.router == "token":
            self.routers[name] = nn.Sequential(nn.LayerNorm(o.dim), nn.Linear(o.dim, o.dim), nn.GELU(),
                                               nn.Linear(o.dim, o.num_experts)).to(ref.device, ref.dtype)
        else:
            self.routers[name] = nn.Parameter(torch.zeros(o.num_experts, device=ref.device, dtype=ref.dtype))
        self.config["modalities"].append(name)
        if width != self.in_dim:
            self.config["in_dims"][name] = width

    def _resolve(self, modality: str | None) -> str:
        if modality is None:
            if len(self.inputs) == 1:
                return next(iter(self.inputs))
            raise ValueError(f"universal projector: pass modality=... (one of {self.modalities})")
        if modality not in self.inputs:
            raise ValueError(f"universal projector: unknown modality {modality!r}; known modalities: "
                             f"{', '.join(self.modalities)} (add one with add_modality)")
        return modality

    def router_weights(self, x: torch.Tensor, mask: torch.Tensor, modality: str) -> torch.Tensor:
        """Soft expert weights `[B, N, E]` for the N modality tokens, from projected input tokens `x` [B, T, dim]."""
        b = x.shape[0]
        if self.opts.router == "static":
            return self.routers[modality].softmax(-1).expand(b, self.opts.num_modality_tokens, -1)
        summary = masked_mean(x, mask)[:, None, :]  # [B, 1, dim]
        return self.routers[modality](self.modality_tokens[modality][None] + summary).softmax(-1)  # [B, N, E]

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                modality: str | None = None) -> ProjectorOutput:
        name = self._resolve(modality)
        mask = full_mask(tokens, mask)  # [B, T]
        width = self.inputs[name].in_features
        if tokens.shape[-1] != width:
            raise ValueError(f"universal projector: modality {name!r} expects tokens of width {width}, "
                             f"got {tuple(tokens.shape)}")
        b, n = tokens.shape[0], self.opts.num_modality_tokens
        x = self.inputs[name](tokens)  # [B, T, dim]
        seq = torch.cat([self.modality_tokens[name].expand(b, -1, -1), x], dim=1)  # [B, N + T, dim]
        seq_mask = torch.cat([mask.new_ones(b, n), mask], dim=1)
        weights = self.router_weights(x, mask, name)  # [B, N, E]
        mixed = sum(weights[..., e, None] * expert(seq, seq_mask)[:, :n] for e, expert in enumerate(self.experts))
        out = self.proj_out(self.norm_out(mixed))  # [B, N, out_dim]
        return ProjectorOutput(out, mask.new_ones(b, n))
