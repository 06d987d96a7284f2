"""OpenCLIP towers as frozen encoders: "clip-image" and "clip-text".

Each keeps only its own tower. Tokens are a transformer block's outputs (final LayerNorm applied; `layer` picks the
block), pooled the L2-normalised CLIP embedding, so image and text share a space. `pretrained`: an open_clip tag, a hub
id, a local open_clip folder or a checkpoint file (full CLIP or one tower); `model`: an open_clip config name (those in
anyalign/model_configs/ included, e.g. "anyalign-tiny-vit") or a config .json path.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ..io import load_weights, resolve_pretrained
from .base import Encoder, EncoderOutput
from .image_io import IMAGE_INPUT_SPEC, ImageEncoder
from .registry import register_encoder

DEFAULT_CLIP_MODEL = "ViT-B-32"
MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"


@functools.cache
def register_model_configs() -> None:
    """Make the configs shipped with anyalign (e.g. "anyalign-tiny-vit") known to open_clip, once."""
    if MODEL_CONFIG_DIR.is_dir():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def _config_name(model: str) -> str:
    """A config name for open_clip; a `.json` path is registered with open_clip under its file stem."""
    if model.endswith(".json"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"clip model config {path}: file not found")
        open_clip.add_model_config(path)
        if open_clip.get_model_config(path.stem) is None:
            raise ValueError(f"clip model config {path}: expected keys embed_dim, vision_cfg and text_cfg")
        return path.stem
    return model


def build_clip(model: str, pretrained: str | None, tower: str, **kwargs: Any) -> tuple[nn.Module, Callable, str]:
    """`(clip_model, eval preprocess, tokenizer name)` from a config name and any `pretrained` source; `tower`
    ("image" | "text") is what a local checkpoint must hold."""
    register_model_configs()
    name = _config_name(model)
    arch, tag, file = name, None, None
    if pretrained:
        src = resolve_pretrained(pretrained)
        if src.kind == "hub":
            arch = f"hf-hub:{src.location}"
        elif src.kind == "dir":
            arch = f"local-dir:{src.location}"
        elif src.kind == "tag":
            tag = src.location
        else:
            file = src.location
    def quiet(record: logging.LogRecord) -> bool:  # open_clip warns of random weights that `file` replaces below
        return file is None or not str(record.msg).startswith("No pretrained weights loaded")

    logging.getLogger().addFilter(quiet)
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=tag, pretrained_text=False, **kwargs
        )
    except (RuntimeError, OSError, ValueError, TypeError) as e:
        raise ValueError(f"clip: cannot build model {arch!r} with pretrained={pretrained!r}: {e}") from None
    finally:
        logging.getLogger().removeFilter(quiet)
    if file is not None:
        _load_tower_checkpoint(clip, file, tower)
    return clip, preprocess, arch


def _in_tower(key: str, tower: str) -> bool:
    if tower == "image":
        return key.startswith("visual.")
    return not key.startswith("visual.") and key not in ("logit_scale", "logit_bias")


def _load_tower_checkpoint(clip: nn.Module, path: str, tower: str) -> None:
    """Load a full-CLIP or single-tower state dict; every weight of the needed tower must be present."""
    state = {k.removeprefix("module."): v for k, v in load_weights(path).items()}
    try:
        result = clip.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path}: weights do not fit this CLIP model ({e})") from None
    missing = [k for k in result.missing_keys if _in_tower(k, tower)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path}: not a checkpoint of this CLIP {tower} tower: missing {missing[:5]} "
            f"(of {len(missing)}), unexpected {result.unexpected_keys[:5]} (of {len(result.unexpected_keys)})"
        )


class CLIPImageEncoder(ImageEncoder):
    """CLIP vision tower: tokens `[B, 1 + h*w, width]` (class token first), pooled = normalised CLIP embedding."""

    partners, shared_options = {"text": "clip-text"}, ("model",)  # the text tower of the same model and weights

    def __init__(self, visual: nn.Module, preprocess: Callable, *, layer: int = -1) -> None:
        super().__init__()
        self.visual = visual
        self.transform = preprocess
        self.layer = layer
        self.pooled_dim = int(visual.output_dim)
        self.token_dim = _vision_width(visual)

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        out = self.visual.forward_intermediates(
            batch["pixels"], indices=[self.layer], normalize_intermediates=True, output_fmt="NCHW",
            output_extra_tokens=True,
        )
        tokens = out["image_intermediates"][-1].flatten(2).transpose(1, 2)  # [B, h*w, width]
        prefix = out.get("image_intermediates_prefix")
        if prefix:
            tokens = torch.cat([prefix[-1], tokens], dim=1)  # [B, 1 + h*w, width]
        pooled = F.normalize(out["image_features"].float(), dim=-1)  # [B, embed]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens, mask, pooled)


def _vision_width(visual: nn.Module) -> int:
    """Token width of an open_clip vision tower (ViT, timm trunk or modified ResNet)."""
    if hasattr(visual, "transformer"):
        return int(visual.transformer.width)
    if hasattr(visual, "trunk"):
        return int(visual.trunk.num_features)
    size = getattr(visual, "image_size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    with torch.no_grad():  # unknown tower type: measure it once
        out = visual.forward_intermediates(torch.zeros(1, 3, *size), indices=1, intermediates_only=True)
    return int(out["image_intermediates"][-1].shape[1])


class CLIPTextEncoder(Encoder):
    """CLIP text tower: tokens `[B, T, width]` up to the end-of-text token, pooled = normalised CLIP embedding."""

    modality = "text"
    input_spec = "text: one caption string per item"

    partners, shared_options = {"image": "clip-image"}, ("model",)

    def __init__(self, clip: nn.Module, tokenizer: Any, *, embed_dim: int, layer: int = -1) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.layer = layer
        self.pooled_dim = int(embed_dim)
        self.token_dim = _text_width(clip)

    def collate(self, items: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(list(items))  # [B, context_length], padded to the model's full context
        eot = getattr(self.tokenizer, "eot_token_id", None)
        if eot is not None:  # CLIP BPE pads with id 0, which is also a real token ("!"): count up to end-of-text
            has_eot = (ids == eot).any(-1)
            lengths = torch.where(has_eot, (ids == eot).int().argmax(-1) + 1, ids.shape[1])
        else:
            lengths = (ids != self.tokenizer.tokenizer.pad_token_id).sum(-1)
        return {"input_ids": ids, "lengths": lengths}

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        ids, lengths = batch["input_ids"], batch["lengths"]
        if hasattr(self._text_tower(), "forward_intermediates"):
            out = self.clip.forward_intermediates(
                text=ids, text_indices=[self.layer], normalize_intermediates=True, normalize=True
            )
            tokens, pooled = out["text_intermediates"][-1], out["text_features"]  # [B, L, width], [B, embed]
        else:  # e.g. a Hugging Face text tower: read the transformer's output with a hook during encode_text
            tokens, pooled = self._encode_with_hook(ids)
        t_max = int(lengths.max())
        tokens = tokens[:, :t_max]  # the rest of the context is padding for every row
        mask = torch.arange(t_max, device=ids.device)[None, :] < lengths[:, None]  # [B, T]
        return EncoderOutput(tokens, mask, F.normalize(pooled.float(), dim=-1))

    def _text_tower(self) -> nn.Module:
        return getattr(self.clip, "text", self.clip)

    def _encode_with_hook(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []

        def grab(_m: nn.Module, _inp: Any, out: Any) -> None:
            captured.append(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])

        handle = self._text_tower().transformer.register_forward_hook(grab)
        try:
            pooled = self.clip.encode_text(ids, normalize=True)
        finally:
            handle.remove()
        return captured[-1], pooled


def _text_width(clip: nn.Module) -> int:
    tower = getattr(clip, "text", clip)
    if hasattr(tower, "width"):
        return int(tower.width)
    if hasattr(tower, "transformer") and hasattr(tower.transformer, "width"):
        return int(tower.transformer.width)
    return int(tower.transformer.config.hidden_size)  # Hugging Face text tower


# create_model_and_transforms arguments the encoders set themselves
_OPEN_CLIP_OWN = {"model_name", "pretrained", "pretrained_text", "pretrained_image", "device"}


@dataclass
class CLIPOptions:
    """Options of the "clip-image" and "clip-text" encoders."""

    model: str = field(default=DEFAULT_CLIP_MODEL, metadata={
        "help": "open_clip config name (e.g. ViT-B-32, anyalign-tiny-vit) or a config .json path"})
    layer: int = field(default=-1, metadata={"help": "transformer block whose tokens are returned (-1 = last)"})
    extra_options: ClassVar[str] = "keyword arguments of open_clip.create_model_and_transforms (e.g. force_image_size)"

    @classmethod
    def check_extra(cls, values: dict[str, Any], extra: dict[str, Any], source: str) -> dict[str, Any]:
        """Extra keys must be named arguments of `open_clip.create_model_and_transforms`."""
        from ..config import ConfigError
        from ..options import describe_options

        known = [p for p in inspect.signature(open_clip.create_model_and_transforms).parameters
                 if p not in _OPEN_CLIP_OWN and p != "model_kwargs"]
        for key, value in extra.items():
            if key not in known:
                raise ConfigError(f"{source} {key}={value!r}: clip encoders have no option {key!r}; options: "
                                  f"{describe_options(cls, with_extra=False)} and the open_clip arguments "
                                  f"{', '.join(known)}")
        return extra


@register_encoder("clip-image", modality="image", token_dim=768, pooled_dim=512, input_spec=IMAGE_INPUT_SPEC,
                  default_model=DEFAULT_CLIP_MODEL, options=CLIPOptions)
def clip_image_encoder(pretrained: str | None, opts: CLIPOptions, **open_clip_kwargs: Any) -> CLIPImageEncoder:
    """OpenCLIP vision tower; `open_clip_kwargs` go to `open_clip.create_model_and_transforms`."""
    clip, preprocess, _ = build_clip(opts.model, pretrained, "image", **open_clip_kwargs)
    visual = clip.visual
    del clip  # drop the text tower
    return CLIPImageEncoder(visual, preprocess, layer=opts.layer)


@register_encoder("clip-text", modality="text", token_dim=512, pooled_dim=512,
                  input_spec=CLIPTextEncoder.input_spec, default_model=DEFAULT_CLIP_MODEL, options=CLIPOptions)
def clip_text_encoder(pretrained: str | None, opts: CLIPOptions, **open_clip_kwargs: Any) -> CLIPTextEncoder:
    """OpenCLIP text tower with its own tokenizer; `open_clip_kwargs` go to open_clip's factory."""
    clip, _, tokenizer_name = build_clip(opts.model, pretrained, "text", **open_clip_kwargs)
    embed_dim = int(clip.visual.output_dim)
    clip.visual = None  # drop the image tower
    context = open_clip_kwargs.get("force_context_length")
    tokenizer = open_clip.get_tokenizer(tokenizer_name, context_length=context)
    return CLIPTextEncoder(clip, tokenizer, embed_dim=embed_dim, layer=opts.layer)
