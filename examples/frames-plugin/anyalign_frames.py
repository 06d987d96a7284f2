"""An out-of-tree anyalign encoder family: "frames", for multichannel sensor arrays saved as `.npy` `[C, T]`.

The series is cut into frames of `frame` steps; each frame (C x frame values, per-channel standardised) goes
through a fixed random projection to `dim` features (seeded, so every process builds the same frozen encoder).
Tokens are the frames `[T / frame, dim]`, pooled is their mean. It is deliberately small: the point is the
plugin mechanism. Installed (`pip install examples/frames-plugin`), anyalign finds it through the
`anyalign.plugins` entry point; without installing, `ANYALIGN_PLUGINS=anyalign_frames` or
`anyalign --plugin anyalign_frames ...` with this folder on PYTHONPATH.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from anyalign.encoders import Encoder, EncoderOutput, InputError, masked_mean, pad_sequences, register_encoder


@dataclass
class FramesOptions:
    """Options of the "frames" encoder."""

    channels: int = field(default=3, metadata={"help": "channels C of every input array [C, T]"})
    frame: int = field(default=10, metadata={"help": "time steps per frame (token)"})
    dim: int = field(default=32, metadata={"help": "features per token"})
    seed: int = field(default=0, metadata={"help": "seed of the fixed random projection"})


class FramesEncoder(Encoder):
    """Frames of a `[C, T]` array -> a fixed random projection: tokens `[B, T/frame, dim]`."""

    modality = "sensor"
    extensions = (".npy",)
    input_spec = "a .npy file or array [C, T] (float)"

    def __init__(self, options: FramesOptions) -> None:
        super().__init__()
        self.options = options
        g = torch.Generator().manual_seed(options.seed)
        weight = torch.randn(options.channels * options.frame, options.dim, generator=g)
        self.register_buffer("weight", weight / weight.shape[0] ** 0.5)
        self.token_dim = self.pooled_dim = options.dim

    def load(self, item: Any) -> np.ndarray:
        try:
            x = np.load(item, allow_pickle=False) if isinstance(item, str) else np.asarray(item)
        except (OSError, ValueError) as e:
            raise InputError(f"{item}: cannot read as a .npy array ({e})") from None
        if x.ndim != 2 or x.shape[0] != self.options.channels or x.shape[1] < self.options.frame:
            raise InputError(f"{item}: expected an array [{self.options.channels}, T >= {self.options.frame}], "
                             f"got shape {x.shape}")
        return x.astype(np.float32)

    def collate(self, items: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        f = self.options.frame
        frames = []
        for x in items:
            x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
            n = x.shape[1] // f
            frames.append(torch.from_numpy(x[:, : n * f].reshape(x.shape[0], n, f).transpose(1, 0, 2).reshape(n, -1)))
        tokens, mask = pad_sequences(frames)
        return {"frames": tokens, "mask": mask}

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        tokens = torch.tanh(batch["frames"] @ self.weight)  # [B, N, dim]
        return EncoderOutput(tokens, batch["mask"], masked_mean(tokens, batch["mask"]))


@register_encoder("frames", modality="sensor", token_dim=32, pooled_dim=32, input_spec=FramesEncoder.input_spec,
                  options=FramesOptions)
def frames_encoder(pretrained: str | None, opts: FramesOptions) -> FramesEncoder:
    """The frames encoder, given its options whole (`pretrained` is unused: its projection is fixed by `seed`)."""
    return FramesEncoder(opts)
