"""The projector interface: encoder tokens `[B, T, D_in]` (+ mask) -> projected tokens `[B, N, D_out]` (+ mask),
pooled by the adapter into the shared space or spliced into a frozen LLM's `inputs_embeds` as soft tokens."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..options import check_options, options_from_signature
from ..registry import Registry


@dataclass
class ProjectorOutput:
    """Projected tokens, their mask, auxiliary losses (e.g. VQ commitment) and discrete codes if any."""

    tokens: torch.Tensor  # [B, N, D_out]
    mask: torch.Tensor  # [B, N] bool
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    codes: torch.Tensor | None = None  # [B, N, n_quantizers] for discrete projectors


class Projector(nn.Module):
    """Base class: `in_dim`, `out_dim` and the options, one dataclass (`options`, given whole or as keywords) read
    as `self.opts`; `self.config` (a JSON-able dict) is what `create_projector(name, in_dim, out_dim, **config)`
    rebuilds from. A projector without an options dataclass (a plugin) records its keywords as they come."""

    name: str = ""
    options: type | None = None  # the options dataclass, set by `register_projector(name, options=...)`
    #: False for heads whose output is not a function of their weights that gradients flow through (the CTC words
    #: head embeds its transcript as text); they train through their own task instead
    differentiable: bool = True

    def __init__(self, in_dim: int, out_dim: int, opts: Any = None, **config: Any) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"{type(self).__name__}: in_dim and out_dim must be positive, got {in_dim}, {out_dim}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        if self.options is not None:
            self.opts = opts if opts is not None else self.options(**config)  # validated in its __post_init__
            config = dataclasses.asdict(self.opts)
        self.config: dict[str, Any] = dict(config)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                modality: str | None = None) -> ProjectorOutput:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this projector: name, dims and options."""
        return {"name": self.name, "in_dim": self.in_dim, "out_dim": self.out_dim, **self.config}


#: every module of this package that registers with `@register_projector("name", ...)` is found by that line alone
PROJECTORS: Registry[Projector] = Registry("projector", package=__package__, decorator="register_projector")
PROJECTOR_OPTIONS: dict[str, type] = {}  # name -> options dataclass (declared, or derived from `__init__`)
_DIMS = ("in_dim", "out_dim")  # filled in by the adapter, not options


def register_projector(name: str, *, options: type | None = None) -> Callable[[type[Projector]], type[Projector]]:
    """Class decorator registering a projector under `name` with `options`, the dataclass it reads as `self.opts`
    (a field per option: default, `metadata={"help": ...}`, checks in `__post_init__`); without one (a plugin)
    the options are derived from the class's `__init__` keywords."""
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"register_projector({name!r}): options must be a dataclass, got {options!r}")

    def wrap(cls: type[Projector]) -> type[Projector]:
        cls.name = name
        if options is not None:
            cls.options = options
        registered = PROJECTORS.register(name)(cls)
        PROJECTOR_OPTIONS[name] = options or options_from_signature(cls, skip=_DIMS, name=f"{cls.__name__}Options")
        return registered

    return wrap


def projector_options(name: str) -> type:
    """The options dataclass of projector `name`."""
    cls = PROJECTORS.get(name)  # raises a clear error for unknown names
    if name not in PROJECTOR_OPTIONS:  # registered straight through PROJECTORS.register
        PROJECTOR_OPTIONS[name] = options_from_signature(cls, skip=_DIMS, name=f"{cls.__name__}Options")
    return PROJECTOR_OPTIONS[name]


def check_projector_options(name: str, options: dict[str, Any], *, source: str = "projector options"
                            ) -> dict[str, Any]:
    """`options` checked against projector `name`'s options and coerced to their types (only the given keys).

    Raises a one-line `ConfigError` naming `source`, the projector, the bad field and the valid options, e.g.
    `adapters.imu.embed_projector dept=2: projector 'mlp' has no option 'dept'; options: depth (int, default 2), ...`.
    """
    return check_options("projector", name, projector_options(name), options, source=source)


def create_projector(name: str, *, in_dim: int, out_dim: int, **config: Any) -> Projector:
    """Build a registered projector, e.g. `create_projector("perceiver", in_dim=768, out_dim=576, num_latents=32)`.

    `config` is checked against the projector's options first (`check_projector_options`).
    """
    config = check_projector_options(name, config)
    return PROJECTORS.get(name)(in_dim, out_dim, **config)


def spec_options(spec: dict[str, Any]) -> dict[str, Any]:
    """The options of a projector spec (a recipe's or a saved config's mapping), without its name and widths."""
    return {k: v for k, v in spec.items() if k not in ("name", "in_dim", "out_dim")}


def projector_from_spec(spec: dict[str, Any], *, in_dim: int | None = None, out_dim: int | None = None) -> Projector:
    """Build the projector a spec names; widths from the arguments, else from the spec (a saved projector)."""
    return create_projector(spec["name"], in_dim=int(spec["in_dim"] if in_dim is None else in_dim),
                            out_dim=int(spec["out_dim"] if out_dim is None else out_dim), **spec_options(spec))


def list_projectors() -> list[str]:
    """Registered projector names."""
    return PROJECTORS.names()


def full_mask(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Return `mask` or an all-valid `[B, T]` mask for `tokens`."""
    if mask is None:
        return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    return mask.bool()


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average groups of `stride` consecutive tokens, `[B, T, D]` -> `[B, ceil(T/stride), D]`: padded positions do
    not contribute, and a group with no valid token stays masked out."""
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
