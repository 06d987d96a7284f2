"""A frozen universal trunk with trainable modality tokenizers (Meta-Transformer; OneLLM's universal encoder).

The trunk is a local transformers folder: an encoder-only model taking `inputs_embeds` (e.g. MiniLM's BERT layers), or
a Whisper encoder whose mel front end the tokenizer replaces. Tokenizers: `patch1d` (sensor streams `[C, T]`, linear
patches of `patch` steps) and `patch2d` (spectrograms or images `[C, H, W]`, ViT's patch embedding). Tokens are the
trunk's last hidden states after its first `layers` layers, pooled their masked mean. Only the tokenizer trains
(`train_encoder: true`): `unfreeze()` leaves the trunk frozen and `trained_state_dict()` holds only the tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoder, EncoderOutput, InputError, masked_mean
from .imu import channels_first, read_array
from .registry import register_encoder

Tokenizer = Literal["patch1d", "patch2d"]
TRUNK_INPUT_SPEC = ("patch1d: array [C, T] (or [T, C]) or a .npy/.csv file of one; patch2d: array [C, H, W] or "
                    "[H, W] (spectrogram or image) or a .npy file of one")


class Patch1d(nn.Module):
    """`[B, C, T]` (+ `[B, T]` mask) -> `[B, ceil(T / patch), D]` tokens (+ mask): linear patch embedding."""

    def __init__(self, channels: int, patch: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(channels * patch, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, t = x.shape
        pad = (-t) % self.patch
        x = F.pad(x, (0, pad))
        mask = F.pad(mask, (0, pad))
        n = x.shape[-1] // self.patch
        patches = x.reshape(b, c, n, self.patch).permute(0, 2, 1, 3).reshape(b, n, c * self.patch)  # [B, N, C*P]
        return self.proj(patches), mask.reshape(b, n, self.patch).any(-1)


class Patch2d(nn.Module):
    """`[B, C, H, W]` (+ `[B, W]` mask over the last axis) -> `[B, (H/p)(W/p), D]` tokens: ViT patch embedding."""

    def __init__(self, channels: int, patch: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad_h, pad_w = (-x.shape[-2]) % self.patch, (-x.shape[-1]) % self.patch
        x, mask = F.pad(x, (0, pad_w, 0, pad_h)), F.pad(mask, (0, pad_w))
        h = self.proj(x)  # [B, D, H', W']
        cols = mask.reshape(mask.shape[0], -1, self.patch).any(-1)  # [B, W']
        tmask = cols[:, None, :].expand(-1, h.shape[-2], -1).reshape(h.shape[0], -1)  # [B, H' * W']
        return h.flatten(2).transpose(1, 2), tmask


class TrunkEncoder(Encoder):
    """A trainable modality tokenizer feeding a frozen pretrained transformer trunk."""

    modality = "any"
    extensions = (".npy", ".csv")
    input_spec = TRUNK_INPUT_SPEC

    def __init__(self, trunk: nn.Module, opts: TrunkOptions) -> None:
        super().__init__()
        blocks = _layer_list(trunk)
        if opts.layers is not None:
            if not 1 <= opts.layers <= len(blocks):
                raise ValueError(f"trunk: layers must be in 1..{len(blocks)} for this trunk, got {opts.layers}")
            del blocks[opts.layers:]
        self.kind, self.channels, self.normalize = opts.tokenizer, opts.channels, opts.normalize
        self.whisper = getattr(trunk.config, "model_type", None) == "whisper"
        width = int(trunk.config.hidden_size)
        if self.whisper:  # the tokenizer replaces the mel front end
            self.max_tokens = int(trunk.config.max_source_positions)
            for front in ("conv1", "conv2"):
                if hasattr(trunk, front):
                    delattr(trunk, front)
        else:
            self.max_tokens = int(getattr(trunk.config, "max_position_embeddings", 512))
        self.tokenizer = (Patch1d if opts.tokenizer == "patch1d" else Patch2d)(opts.channels, opts.patch, width)
        self.trunk = trunk.requires_grad_(False).eval()
        self.token_dim = self.pooled_dim = width

    # --- freezing: the trunk never trains ---------------------------------------------------------------------
    def unfreeze(self) -> TrunkEncoder:
        """Make the tokenizer trainable; the trunk stays frozen (and in eval mode)."""
        self.frozen = False
        self.tokenizer.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> TrunkEncoder:
        super().train(mode)
        self.trunk.eval()  # no dropout inside the frozen trunk
        return self

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"tokenizer.{k}": v for k, v in self.tokenizer.state_dict().items()}

    # --- load / collate / encode ------------------------------------------------------------------------------
    def load(self, item: Any) -> np.ndarray:
        where = str(item) if isinstance(item, (str, Path)) else "trunk input"
        arr = read_array(item, where)
        if self.kind == "patch1d":
            arr = channels_first(arr, self.channels, where)
        else:
            arr = arr[None] if arr.ndim == 2 and self.channels == 1 else arr
            if arr.ndim != 3 or arr.shape[0] != self.channels:
                raise InputError(f"{where}: expected [{self.channels}, H, W]"
                                 f"{' or [H, W]' if self.channels == 1 else ''}, got {arr.shape}")
        if self.normalize == "window":  # per-channel z-score (sensor offset and gain removed)
            axes = tuple(range(1, arr.ndim))
            arr = (arr - arr.mean(axes, keepdims=True)) / (arr.std(axes, keepdims=True) + 1e-6)
        return arr

    def collate(self, items: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        width = max(x.shape[-1] for x in items)
        if self.kind == "patch2d" and len({x.shape[1] for x in items}) > 1:
            raise InputError(f"trunk patch2d: inputs in a batch need the same height, got {[x.shape for x in items]}")
        x = torch.zeros(len(items), *items[0].shape[:-1], width)
        mask = torch.zeros(len(items), width, dtype=torch.bool)
        for i, item in enumerate(items):
            x[i, ..., :item.shape[-1]] = torch.from_numpy(np.ascontiguousarray(item))
            mask[i, :item.shape[-1]] = True
        return {"x": x, "mask": mask}

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        tokens, mask = self.tokenizer(batch["x"], batch["mask"])  # [B, N, D], [B, N]
        if tokens.shape[1] > self.max_tokens:
            raise InputError(f"trunk: {tokens.shape[1]} tokens > the trunk's {self.max_tokens} positions; use a "
                             f"larger patch or shorter inputs")
        if self.whisper:
            from .whisper import encoder_layers

            hidden = encoder_layers(self.trunk, tokens, mask)  # [B, N, D]
        else:
            hidden = self.trunk(inputs_embeds=tokens, attention_mask=mask.long()).last_hidden_state  # [B, N, D]
        return EncoderOutput(hidden, mask, masked_mean(hidden.float(), mask))


def _layer_list(trunk: nn.Module) -> nn.ModuleList:
    """The trunk's list of transformer layers (BERT-style `encoder.layer`, or `layers`)."""
    for path in ("encoder.layer", "encoder.layers", "layers"):
        mod: Any = trunk
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if isinstance(mod, nn.ModuleList):
            return mod
    raise ValueError(f"trunk: {type(trunk).__name__} has no list of layers (encoder.layer / layers)")


