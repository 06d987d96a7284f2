"""Video as frames encoded by any registered image encoder ("video"; default "clip-image").

`num_frames` frames are sampled uniformly with PyAV. Tokens are the per-frame pooled embeddings plus a fixed sinusoidal
position of relative size `temporal_scale` (0: off), masked for shorter videos; pooled the normalised frame mean.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .base import Encoder, EncoderOutput, InputError, masked_mean, pad_sequences
from .registry import check_encoder_options, register_encoder
from .spec import create_encoder

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm")
VIDEO_INPUT_SPEC = (
    "video: file path (.mp4 .avi .mov .mkv .webm), a TxHxWxC uint8 array, or a list of frames (PIL images/arrays)"
)
_FRAME_PREFIX = "frames."


def uniform_indices(total: int, num: int) -> list[int]:
    """Indices of the centre frames of `num` equal segments of `total` frames (all frames when fewer)."""
    if total <= num:
        return list(range(total))
    return [min(total - 1, int((i + 0.5) * total / num)) for i in range(num)]


def read_frames(path: str | os.PathLike, num_frames: int) -> list[Image.Image]:
    """Decode `num_frames` uniformly spaced RGB frames from a video file; `InputError` naming it on failure."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: video file not found")
    try:
        total = _frame_count(path)
        wanted = set(uniform_indices(total, num_frames))
        frames: list[Image.Image] = []
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frames.append(frame.to_image())  # RGB PIL image
                if len(frames) == len(wanted):
                    break
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
        raise InputError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from None
    if not frames:
        raise InputError(f"{path}: no decodable video frames")
    return frames


def _frame_count(path: Path) -> int:
    """Frames in the first video stream: container metadata when present, else counted from the packets."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise InputError(f"{path}: no video stream")
        stream = container.streams.video[0]
        if stream.frames > 0:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def sinusoidal_positions(num: int, dim: int) -> torch.Tensor:
    """Fixed transformer position encodings `[num, dim]`, each row scaled to unit L2 norm."""
    pos = torch.arange(num, dtype=torch.float32)[:, None]  # [N, 1]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # [ceil(D/2)]
    pe = torch.zeros(num, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return F.normalize(pe, dim=-1)


class VideoEncoder(Encoder):
    """Frames through a frozen image encoder: tokens `[B, num_frames, D]` + mask, pooled `[B, D]`."""

    modality = "video"
    extensions = VIDEO_EXTENSIONS
    input_spec = VIDEO_INPUT_SPEC

    @classmethod
    def partner_spec(cls, spec: Any, modality: str) -> Any:
        """Frames are embedded by the image encoder, so its space (and its partners) are this one's."""
        opts = dict(spec.options)
        image = type(spec)(opts.pop("image_encoder", "clip-image"), spec.pretrained,
                           {k: v for k, v in opts.items() if k not in ("num_frames", "temporal_scale")})
        return image.partner(modality)

    def __init__(self, image_encoder: Encoder, *, num_frames: int = 8, temporal_scale: float = 0.1) -> None:
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"video: num_frames={num_frames}: expected >= 1")
        self.image_encoder = image_encoder
        self.num_frames = num_frames
        self.temporal_scale = temporal_scale
        self.token_dim = self.pooled_dim = image_encoder.pooled_dim

    def load(self, item: Any) -> list[Any]:
        if isinstance(item, (str, os.PathLike)):
            frames: Sequence[Any] = read_frames(item, self.num_frames)
        elif isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4:
            frames = [item[i] for i in uniform_indices(item.shape[0], self.num_frames)]  # [T, H, W, C]
        elif isinstance(item, (list, tuple)) and item:
            frames = [item[i] for i in uniform_indices(len(item), self.num_frames)]
        else:
            raise InputError(f"video: expected a video path, a TxHxWxC array or a list of frames, "
                             f"got {type(item).__name__}: {item!r:.80}")
        return [self.image_encoder.load(f) for f in frames]

    def collate(self, items: Sequence[list[Any]]) -> dict[str, torch.Tensor]:
        frames = [f for video in items for f in video]
        batch = {_FRAME_PREFIX + k: v for k, v in self.image_encoder.collate(frames).items()}
        batch["num_frames"] = torch.tensor([len(video) for video in items])  # [B]
        return batch

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        frame_batch = {k[len(_FRAME_PREFIX):]: v for k, v in batch.items() if k.startswith(_FRAME_PREFIX)}
        emb = self.image_encoder.encode(frame_batch).pooled.float()  # [sum T_i, D]
        counts = batch["num_frames"].tolist()
        frames, mask = pad_sequences(torch.split(emb, counts))  # [B, T, D], [B, T]
        if frames.shape[1] < self.num_frames:  # fixed length: pad to num_frames
            extra = self.num_frames - frames.shape[1]
            frames = F.pad(frames, (0, 0, 0, extra))
            mask = F.pad(mask, (0, extra), value=False)
        mask = mask.to(frames.device)
        pooled = F.normalize(masked_mean(frames, mask), dim=-1)  # [B, D]
        pe = sinusoidal_positions(frames.shape[1], frames.shape[2]).to(frames.device)  # [T, D]
        tokens = frames + self.temporal_scale * frames.norm(dim=-1, keepdim=True) * pe  # [B, T, D]
        return EncoderOutput(tokens * mask[..., None], mask, pooled)


@dataclass
class VideoOptions:
    """Options of the "video" encoder; other keys are options of its image encoder."""

    image_encoder: str = field(default="clip-image", metadata={"help": "registered image encoder for the frames"})
    num_frames: int = field(default=8, metadata={"help": "frames sampled uniformly per video"})
    temporal_scale: float = field(default=0.1, metadata={
        "help": "size of the sinusoidal frame position relative to the frame embedding (0 = off)"})
    extra_options: ClassVar[str] = "options of the image encoder (e.g. model)"

    @classmethod
    def check_extra(cls, values: dict[str, Any], extra: dict[str, Any], source: str) -> dict[str, Any]:
        """Extra keys are checked against the image encoder's options."""
        return check_encoder_options(values["image_encoder"], extra, source=source)


@register_encoder("video", modality="video", token_dim=512, pooled_dim=512, input_spec=VIDEO_INPUT_SPEC,
                  default_model="clip-image:ViT-B-32", options=VideoOptions)
def video_encoder(pretrained: str | None, opts: VideoOptions, **image_kwargs: Any) -> VideoEncoder:
    """Video through a registered image encoder; `pretrained` and `image_kwargs` go to that image encoder."""
    image = create_encoder(opts.image_encoder, pretrained=pretrained, frozen=True, **image_kwargs)
    if image.modality != "image":
        raise ValueError(f"video: image_encoder={opts.image_encoder!r} is a {image.modality} encoder, expected image")
    return VideoEncoder(image, num_frames=opts.num_frames, temporal_scale=opts.temporal_scale)
