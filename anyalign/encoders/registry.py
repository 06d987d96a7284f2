"""Encoder registry and the `create_encoder` factory (timm / open_clip style)."""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..options import check_options, options_from_signature
from ..registry import Registry
from .autocast import resolve_autocast
from .base import Encoder

logger = logging.getLogger(__name__)

#: every module of this package that registers with `@register_encoder("name", ...)` is found by that line alone
ENCODERS: Registry[Encoder] = Registry("encoder", package=__package__, decorator="register_encoder")


@dataclass(frozen=True)
class EncoderInfo:
    """Static facts about a registered encoder's default variant (for `anyalign encoders`)."""

    name: str
    modality: str
    token_dim: int
    pooled_dim: int
    input_spec: str
    default_model: str = ""


ENCODER_INFO: dict[str, EncoderInfo] = {}
ENCODER_OPTIONS: dict[str, type] = {}  # name -> options dataclass (declared, or derived from the factory)


def register_encoder(
    name: str, *, modality: str, token_dim: int, pooled_dim: int, input_spec: str, default_model: str = "",
    options: type | None = None,
) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Register an encoder factory with its listing facts. With `options` (a dataclass: fields with defaults and
    `metadata={"help": ...}`) the factory is `fn(pretrained, opts, **extra) -> Encoder` and gets its options whole;
    without, it is `fn(pretrained=None, **options)` and a dataclass is derived from its keywords, so every encoder's
    options are checked."""
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"register_encoder({name!r}): options must be a dataclass, got {options!r}")

    def wrap(fn: Callable[..., Encoder]) -> Callable[..., Encoder]:
        ENCODER_INFO[name] = EncoderInfo(name, modality, token_dim, pooled_dim, input_spec, default_model)
        registered = ENCODERS.register(name)(fn)
        ENCODER_OPTIONS[name] = options or options_from_signature(fn, name=f"{fn.__name__}_options")
        return registered

    return wrap


def encoder_options(name: str) -> type:
    """The options dataclass of encoder `name` (declared at registration or derived from its factory)."""
    fn = ENCODERS.get(name)  # raises a clear error for unknown names
    if name not in ENCODER_OPTIONS:  # registered straight through ENCODERS.register
        ENCODER_OPTIONS[name] = options_from_signature(fn, name=f"{getattr(fn, '__name__', name)}_options")
    return ENCODER_OPTIONS[name]


def check_encoder_options(name: str, options: dict[str, Any], *, source: str = "--set") -> dict[str, Any]:
    """`options` checked against encoder `name`'s options and coerced to their types (only the given keys); else a
    one-line `ConfigError` naming `source`, the encoder, the bad field and the valid options."""
    return check_options("encoder", name, encoder_options(name), options, source=source)


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, else a one-line error (torch's own lists twenty device types)."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device!s}: not a torch device; expected cpu, cuda, cuda:N or mps") from None


def create_encoder(
    name: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device | None = None,
    autocast: str | torch.dtype | None = None,
    frozen: bool = True,
    weights_dtype: str | torch.dtype | None = None,
    **overrides: Any,
) -> Encoder:
    """Build registered encoder `name` from `pretrained` (a local file/folder, a hub id or a library tag; None: random
    weights), frozen by default. `autocast`: "bf16", "fp16", "auto" or None (fp32) for `encode`; `weights_dtype`:
    float32 unless half is asked for on CUDA. `overrides` are the encoder's options (e.g. `model="ViT-B-32"`), checked
    against its options dataclass: an unknown or mistyped one is a `ConfigError`."""
    if device is not None and check_device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!s}: no CUDA GPU is available on this machine (use cpu)")
    overrides = check_encoder_options(name, overrides, source="options")
    fn, cls = ENCODERS.get(name), encoder_options(name)
    if getattr(cls, "derived", False):  # a factory registered without an options dataclass takes them as keywords
        enc = fn(pretrained=pretrained, **overrides)
    else:  # the declared dataclass is passed whole; keys it does not declare (its `extra_options`) go on as keywords
        own = {f.name for f in dataclasses.fields(cls)}
        enc = fn(pretrained, cls(**{k: v for k, v in overrides.items() if k in own}),
                 **{k: v for k, v in overrides.items() if k not in own})
    enc = _to_weights_dtype(enc, name, weights_dtype, device)
    from .spec import EncoderSpec  # spec.py builds through this module

    enc.spec = EncoderSpec(name, pretrained, dict(overrides), autocast if isinstance(autocast, str) else None)
    if device is not None:
        enc = enc.to(device)
    enc.autocast_dtype = resolve_autocast(autocast, enc.device)  # "auto": bf16 only where this machine is faster
    if frozen:
        enc.freeze()
    return enc


def encoder_class(name: str, *, declared_inputs: bool = False) -> type[Encoder] | None:
    """The class a registered encoder factory returns (from its annotation); None when unknown. With
    `declared_inputs`, only a class that declares its modality and file types at class level, which lets inputs
    be checked before any weights load."""
    try:
        cls = typing.get_type_hints(ENCODERS.get(name)).get("return")
    except Exception:  # noqa: BLE001 - unresolvable annotations: check after loading instead
        return None
    if not (isinstance(cls, type) and issubclass(cls, Encoder)):
        return None
    if declared_inputs and not (cls.modality and (cls.extensions or cls.modality == "text")):
        return None
    return cls


def list_encoders(modality: str | None = None) -> list[str]:
    """Registered encoder names, optionally only those of one modality."""
    names = ENCODERS.names()
    if modality is not None:
        names = [n for n in names if n in ENCODER_INFO and ENCODER_INFO[n].modality == modality]
    return names


def encoder_info(name: str) -> EncoderInfo:
    """Listing facts of a registered encoder."""
    ENCODERS.get(name)  # raises a clear error for unknown names
    return ENCODER_INFO[name]


def _to_weights_dtype(enc: Encoder, name: str, weights_dtype: str | torch.dtype | None,
                      device: str | torch.device | None) -> Encoder:
    """Cast floating parameters and buffers to one compute dtype (float32 unless half is asked for on CUDA)."""
    dtype = resolve_autocast(weights_dtype) or torch.float32
    if dtype != torch.float32 and torch.device(device or "cpu").type != "cuda":
        raise ValueError(f"encoder {name!r}: weights_dtype={weights_dtype!r} needs device='cuda'; on CPU weights "
                         f"stay float32 (use autocast='bf16' for speed)")
    found = {t.dtype for t in (*enc.parameters(), *enc.buffers()) if t.is_floating_point()}
    if found - {dtype}:
        logger.info("encoder %s: casting weights %s -> %s", name, sorted(map(str, found)), dtype)
        enc = enc.to(dtype)
    return enc

