"""`ModalityAdapter`: a frozen encoder (by reference) plus trainable projectors, saved like a peft adapter.

On disk a saved adapter is a folder with two files:
`anyalign_adapter.json` (the `AdapterConfig`: the frozen encoder's `EncoderSpec`, the projector heads, and the
space it was aligned to: the anchor encoders' specs, and the LLM for soft tokens) and
`anyalign_adapter.safetensors` (only the trainable weights: projectors, and the encoder only when it was
trained, e.g. an IMU encoder learned from scratch). The frozen encoder is rebuilt from its spec, never saved.
Like peft's `base_model_name_or_path`, the recorded space means downstream commands (search, classify) find
the other side of the space from the adapter itself. Format v1 files (encoder as name + source + kwargs, no
space) are upgraded when read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import read_saved, to_dict
from .encoders import Encoder, EncoderOutput, masked_mean
from .encoders.spec import EncoderSpec
from .io import load_weights, save_weights, write_json
from .projectors import Projector, ProjectorOutput, create_projector
from .version import FORMAT_VERSION, __version__

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


def _build_head(spec: dict[str, Any] | None, in_dim: int, out_dim: int | None) -> Projector | None:
    if spec is None or out_dim is None:
        return None
    opts = {k: v for k, v in spec.items() if k not in ("name", "in_dim", "out_dim")}
    return create_projector(spec["name"], in_dim=in_dim, out_dim=out_dim, **opts)


class ModalityAdapter(nn.Module):
    """Encoder features -> (a) an L2-normalised shared-space embedding and/or (b) LLM soft tokens."""

    def __init__(self, config: AdapterConfig, encoder: Encoder | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.embed_head = _build_head(config.embed_projector, config.in_dim, config.embed_dim)
        self.llm_head = _build_head(config.llm_projector, config.in_dim, config.llm_dim)
        if config.embed_dim is not None and self.embed_head is None and config.embed_dim != config.in_dim:
            raise ValueError(f"identity shared-space head needs embed_dim == in_dim ({config.in_dim}), "
                             f"got embed_dim={config.embed_dim}; add an embed_projector")

    @property
    def modality(self) -> str:
        return self.config.modality

    # --- forward paths --------------------------------------------------------------------------------
    def encode(self, inputs: Sequence[Any]) -> EncoderOutput:
        """Run the (frozen) encoder on raw inputs."""
        if self.encoder is None:
            raise RuntimeError(f"{self.modality} adapter has no encoder loaded; pass features or load_encoder=True")
        return self.encoder(inputs)

    def _features(self, feats: EncoderOutput) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.feature == "pooled":
            return feats.pooled[:, None, :], torch.ones(feats.pooled.shape[0], 1, dtype=torch.bool,
                                                         device=feats.pooled.device)
        return feats.tokens, feats.mask

    def embed_output(self, feats: EncoderOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Shared-space embeddings `[B, E]` (L2-normalised) and the projector's auxiliary losses."""
        if self.config.embed_dim is None:
            raise RuntimeError(f"{self.modality} adapter has no shared-space head (embed_dim is None)")
        if self.embed_head is None:
            return F.normalize(feats.pooled.float(), dim=-1), {}
        tokens, mask = self._features(feats)
        out = self.embed_head(tokens, mask, modality=self.modality)
        return F.normalize(masked_mean(out.tokens, out.mask), dim=-1), out.losses

    def embed(self, feats: EncoderOutput) -> torch.Tensor:
        """Shared-space embeddings `[B, E]`, L2-normalised."""
        return self.embed_output(feats)[0]

    def soft_tokens(self, feats: EncoderOutput) -> ProjectorOutput:
        """LLM soft tokens `[B, N, D_llm]` with mask (or discrete codes for the `rvq` projector)."""
        if self.llm_head is None:
            raise RuntimeError(f"{self.modality} adapter has no LLM head (llm_dim is None)")
        tokens, mask = self._features(feats)
        return self.llm_head(tokens, mask, modality=self.modality)

    @torch.no_grad()
    def embed_inputs(self, inputs: Sequence[Any]) -> torch.Tensor:
        """Raw inputs -> shared-space embeddings (inference)."""
        return self.embed(self.encode(inputs))

    # --- persistence --------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights an adapter file holds: projectors, plus the encoder when `train_encoder`."""
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}
        if self.config.train_encoder and self.encoder is not None:
            state.update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})
        return state

    def save_pretrained(self, save_directory: str | os.PathLike, *, is_main_process: bool = True) -> Path:
        """Write `anyalign_adapter.json` + `anyalign_adapter.safetensors` into `save_directory`."""
        path = Path(save_directory)
        if not is_main_process:
            return path
        path.mkdir(parents=True, exist_ok=True)
        save_weights(path / WEIGHTS_NAME, self.trainable_state_dict(),
                     metadata={"format": "anyalign-adapter", "format_version": str(FORMAT_VERSION)})
        write_json(path / CONFIG_NAME, {**to_dict(self.config), "format_version": FORMAT_VERSION,
                                        "anyalign_version": __version__})  # written in the current layout
        return path

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        load_encoder: bool = True,
        encoder_pretrained: str | None = None,
        is_trainable: bool = False,
        device: str | torch.device | None = None,
        autocast: str | None = None,
    ) -> ModalityAdapter:
        """Load a saved adapter; the frozen encoder is rebuilt from its recorded name and source.

        Args:
            load_encoder: also build the encoder (skip it when working from cached features).
            encoder_pretrained: override the recorded encoder weights source (e.g. a local copy).
            is_trainable: leave projector weights trainable (default: frozen, eval mode).
        """
        path = Path(path)
        config = read_adapter_config(path)
        encoder = None
        if load_encoder:
            spec = config.encoder if autocast is None else config.encoder.replace(autocast=autocast)
            encoder = spec.build(pretrained=encoder_pretrained, frozen=not (is_trainable and config.train_encoder))
        adapter = cls(config, encoder)
        state = load_weights(path / WEIGHTS_NAME)
        if not load_encoder:
            state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        missing, unexpected = adapter.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("encoder.")]
        if missing or unexpected:
            raise ValueError(f"{path / WEIGHTS_NAME}: weights do not match the config "
                             f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})")
        if device is not None:
            adapter.to(device)
        if not is_trainable:
            adapter.requires_grad_(False).eval()
        elif encoder is not None and not config.train_encoder:
            encoder.freeze()
        return adapter


