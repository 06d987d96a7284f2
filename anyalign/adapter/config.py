"""What a saved adapter folder records (`AdapterConfig`), and reading it from a folder or the Hub."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import read_saved
from ..encoders.spec import EncoderSpec
from ..hub import rebase_source, resolve_artifact
from ..version import FORMAT_VERSION, __version__

logger = logging.getLogger(__name__)

CONFIG_NAME = "anyalign_adapter.json"
WEIGHTS_NAME = "anyalign_adapter.safetensors"


@dataclass
class AdapterConfig:
    """What an adapter is made of. Projector specs are `{"name": ..., **options}` (dims are filled in)."""

    modality: str
    encoder: EncoderSpec
    in_dim: int
    feature: Literal["tokens", "pooled"] = "tokens"  # which encoder output feeds the projectors
    embed_dim: int | None = None  # shared-space width; None = no shared-space head
    embed_projector: dict[str, Any] | None = None  # None with embed_dim set = identity on the pooled output
    llm_dim: int | None = None  # LLM hidden size; None = no LLM head
    llm_projector: dict[str, Any] | None = None
    train_encoder: bool = False  # the encoder's weights are trained and saved with the adapter
    space: dict[str, EncoderSpec] = field(default_factory=dict)  # anchors aligned to: modality -> encoder
    llm: dict[str, Any] | None = None  # the causal LM the soft tokens are for: {"name_or_path", "gguf_file"}
    # zero-shot use (align/calibration.py): {"seen_classes": [phrase], "label_text": {class: phrase},
    # "calibration": gamma or None, "calibration_source": {...where and how gamma was tuned}}
    zeroshot: dict[str, Any] | None = None
    #: heads that are a shared projector (projectors/shared.py): "embed_projector"/"llm_projector" ->
    #: {"name", "path" (from this folder), "sha256", "format_version"}; their weights live there, not here
    shared: dict[str, dict[str, Any]] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)  # modules outside anyalign that register its encoder/projectors
    format_version: int = FORMAT_VERSION
    anyalign_version: str = __version__

    def __post_init__(self) -> None:
        if isinstance(self.encoder, (str, dict)):
            self.encoder = EncoderSpec.from_dict(self.encoder, source="encoder")
        self.space = {m: EncoderSpec.from_dict(s, source=f"space.{m}") for m, s in (self.space or {}).items()}
        if self.feature not in ("tokens", "pooled"):
            raise ValueError(f"feature: expected 'tokens' or 'pooled', got {self.feature!r}")
        if self.embed_dim is None and self.llm_dim is None:
            raise ValueError("an adapter needs embed_dim (shared space) and/or llm_dim (LLM soft tokens)")
        if self.llm_dim is not None and not self.llm_projector:
            raise ValueError("llm_dim is set but llm_projector is missing (e.g. {'name': 'mlp'})")
        for key in ("embed_projector", "llm_projector"):
            spec = getattr(self, key)
            if spec is not None and "name" not in spec:
                raise ValueError(f"{key}: expected a mapping with a 'name' (e.g. {{'name': 'mlp'}}), got {spec!r}")


def upgrade_config(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A saved config of any earlier format in the current layout (v1: `encoder` name + `encoder_pretrained` +
    `encoder_kwargs`, no recorded space)."""
    version = int(data.get("format_version", 1))
    if version > FORMAT_VERSION:
        logger.warning("%s: written by a newer format (%s > %s)", source, version, FORMAT_VERSION)
    if version < 2 and not isinstance(data.get("encoder"), dict):
        data = dict(data)
        data["encoder"] = {"name": data.get("encoder"), "pretrained": data.pop("encoder_pretrained", None),
                           "options": data.pop("encoder_kwargs", None) or {}}
    return data


def resolve_adapter(path: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local adapter folder, or a Hub repo id (`org/name`, `org/name@rev`) downloaded once into the Hub cache."""
    return resolve_artifact(path, marker=CONFIG_NAME, what="adapter", revision=revision)


def read_adapter_config(path: str | os.PathLike, *, revision: str | None = None) -> AdapterConfig:
    """The config of a saved adapter folder or Hub repo (any format version), without building anything."""
    folder = resolve_adapter(path, revision=revision)
    return read_saved(AdapterConfig, folder / CONFIG_NAME, what="adapter",
                      upgrade=lambda data, source: _rebased(upgrade_config(data, source), folder))


def _rebased(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Weights recorded as `./path` (inside the adapter folder) made absolute for this folder's location."""
    data = dict(data)
    if isinstance(data.get("encoder"), dict):
        data["encoder"] = {**data["encoder"], "pretrained": rebase_source(data["encoder"].get("pretrained"), folder)}
    if isinstance(data.get("space"), dict):
        data["space"] = {m: {**s, "pretrained": rebase_source(s.get("pretrained"), folder)} if isinstance(s, dict)
                         else s for m, s in data["space"].items()}
    return data


__all__ = ["AdapterConfig", "CONFIG_NAME", "WEIGHTS_NAME", "read_adapter_config", "resolve_adapter",
           "upgrade_config"]
