"""Whisper's audio encoder as a frozen encoder ("whisper"), the Qwen-Audio / LLaSM recipe, through transformers.

Tokens are the encoder's last hidden states `[B, T, D]` (one per 20 ms of real audio, masked), pooled their masked
mean. `padding: window` (default) pads every clip to Whisper's 30 s input, as it was trained; `padding: longest` runs
on the batch's longest clip (positions sliced, padding masked out of attention): much faster on short clips but NOT
equal to the padded path (per-frame cosine 0.81-0.98 on 0.5-3.8 s clips, benchmarks/whisper_length.py). Audio longer
than `window_seconds` is cut into windows whose valid tokens are concatenated. `pretrained`: a hub id (default
`openai/whisper-base`) or a `save_pretrained` folder; weights load in float32 and only the encoder is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformers import WhisperFeatureExtractor, WhisperModel

from .audio_io import AUDIO_INPUT_SPEC, AudioEncoder, split_windows
from .base import EncoderOutput, join_windows, masked_mean
from .clap import hf_source, load_tower
from .registry import register_encoder

DEFAULT_WHISPER_MODEL = "openai/whisper-base"


def key_padding_mask(mask: torch.Tensor, attn_implementation: str | None) -> torch.Tensor | None:
    """`[B, T]` valid-token mask -> the key-padding mask `[B, 1, 1, T]` a Whisper encoder layer takes (None when
    nothing is padded)."""
    if bool(mask.all()):
        return None
    keys = mask[:, None, None, :]
    if attn_implementation == "sdpa":
        return keys  # bool: True = attend
    return torch.zeros(keys.shape, device=mask.device).masked_fill(~keys, torch.finfo(torch.float32).min)


def encoder_layers(encoder: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A WhisperEncoder's forward after its convolutions, on `x` `[B, T, D]` of any T up to its positions:
    sinusoidal positions sliced to T, the layers with padded tokens (`mask` False) masked out, final LayerNorm."""
    x = x + encoder.embed_positions.weight[:x.shape[1]]
    attention = key_padding_mask(mask, encoder.config._attn_implementation)
    for layer in encoder.layers:
        x = layer(x, attention)
    return encoder.layer_norm(x)


