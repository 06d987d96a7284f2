"""Decode one raw image input (path, PIL image, array or tensor) to an RGB PIL image, the same way for every image
encoder (an `InputError` naming a bad input).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .base import Encoder, InputError

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
IMAGE_INPUT_SPEC = (
    "image: file path (.jpg .jpeg .png .bmp .webp .gif), PIL image, or array/tensor HxWxC / CxHxW / HxW "
    "(uint8 0-255 or float 0-1)"
)


def load_image(item: Any) -> Image.Image:
    """Return `item` as an RGB PIL image; raise `InputError` naming the input when it cannot be decoded."""
    if isinstance(item, (str, os.PathLike)):
        return _open_file(Path(item))
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().float().numpy() if item.is_floating_point() else item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        return _from_array(item)
    raise InputError(f"expected an image path, PIL image or array, got {type(item).__name__}: {item!r:.80}")


def _open_file(path: Path) -> Image.Image:
    if not path.is_file():
        raise InputError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()  # force the decode here so truncated/corrupt files fail now, not in a worker later
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: cannot read as an image ({type(e).__name__}: {e})") from None


def _from_array(arr: np.ndarray) -> Image.Image:
    shape = arr.shape
    if arr.ndim == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise InputError(f"image array of shape {tuple(shape)}: expected HxW, HxWxC or CxHxW with C in 1, 3, 4")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(f"image array of shape {tuple(shape)} contains NaN or inf")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)  # float images are taken as [0, 1]
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise InputError(f"image array dtype {arr.dtype}: expected uint8 (0-255) or float (0-1)")
    return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency (RGBA, LA, palette/greyscale with a transparent colour) composited on white:
    dropping alpha would turn clip art into flat colour fields (transparent pixels often hold black)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("P", "L", "RGB", "1", "I") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


class ImageEncoder(Encoder):
    """Base of the image encoders: raw images through the model's own `transform` (set by the subclass), batched as
    pixels `[B, 3, H, W]`."""

    modality = "image"
    extensions = IMAGE_EXTENSIONS
    input_spec = IMAGE_INPUT_SPEC
    transform: Callable[[Image.Image], torch.Tensor]

    def load(self, item: Any) -> torch.Tensor:
        return self.transform(load_image(item))  # [3, H, W]

    def collate(self, items: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"pixels": torch.stack(list(items))}  # [B, 3, H, W]
