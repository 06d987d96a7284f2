"""Encoder registry: name -> factory, its listing facts and its options dataclass (`create_encoder`: `spec.py`)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..options import check_options, options_from_signature
from ..registry import Registry
from .base import Encoder

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