class WhisperAudioEncoder(AudioEncoder):
    """Whisper encoder: tokens `[B, T, D]` masked to the real audio (T = 1500 when padded to the window), pooled =
    masked mean `[B, D]`."""

    def __init__(self, encoder: torch.nn.Module, extractor: WhisperFeatureExtractor, *,
                 window_seconds: float | None = None, padding: str = "window") -> None:
        super().__init__()
        self.encoder = encoder
        self.extractor = extractor
        self.sample_rate = int(extractor.sampling_rate)
        self.clip_seconds = float(extractor.n_samples) / self.sample_rate
        self.window_seconds = float(window_seconds or self.clip_seconds)
        if not 0 < self.window_seconds <= self.clip_seconds:
            raise ValueError(f"whisper: window_seconds must be in (0, {self.clip_seconds:g}] (Whisper's input "
                             f"window), got {window_seconds}")
        self.padding = padding
        self.window_samples = int(round(self.window_seconds * self.sample_rate))
        self.max_positions = int(encoder.config.max_source_positions)
        self.mel_per_token = int(encoder.conv1.stride[0] * encoder.conv2.stride[0])  # 2 mel frames per token
        expected = self.max_positions * self.mel_per_token
        if extractor.nb_max_frames != expected:
            raise ValueError(f"whisper: feature extractor gives {extractor.nb_max_frames} mel frames but the encoder "
                             f"expects {expected} (max_source_positions={self.max_positions})")
        self.token_dim = self.pooled_dim = int(encoder.config.d_model)

    def valid_tokens(self, n_samples: int) -> int:
        """Encoder frames that hold real audio for a clip (window) of `n_samples`."""
        mel = math.ceil(n_samples / self.extractor.hop_length)  # 100 mel frames per second at 16 kHz
        return max(1, min(self.max_positions, math.ceil(mel / self.mel_per_token)))

    def collate(self, items: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        windows = [split_windows(w, self.window_samples, min_fraction=0.0) for w in items]  # every tail kept
        flat = [w for ws in windows for w in ws]
        valid = [self.valid_tokens(len(w)) for w in flat]
        if self.padding == "window":
            feats = self.extractor(flat, sampling_rate=self.sample_rate, return_tensors="pt")  # [W, mels, 3000]
        else:
            # the longest clip's tokens + one: the last valid token's convolutions read the 2 mel frames after it,
            # which hold silence in the padded path too; the extractor gives samples // hop frames
            n_mel = min(self.mel_per_token * (max(valid) + 1), self.mel_per_token * self.max_positions)
            feats = self.extractor(flat, sampling_rate=self.sample_rate, padding="max_length", truncation=True,
                                   max_length=n_mel * self.extractor.hop_length, return_tensors="pt")
        return {
            "input_features": feats["input_features"].float(),  # [W, mels, 3000 or 2 * (T_max + 1)]
            "valid": torch.tensor(valid),  # [W]
            "windows": torch.tensor([len(ws) for ws in windows]),  # [B]
        }

    def _encode_clip_length(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """WhisperEncoder's forward on the valid length: positions sliced, padded frames masked. `[W, T, D]`."""
        enc = self.encoder
        steps = int(valid.max())
        x = F.gelu(enc.conv1(feats))
        x = F.gelu(enc.conv2(x))[:, :, :steps].permute(0, 2, 1)  # [W, T, D]
        mask = torch.arange(steps, device=x.device)[None] < valid.to(x.device)[:, None]  # [W, T]
        return encoder_layers(enc, x, mask)

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        feats = batch["input_features"].to(self.encoder.conv1.weight.dtype)  # the weights' dtype (autocast aside)
        valid = batch["valid"]
        if self.padding == "window":
            hidden = self.encoder(feats).last_hidden_state  # [W, 1500, D]
        else:
            hidden = self._encode_clip_length(feats, valid)  # [W, T_max, D]
        mask = torch.arange(hidden.shape[1], device=hidden.device)[None] < valid.to(hidden.device)[:, None]  # [W, T]
        tokens, mask = join_windows(hidden, mask, batch["windows"].tolist())  # [B, T_max, D]
        return EncoderOutput(tokens, mask, masked_mean(tokens.float(), mask))


@dataclass
class WhisperOptions:
    """Options of the "whisper" encoder (the checkpoint is `pretrained`)."""

    window_seconds: float | None = field(default=None, metadata={
        "help": "window length for long audio, at most Whisper's 30 s input (None = 30 s)"})
    padding: Literal["window", "longest"] = field(default="window", metadata={
        "help": "'window': every clip padded to Whisper's 30 s input, as it was trained (exact, slow on short "
                "clips); 'longest': the encoder runs on the batch's longest clip only (positions sliced, padding "
                "masked; much faster, features differ from the padded path, see the module docs)"})


@register_encoder("whisper", modality="audio", token_dim=512, pooled_dim=512, input_spec=AUDIO_INPUT_SPEC,
                  default_model=DEFAULT_WHISPER_MODEL, options=WhisperOptions)
def whisper_encoder(pretrained: str | None, opts: WhisperOptions) -> WhisperAudioEncoder:
    """Whisper's encoder from a hub id or local folder (default openai/whisper-base)."""
    source = hf_source(pretrained, "whisper", DEFAULT_WHISPER_MODEL)
    encoder = load_tower(WhisperModel, source, "whisper", prefix="encoder.").get_encoder()  # the decoder is dropped
    try:
        extractor = WhisperFeatureExtractor.from_pretrained(source)
    except OSError as e:
        raise FileNotFoundError(f"whisper: no feature extractor config in {source!r}: {e}") from None
    return WhisperAudioEncoder(encoder, extractor, window_seconds=opts.window_seconds, padding=opts.padding)