def read_adapter_config(path: str | os.PathLike) -> AdapterConfig:
    """The config of a saved adapter folder (any format version), without building anything."""
    return read_saved(AdapterConfig, Path(path) / CONFIG_NAME, what="adapter", upgrade=upgrade_config)


def build_adapter(
    modality: str,
    encoder: Encoder | EncoderSpec | str,
    *,
    feature: Literal["tokens", "pooled"] = "tokens",
    embed_dim: int | None = None,
    embed_projector: dict[str, Any] | None = None,
    llm_dim: int | None = None,
    llm_projector: dict[str, Any] | None = None,
    train_encoder: bool = False,
    space: dict[str, EncoderSpec] | None = None,
    llm: dict[str, Any] | None = None,
) -> ModalityAdapter:
    """Create a fresh adapter around an encoder: an `EncoderSpec` (or registry name) built here, or an instance
    (its spec is `EncoderSpec.of(encoder)`). `space`: the anchor encoders it will be aligned to."""
    if isinstance(encoder, (str, EncoderSpec)):
        spec = EncoderSpec.from_dict(encoder).checked("encoder")
        encoder = spec.build(frozen=not train_encoder)
    else:
        spec = EncoderSpec.of(encoder)
    in_dim = encoder.pooled_dim if feature == "pooled" else encoder.token_dim
    config = AdapterConfig(modality=modality, encoder=spec, in_dim=in_dim, feature=feature, embed_dim=embed_dim,
                           embed_projector=embed_projector, llm_dim=llm_dim, llm_projector=llm_projector,
                           train_encoder=train_encoder, space=dict(space or {}), llm=llm)
    if train_encoder:
        encoder.unfreeze()
    return ModalityAdapter(config, encoder)


__all__ = ["AdapterConfig", "ModalityAdapter", "build_adapter", "read_adapter_config", "upgrade_config", "CONFIG_NAME",
           "WEIGHTS_NAME"]
