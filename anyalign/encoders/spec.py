"""`EncoderSpec`: the one spelling of "which frozen encoder": registry name, weights source, options, autocast.

Recipes, saved adapters, feature manifests, indexes and every CLI command that picks an encoder hold one and call
`build()`; its JSON form is `{"name", "pretrained", "options", "autocast"}` (a bare string is a name). Weights are held
portably (`anyalign.hub`): an asset as its Hub id, a user's path absolute, an artifact's own weights as `./path`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ConfigError, parse_yaml
from ..config import from_dict as config_from_dict
from ..fingerprint import source_fingerprint
from ..hub import local_source, portable_source, rebase_source
from .autocast import AUTOCAST_NAMES, resolve_autocast
from .base import Encoder
from .registry import ENCODERS, check_device, check_encoder_options, encoder_class, encoder_info, encoder_options

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSpec:
    """A frozen encoder by reference: rebuilt with `build()`, compared and cached by `key()`."""

    name: str
    pretrained: str | None = None  # hub id, library tag, or local file/folder (stored absolute)
    options: dict[str, Any] = field(default_factory=dict)  # the family's declared options (checked when loaded)
    autocast: str | None = None  # None/"fp32": full precision; "bf16"; "auto": bf16 only where it is faster

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"encoder: expected a registered encoder name, got {self.name!r}")
        if self.pretrained is not None and not isinstance(self.pretrained, str):
            raise ConfigError(f"encoder {self.name!r}: pretrained must be a string, got {self.pretrained!r}")
        if not isinstance(self.options, dict):
            raise ConfigError(f"encoder {self.name!r}: options must be a mapping, got {self.options!r}")
        if self.autocast is not None and str(self.autocast).lower() not in AUTOCAST_NAMES:
            raise ConfigError(f"encoder {self.name!r}: autocast={self.autocast!r}; expected one of auto, bf16, fp32")
        if self.pretrained:  # one spelling per weights: an asset copy is its Hub id, a user's path is absolute
            object.__setattr__(self, "pretrained", portable_source(self.pretrained))

    # --- forms ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON form (every key present, so files are self-describing)."""
        return {"name": self.name, "pretrained": self.pretrained, "options": dict(self.options),
                "autocast": self.autocast}

    def portable(self, base: str | os.PathLike | None = None) -> EncoderSpec:
        """This spec as an artifact at `base` records it: weights inside `base` as `./path` (see `anyalign.hub`)."""
        return self if base is None else self.replace(pretrained=portable_source(self.pretrained, base))

    @classmethod
    def from_dict(cls, data: str | dict[str, Any] | EncoderSpec, *, source: str = "encoder",
                  base: str | os.PathLike | None = None) -> EncoderSpec:
        """Read the JSON/YAML form (a mapping, or a bare name); unknown keys are an error naming `source`.
        `base`: the artifact folder that `./path` weights are relative to."""
        if isinstance(data, EncoderSpec):
            return data
        if isinstance(data, str):
            return cls(data)
        if base is not None and isinstance(data, dict) and isinstance(data.get("pretrained"), str):
            data = {**data, "pretrained": rebase_source(data["pretrained"], base)}
        if isinstance(data, dict) and "name" not in data:
            raise ConfigError(f"{source}: an encoder needs a 'name' (see `anyalign encoders`)")
        return config_from_dict(cls, data, source=source)  # unknown keys, types and __post_init__ checks named

    @classmethod
    def of(cls, encoder: Any) -> EncoderSpec:
        """The spec an encoder instance was created from by `create_encoder` (its name alone otherwise)."""
        return getattr(encoder, "spec", None) or cls(type(encoder).__name__)

    __from_config__ = from_dict  # lets `anyalign.config.from_dict` read a recipe field typed EncoderSpec

    @classmethod
    def from_cli(cls, name: str, pretrained: str | None = None, sets: Sequence[str] | None = None,
                 autocast: str | None = None) -> EncoderSpec:
        """`--encoder NAME --pretrained P --set key=value ... --autocast A`, checked against the encoder's options."""
        options: dict[str, Any] = {}
        for item in sets or []:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set {item!r}: expected key=value")
            options[key.strip()] = parse_yaml(raw, f"value {raw!r}")
        return cls(name, pretrained, options, autocast).checked("--set")

    # --- checks and building -----------------------------------------------------------------------------
    def checked(self, source: str = "encoder") -> EncoderSpec:
        """This spec with its name known and its options checked (and typed) against the family's declaration."""
        encoder_info(self.name)  # unknown names: an error listing the registered ones
        options = check_encoder_options(self.name, dict(self.options), source=source)
        return EncoderSpec(self.name, self.pretrained, options, self.autocast)

    @property
    def modality(self) -> str:
        """The modality this encoder reads (static registry facts; no weights are loaded)."""
        return encoder_info(self.name).modality

    def build(self, *, device: str | torch.device | None = None, frozen: bool = True,
              pretrained: str | None = None) -> Any:
        """Create the encoder (`pretrained` overrides the recorded source, e.g. a local copy of hub weights)."""
        source = local_source(pretrained or self.pretrained, what=f"encoder {self.name!r}")
        return create_encoder(self.name, pretrained=source, device=device,
                              autocast=self.autocast, frozen=frozen, **self.options)

    def partner(self, modality: str) -> EncoderSpec | None:
        """The encoder that embeds `modality` into this encoder's space (itself for its own modality), as the
        family declares it (`Encoder.partner_spec`: CLIP/CLAP's other tower, a label bridge's text encoder)."""
        if self.modality == modality:
            return self
        return (encoder_class(self.name) or Encoder).partner_spec(self, modality)

    def replace(self, **changes: Any) -> EncoderSpec:
        """A copy with some fields changed."""
        return EncoderSpec(**{**self.to_dict(), **changes})

    # --- identity ----------------------------------------------------------------------------------------------
    def key(self) -> str:
        """A canonical string: equal keys build the same encoder (autocast excluded: it does not change the space)."""
        return json.dumps({"name": self.name, "pretrained": self.pretrained, "options": self.options},
                          sort_keys=True, default=str)

    def fingerprint(self) -> str | None:
        """Like `key()` but also changes when local weight files change; None for random weights (never cache)."""
        if self.pretrained is None:  # random weights, or a library default that cannot be identified
            return None
        try:  # the files behind the weights (a Hub id's local asset copy included)
            local = local_source(self.pretrained)
        except FileNotFoundError:
            local = self.pretrained
        weights = source_fingerprint(local)
        return hashlib.sha1(f"{self.key()}|{weights}".encode()).hexdigest()

    def describe(self) -> str:
        """One line for listings and messages."""
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}" + (f" @ {self.pretrained}" if self.pretrained else "") + (f" ({opts})" if opts else "")


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
    enc.spec = EncoderSpec(name, pretrained, dict(overrides), autocast if isinstance(autocast, str) else None)
    if device is not None:
        enc = enc.to(device)
    enc.autocast_dtype = resolve_autocast(autocast, enc.device)  # "auto": bf16 only where this machine is faster
    if frozen:
        enc.freeze()
    return enc


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


__all__ = ["EncoderSpec", "create_encoder"]
