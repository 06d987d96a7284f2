"""DINOv2 vision transformers through timm ("dinov2"): tokens `[B, 1 + h*w, D]` (class token, then patches; register
tokens dropped), pooled the class token as DINOv2's linear probes use it. Run at `img_size=224` unless told otherwise
(timm's 518 costs ~5x); timm's checkpoint filter resizes pretrained position embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoder, EncoderOutput
from .image_io import IMAGE_EXTENSIONS, IMAGE_INPUT_SPEC, load_image
from .registry import register_encoder
from .timm_image import TIMM_EXTRA, create_timm_model, timm_transform

DEFAULT_DINOV2_MODEL = "vit_small_patch14_dinov2"


class DINOv2Encoder(Encoder):
    """A timm ViT: tokens = `[cls, patches]` `[B, 1 + N, D]`, pooled = class token `[B, D]`."""

    modality = "image"
    extensions = IMAGE_EXTENSIONS
    input_spec = IMAGE_INPUT_SPEC

    def __init__(self, model: nn.Module, transform: Any, *, normalize: bool = False) -> None:
        super().__init__()
        if getattr(model, "cls_token", None) is None:
            raise ValueError(f"dinov2: {type(model).__name__} has no class token to pool")
        self.model = model
        self.transform = transform
        self.normalize = normalize
        self.token_dim = self.pooled_dim = int(model.num_features)

    def load(self, item: Any) -> torch.Tensor:
        return self.transform(load_image(item))  # [3, H, W]

    def collate(self, items: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"pixels": torch.stack(list(items))}  # [B, 3, H, W]

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        x = self.model.forward_features(batch["pixels"])  # [B, prefix + N, D]: cls, registers, patches
        cls = x[:, :1]  # [B, 1, D]
        tokens = torch.cat([cls, x[:, self.model.num_prefix_tokens:]], dim=1)  # [B, 1 + N, D]
        pooled = cls[:, 0].float()
        if self.normalize:
            pooled = F.normalize(pooled, dim=-1)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens, mask, pooled)


@dataclass
class DINOv2Options:
    """Options of the "dinov2" encoder."""

    model: str = field(default=DEFAULT_DINOV2_MODEL, metadata={
        "help": "timm DINOv2 name: vit_{small,base,large,giant2}_patch14_dinov2, *_reg4_*"})
    img_size: int = field(default=224, metadata={"help": "input resolution (timm's default 518 costs ~5x)"})
    normalize: bool = field(default=False, metadata={"help": "L2-normalise the pooled class token"})
    data_config: dict[str, Any] | None = field(default=None, metadata={
        "help": "overrides of timm's preprocessing config (e.g. {crop_pct: 1.0})"})
    extra_options: ClassVar[str] = TIMM_EXTRA


@register_encoder("dinov2", modality="image", token_dim=384, pooled_dim=384, input_spec=IMAGE_INPUT_SPEC,
                  default_model=DEFAULT_DINOV2_MODEL, options=DINOv2Options)
def dinov2_encoder(pretrained: str | None, opts: DINOv2Options, **timm_kwargs: Any) -> DINOv2Encoder:
    """DINOv2 (`vit_{small,base,large,giant2}_patch14_dinov2`, `*_reg4_*`) from a hub id or local file."""
    net = create_timm_model(opts.model, pretrained, img_size=opts.img_size, **timm_kwargs)
    return DINOv2Encoder(net, timm_transform(net, opts.data_config), normalize=opts.normalize)
