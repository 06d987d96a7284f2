"""`ModalityAdapter`: a frozen encoder (by reference) plus trainable projectors (the on-disk layout is in
`anyalign.adapter`'s docstring)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import to_dict
from ..encoders import Encoder, EncoderOutput, masked_mean
from ..encoders.spec import EncoderSpec
from ..io import load_weights, save_weights, write_json
from ..projectors import Projector, ProjectorOutput
from ..projectors.base import projector_from_spec
from ..projectors.heard import reads_transcript
from ..projectors.shared import SHARED_DIR, load_shared_projector, save_shared_projector
from ..version import FORMAT_VERSION, __version__
from .config import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, read_adapter_config, resolve_adapter
from .portable import import_plugins, portable_fields, push_adapter_folder

logger = logging.getLogger(__name__)


HEAD_ATTRS = {"embed_projector": "embed_head", "llm_projector": "llm_head"}  # config key -> module attribute


def _build_head(spec: dict[str, Any] | None, in_dim: int, out_dim: int | None) -> Projector | None:
    if spec is None or out_dim is None:
        return None
    return projector_from_spec(spec, in_dim=in_dim, out_dim=out_dim)


class ModalityAdapter(nn.Module):
    """Encoder features -> (a) an L2-normalised shared-space embedding and/or (b) LLM soft tokens."""

    def __init__(self, config: AdapterConfig, encoder: Encoder | None = None, *,
                 shared_heads: dict[str, Projector] | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        shared_heads = dict(shared_heads or {})
        if set(config.shared) != set(shared_heads):
            raise ValueError(f"{config.modality}: shared heads {sorted(config.shared)} need their projector "
                             f"instances (got {sorted(shared_heads)}); load saved adapters with from_pretrained")
        self.embed_head = shared_heads.get("embed_projector") or _build_head(config.embed_projector, config.in_dim,
                                                                             config.embed_dim)
        self.llm_head = shared_heads.get("llm_projector") or _build_head(config.llm_projector, config.in_dim,
                                                                         config.llm_dim)
        for head in (self.embed_head, self.llm_head):
            if hasattr(head, "bind_space"):  # heads that read the space's other side (projectors/ctc.py)
                head.bind_space(config.space)
        if reads_transcript(self.llm_head) and self.words_head is None:
            raise ValueError(f"{config.modality}: llm_projector 'heard' hands the LLM what the words head heard; "
                             f"set embed_projector: {{name: ctc}}")
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

    @property
    def words_head(self) -> Projector | None:
        """The CTC words head (`projectors/ctc.py`) when the shared-space head is one, else None."""
        return self.embed_head if hasattr(self.embed_head, "ctc_loss") else None

    @torch.no_grad()
    def transcribe(self, feats: EncoderOutput) -> list[str]:
        """What the words head heard in each clip (spelled with its `vocabulary` word list when one is set)."""
        if self.words_head is None:
            raise RuntimeError(f"{self.modality} adapter has no words head (embed_projector: ctc) to transcribe")
        return self.words_head.transcribe(*self._features(feats))

    @torch.no_grad()
    def embed_inputs(self, inputs: Sequence[Any]) -> torch.Tensor:
        """Raw inputs -> shared-space embeddings (inference)."""
        return self.embed(self.encode(inputs))

    # --- persistence --------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights an adapter file holds: projectors, plus the encoder when `train_encoder`."""
        skip = ("encoder.", *(f"{HEAD_ATTRS[key]}." for key in self.config.shared))  # shared heads: saved apart
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}
        if self.config.train_encoder and self.encoder is not None:
            state.update({f"encoder.{k}": v for k, v in self.encoder.trained_state_dict().items()})
        return state

    def save_pretrained(self, save_directory: str | os.PathLike, *, is_main_process: bool = True,
                        shared_saved: dict[str, dict[str, Any]] | None = None) -> Path:
        """Write `anyalign_adapter.json` + `anyalign_adapter.safetensors` into `save_directory`; a shared head is
        written once into `../_shared/<name>/` (`shared_saved`: records of those already written there)."""
        path = Path(save_directory)
        if not is_main_process:
            return path
        path.mkdir(parents=True, exist_ok=True)
        save_weights(path / WEIGHTS_NAME, self.trainable_state_dict(),
                     metadata={"format": "anyalign-adapter", "format_version": str(FORMAT_VERSION)})
        config = {**to_dict(self.config), **portable_fields(self.config, path)}
        for key, ref in self.config.shared.items():
            head, where = getattr(self, HEAD_ATTRS[key]), path.parent / SHARED_DIR / ref["name"]
            saved = (shared_saved or {}).get(ref["name"])
            if saved is None:
                saved = save_shared_projector(where, ref["name"], head, [self.modality])
            config["shared"][key] = {**saved, "path": os.path.relpath(where, path)}
            config[key] = {k: v for k, v in head.spec().items() if k not in ("in_dim", "out_dim")}
        write_json(path / CONFIG_NAME, {**config, "format_version": FORMAT_VERSION,
                                        "anyalign_version": __version__})  # written in the current layout
        return path

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        revision: str | None = None,
        load_encoder: bool = True,
        encoder_pretrained: str | None = None,
        is_trainable: bool = False,
        device: str | torch.device | None = None,
        autocast: str | None = None,
    ) -> ModalityAdapter:
        """Load a saved adapter (a folder, or a Hub repo `org/name[@rev]`); the frozen encoder is rebuilt from its
        recorded name and weights, importing the plugin module that provides it when one is recorded.

        Args:
            revision: Hub revision (branch, tag or commit) to pin; also written `org/name@rev`.
            load_encoder: also build the encoder (skip it when working from cached features).
            encoder_pretrained: override the recorded encoder weights source (e.g. a local copy).
            is_trainable: leave projector weights trainable (default: frozen, eval mode).
        """
        path = resolve_adapter(path, revision=revision)
        config = read_adapter_config(path)
        encoder = None
        if load_encoder:
            import_plugins(config, path)
            spec = config.encoder if autocast is None else config.encoder.replace(autocast=autocast)
            try:
                encoder = spec.build(pretrained=encoder_pretrained, frozen=not (is_trainable and config.train_encoder))
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{path}: {e} (or pass encoder_pretrained=PATH)") from None
        # shared projectors: one folder beside the adapters, checked by hash
        shared = {key: load_shared_projector(path / ref["path"], sha256=ref.get("sha256"))
                  for key, ref in config.shared.items()}
        adapter = cls(config, encoder, shared_heads=shared)
        state = load_weights(path / WEIGHTS_NAME)
        if not load_encoder:
            state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        missing, unexpected = adapter.load_state_dict(state, strict=False)
        loaded_apart = ("encoder.", *(f"{HEAD_ATTRS[key]}." for key in config.shared))  # rebuilt / shared part
        missing = [k for k in missing if not k.startswith(loaded_apart)]
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


    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None, branch: str | None = None,
                    commit_message: str = "Upload anyalign adapter", evaluation: dict[str, Any] | None = None,
                    recipe: dict[str, Any] | None = None) -> str:
        """Save this adapter with a model card (`evaluation`: measured numbers for it) and upload it to the Hub repo
        `repo_id` (created if needed); returns the commit URL. A saved folder: `push_adapter_folder`."""
        with tempfile.TemporaryDirectory() as tmp:
            return push_adapter_folder(self.save_pretrained(Path(tmp) / "adapter"), repo_id, private=private,
                                       token=token, branch=branch, commit_message=commit_message,
                                       evaluation=evaluation, recipe=recipe)


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


__all__ = ["HEAD_ATTRS", "ModalityAdapter", "build_adapter"]
