"""timm image models as frozen encoders: any model ("timm-image") and DINOv2 ("dinov2").

Tokens are the final feature map `[B, H*W, C]` (a ViT's token sequence), pooled the model's pre-logits global pool;
preprocessing is timm's eval transform. EfficientNet-PyTorch (lukemelas) checkpoints, e.g. EfficientNet-Lite0, are
renamed to timm's layout.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..io import WEIGHT_SUFFIXES, load_weights, resolve_pretrained
from .base import EncoderOutput
from .image_io import IMAGE_INPUT_SPEC, ImageEncoder
from .registry import register_encoder

DEFAULT_TIMM_MODEL = "efficientnet_lite0"
DEFAULT_DINOV2_MODEL = "vit_small_patch14_dinov2"
TIMM_EXTRA = "keyword arguments of timm.create_model and the model class (e.g. drop_rate, num_classes)"

# EfficientNet-PyTorch names -> timm names. Blocks with an expansion conv have three convs (pw, dw, pwl);
# the first blocks of EfficientNet have none, so their names shift by one.
_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                  "_fc": "classifier"}
_LUKEMELAS_EXPAND = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_project_conv": "conv_pwl", "_bn2": "bn3", "_se_reduce": "se.conv_reduce",
                     "_se_expand": "se.conv_expand"}
_LUKEMELAS_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
                 "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")


def is_lukemelas_efficientnet(state: dict[str, torch.Tensor]) -> bool:
    """True for EfficientNet-PyTorch style state dicts (`_conv_stem`, `_blocks.N._depthwise_conv`, ...)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def convert_lukemelas_efficientnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to timm's `efficientnet_*` layout (`blocks.<stage>.<index>`).

    The flat block list is split into stages where the output width changes, which is where EfficientNet's
    stages (16, 24, 40, 80, 112, 192, 320 channels for B0/Lite0) begin.
    """
    n_blocks = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)))
    stage_of, stage, index, prev_out = [], -1, 0, None
    for b in range(n_blocks):
        out_ch = state[f"_blocks.{b}._project_conv.weight"].shape[0]
        stage, index = (stage + 1, 0) if out_ch != prev_out else (stage, index + 1)
        stage_of.append((stage, index))
        prev_out = out_ch
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m is None:
            module, _, rest = key.partition(".")
            if module not in _LUKEMELAS_TOP:
                raise ValueError(f"unexpected EfficientNet-PyTorch key {key!r}")
            converted[f"{_LUKEMELAS_TOP[module]}.{rest}"] = value
            continue
        b, module, rest = int(m.group(1)), m.group(2), m.group(3)
        names = _LUKEMELAS_EXPAND if f"_blocks.{b}._expand_conv.weight" in state else _LUKEMELAS_DS
        if module not in names:
            raise ValueError(f"unexpected EfficientNet-PyTorch key {key!r}")
        s, i = stage_of[b]
        converted[f"blocks.{s}.{i}.{names[module]}.{rest}"] = value
    return converted


def create_timm_model(name: str, pretrained: str | None, **kwargs: Any) -> nn.Module:
    """A timm model with random weights, or from a hub id, a timm tag or a local file/folder (read without unpickling;
    a foreign layout goes through timm's checkpoint filter, EfficientNet-PyTorch keys are renamed)."""
    if pretrained is None:
        return _create(name, False, **kwargs)
    src = resolve_pretrained(pretrained)
    if src.kind == "hub":
        return _create(f"hf-hub:{src.location}", True, **kwargs)
    if src.kind == "tag":
        return _create(f"{name}.{src.location}", True, **kwargs)
    path = _weights_file(Path(src.location)) if src.kind == "dir" else Path(src.location)
    state = load_weights(path)
    if is_lukemelas_efficientnet(state):
        state = convert_lukemelas_efficientnet(state)
        model = _create(name, False, **kwargs)
        _load_exact(model, state, path)
        model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
        return model
    model = _create(name, False, **kwargs)
    own = model.state_dict()
    if state.keys() == own.keys() and all(state[k].shape == own[k].shape for k in own):
        _load_exact(model, state, path)
        return model
    del model, state  # foreign layout: let timm's checkpoint filter for this architecture convert it
    return _create(name, True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)


def _create(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    import timm  # here, not at module level: checking a recipe's options must not cost the timm import

    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:  # an unknown model keyword, e.g. a misspelt option
        raise ValueError(f"timm: cannot create {name!r} with options {sorted(kwargs)}: {e}") from None
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        raise ValueError(f"timm: cannot create {name!r} (pretrained={pretrained}): {e}") from None


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit {type(model).__name__} ({e})") from None


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if len(files) != 1:
        raise FileNotFoundError(f"{folder}: expected one weights file ({', '.join(WEIGHT_SUFFIXES)}), "
                                f"found {[p.name for p in files]}")
    return files[0]


def timm_transform(model: nn.Module, data_config: dict[str, Any] | None = None) -> Callable:
    """timm's eval transform for `model`; fixed-size ViTs use their actual `img_size`, `data_config` overrides."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config(model=model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None and not getattr(model, "dynamic_img_size", False):
        cfg["input_size"] = (3, *img_size)
    cfg.update(data_config or {})
    return create_transform(**cfg, is_training=False)


class TimmImageEncoder(ImageEncoder):
    """A timm model: tokens = final features `[B, H*W, C]` (a ViT's prefix and patch tokens, registers dropped),
    pooled = pre-logits global pool `[B, P]` (L2-normalised with `normalize`)."""

    def __init__(self, model: nn.Module, transform: Callable, *, normalize: bool = False) -> None:
        super().__init__()
        self.model = model
        self.transform = transform
        self.normalize = normalize
        self.token_dim = int(model.num_features)
        self.pooled_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        feats = self.model.forward_features(batch["pixels"])
        pooled = self.model.forward_head(feats, pre_logits=True)  # [B, P]
        if feats.dim() == 4:
            if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
                tokens = feats.flatten(1, 2)  # [B, H*W, C]
            else:
                tokens = feats.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, H*W, C]
        else:  # [B, prefix + N, C]: register tokens (DINOv2 *_reg4_*) are scratch space, dropped
            prefix, regs = getattr(self.model, "num_prefix_tokens", 0), getattr(self.model, "num_reg_tokens", 0)
            tokens = torch.cat([feats[:, :prefix - regs], feats[:, prefix:]], dim=1) if regs else feats
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens, mask, F.normalize(pooled.float(), dim=-1) if self.normalize else pooled)


@dataclass
class TimmImageOptions:
    """Options of the "timm-image" encoder."""

    model: str = field(default=DEFAULT_TIMM_MODEL, metadata={"help": "any timm.create_model name"})
    data_config: dict[str, Any] | None = field(default=None, metadata={
        "help": "overrides of timm's preprocessing config (e.g. {input_size: [3, 256, 256]})"})
    extra_options: ClassVar[str] = TIMM_EXTRA


@register_encoder("timm-image", modality="image", token_dim=1280, pooled_dim=1280, input_spec=IMAGE_INPUT_SPEC,
                  default_model=DEFAULT_TIMM_MODEL, options=TimmImageOptions)
def timm_image_encoder(pretrained: str | None, opts: TimmImageOptions, **timm_kwargs: Any) -> TimmImageEncoder:
    """Any `timm.create_model` name; `timm_kwargs` go to timm, `data_config` overrides preprocessing."""
    net = create_timm_model(opts.model, pretrained, **timm_kwargs)
    return TimmImageEncoder(net, timm_transform(net, opts.data_config))


@dataclass
class DINOv2Options(TimmImageOptions):
    """Options of the "dinov2" encoder (timm-image's, with DINOv2's models)."""

    model: str = field(default=DEFAULT_DINOV2_MODEL, metadata={
        "help": "timm DINOv2 name: vit_{small,base,large,giant2}_patch14_dinov2, *_reg4_*"})
    img_size: int = field(default=224, metadata={"help": "input resolution (timm's default 518 costs ~5x)"})
    normalize: bool = field(default=False, metadata={"help": "L2-normalise the pooled class token"})


@register_encoder("dinov2", modality="image", token_dim=384, pooled_dim=384, input_spec=IMAGE_INPUT_SPEC,
                  default_model=DEFAULT_DINOV2_MODEL, options=DINOv2Options)
def dinov2_encoder(pretrained: str | None, opts: DINOv2Options, **timm_kwargs: Any) -> TimmImageEncoder:
    """DINOv2 through timm: tokens `[B, 1 + h*w, D]` (class token, then patches), pooled the class token as DINOv2's
    linear probes use it; run at 224 px unless told otherwise (timm resizes pretrained position embeddings)."""
    net = create_timm_model(opts.model, pretrained, img_size=opts.img_size, **timm_kwargs)
    if getattr(net, "cls_token", None) is None:
        raise ValueError(f"dinov2: {type(net).__name__} has no class token to pool")
    return TimmImageEncoder(net, timm_transform(net, opts.data_config), normalize=opts.normalize)