def _load_trunk(path: Path) -> nn.Module:
    """The transformer in a local folder: an encoder-only AutoModel, or a Whisper checkpoint's encoder (a whole
    Whisper model, or a WhisperEncoder saved alone)."""
    from transformers import AutoConfig, AutoModel, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from .clap import load_tower

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if config.model_type != "whisper":
        return AutoModel.from_pretrained(str(path), local_files_only=True)
    if "WhisperEncoder" in (config.architectures or []):
        return load_tower(WhisperEncoder, str(path), "trunk")
    return load_tower(WhisperModel, str(path), "trunk", prefix="encoder.").get_encoder()


@dataclass
class TrunkOptions:
    """Options of the "trunk" encoder (the frozen trunk itself is `pretrained`)."""

    tokenizer: Tokenizer = field(default="patch1d", metadata={"help": "patch1d (sensor streams) or patch2d "
                                                                      "(spectrograms, images)"})
    channels: int = field(default=6, metadata={"help": "input channels (sensor axes, image or spectrogram channels)",
                                               "min": 1})
    patch: int = field(default=10, metadata={"help": "time steps (patch1d) or pixels per side (patch2d) per token",
                                             "min": 1})
    layers: int | None = field(default=None, metadata={"help": "use the trunk's first N layers (default: all)"})
    normalize: Literal["none", "window"] = field(default="window",
                                                 metadata={"help": "window: per-channel z-score of each input"})


@register_encoder("trunk", modality="any", token_dim=384, pooled_dim=384, input_spec=TRUNK_INPUT_SPEC,
                  default_model="a local encoder-only transformer or Whisper folder, e.g. all-MiniLM-L6-v2 "
                                "(required)",
                  options=TrunkOptions)
def trunk_encoder(pretrained: str | None, opts: TrunkOptions) -> TrunkEncoder:
    """A modality tokenizer + the frozen layers of a local transformer or Whisper model folder (`pretrained`)."""
    if pretrained is None:
        raise ValueError("trunk encoder: pretrained= must name a local transformer folder (e.g. "
                         "${ANYALIGN_ASSETS}/text/all-MiniLM-L6-v2); the trunk is never trained from scratch")
    path = Path(str(pretrained)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"trunk encoder: pretrained={pretrained!r} is not a local model folder")
    try:
        trunk = _load_trunk(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"trunk encoder: cannot load {path} as a transformer: {str(e).splitlines()[0]}") from None
    return TrunkEncoder(trunk, opts)
