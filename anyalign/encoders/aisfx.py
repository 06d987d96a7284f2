"""aisfx, a sound-effects embedding CNN (Ma & Lerch, ISMIR 2022), as a frozen audio encoder ("aisfx").

The package's `EmbeddingNet('max', 3, 1, 64)` with its parameter names, on its librosa front end recomputed with torch
(96-bin HTK log-mel at 44.1 kHz). Clips are cut into ~2.3 s blocks (100 frames, hop `hop_fraction`; a short clip is
zero-padded to one block); tokens are the per-block embeddings `[B, W, 512]`, pooled their mean. `pretrained`: the
folder from `python -m anyalign.assets aisfx` (recorded as `asset:aisfx`) or its safetensors file; None: random.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io import load_weights, resolve_pretrained
from .audio_io import AUDIO_INPUT_SPEC, AudioEncoder
from .base import EncoderOutput, join_windows, masked_mean
from .registry import register_encoder

#: the pretrained model's front end (aisfx 0.1.2 inference.py / preprocessing.py)
FRONT_END: dict[str, float] = {"sample_rate": 44100, "n_fft": 2048, "hop_length": 1024, "n_mels": 96, "f_min": 0.0,
                               "f_max": 22050.0, "log_scale": 10000.0, "norm_min": 0.0, "norm_max": 9.457798957824707,
                               "block_frames": 100}
WEIGHTS, CONFIG = "aisfx.safetensors", "aisfx_config.json"


def mel_filterbank(sr: float, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """HTK-scale triangular mel filters `[n_mels, 1 + n_fft // 2]`, each of unit sum (librosa's `filters.mel(...,
    htk=True, norm=1)`, which the aisfx package uses), from transformers' filter bank."""
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(num_frequency_bins=1 + n_fft // 2, num_mel_filters=n_mels, min_frequency=f_min,
                         max_frequency=f_max, sampling_rate=int(sr), mel_scale="htk").T  # [M, F]
    return (fb / np.maximum(fb.sum(axis=1, keepdims=True), np.finfo(np.float32).tiny)).astype(np.float32)


class AisfxFrontEnd:
    """Waveform `[N]` at 44.1 kHz -> normalised log-mel frames `[T, n_mels]`, T = 1 + N // hop (float32, on CPU:
    it runs in `collate`, in DataLoader workers)."""

    def __init__(self, cfg: dict[str, float]) -> None:
        self.n_fft, self.hop = int(cfg["n_fft"]), int(cfg["hop_length"])
        self.log_scale = float(cfg["log_scale"])
        self.norm_min, self.norm_max = float(cfg["norm_min"]), float(cfg["norm_max"])
        fb = mel_filterbank(cfg["sample_rate"], self.n_fft, int(cfg["n_mels"]), cfg["f_min"], cfg["f_max"])
        self.mel = torch.from_numpy(fb)  # [M, F]
        self.window = torch.hann_window(self.n_fft, periodic=True)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        wave = wave.float()
        peak = wave.abs().max()
        wave = wave / torch.where(peak > 0, peak, torch.ones_like(peak))  # the package peak-normalises each clip
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant",
                          return_complex=True)  # [F, T]
        mel = self.mel @ (spec.real.square() + spec.imag.square())  # power -> [M, T]
        logmel = torch.log10(mel * self.log_scale + 1.0)
        return ((logmel - self.norm_min) / (self.norm_max - self.norm_min)).T  # [T, M]


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.max_pool2d(x, pool) if pool > 1 else x


class AisfxNet(nn.Module):
    """aisfx's EmbeddingNet (max pooling, 3x3 kernels, stride 1): `[B, T, M]` log-mel -> `[B, 8 * hidden]`."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        widths = [1, hidden, hidden * 2, hidden * 4, hidden * 8]
        for i in range(4):
            setattr(self, f"conv_block{i + 1}", _ConvBlock(widths[i], widths[i + 1]))
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)  # [B, 1, T, M]
        for i, pool in enumerate((2, 2, 2, 1)):
            x = getattr(self, f"conv_block{i + 1}")(x, pool)
        return x.mean(dim=3).amax(dim=2)  # mean over frequency, max over time: [B, C]


class AisfxAudioEncoder(AudioEncoder):
    """aisfx: per-block embeddings `[B, W, 512]` (blocks of ~2.3 s), pooled = their mean `[B, 512]`."""

    def __init__(self, net: AisfxNet, front_end: dict[str, float], *, hop_fraction: float = 0.5) -> None:
        super().__init__()
        if not 0 < hop_fraction <= 1:
            raise ValueError(f"aisfx: hop_fraction must be in (0, 1] (a fraction of a block), got {hop_fraction}")
        self.net = net
        self.front = AisfxFrontEnd(front_end)
        self.sample_rate = int(front_end["sample_rate"])
        self.block = int(front_end["block_frames"])
        self.block_hop = max(1, int(round(self.block * hop_fraction)))
        self.token_dim = self.pooled_dim = net.out_dim

    def blocks(self, frames: torch.Tensor) -> torch.Tensor:
        """`[T, M]` frames -> `[W, block, M]`: short clips zero-padded to one block, a partial last block dropped."""
        t = frames.shape[0]
        if t < self.block:
            frames = F.pad(frames, (0, 0, 0, self.block - t))
            t = self.block
        n = 1 + (t - self.block) // self.block_hop
        return frames.unfold(0, self.block, self.block_hop)[:n].transpose(1, 2)  # [W, block, M]

    def collate(self, items: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            per_clip = [self.blocks(self.front(torch.from_numpy(np.ascontiguousarray(w)))) for w in items]
        return {"blocks": torch.cat(per_clip),  # [sum W, block, M]
                "windows": torch.tensor([b.shape[0] for b in per_clip])}  # [B]

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        emb = self.net(batch["blocks"].to(self.net.conv_block1.conv1.weight.dtype))  # [sum W, C]
        ones = torch.ones(emb.shape[0], 1, dtype=torch.bool, device=emb.device)
        tokens, mask = join_windows(emb[:, None], ones, batch["windows"].tolist())  # [B, W_max, C]: a token per block
        return EncoderOutput(tokens, mask, masked_mean(tokens.float(), mask))


def _read_checkpoint(pretrained: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """(state dict, config, where) from an aisfx folder or its safetensors file."""
    src = resolve_pretrained(pretrained)
    if src.kind not in ("file", "dir"):
        raise FileNotFoundError(f"aisfx: pretrained={pretrained!r} is not a local folder or file (expected the "
                                f"folder from `python -m anyalign.assets aisfx`, i.e. asset:aisfx, or its {WEIGHTS})")
    path = Path(src.location)
    weights = path / WEIGHTS if path.is_dir() else path
    cfg_path = weights.with_name(CONFIG)
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    return load_weights(weights), config, str(weights)


@dataclass
class AisfxOptions:
    """Options of the "aisfx" encoder (the checkpoint is `pretrained`)."""

    hop_fraction: float = field(default=0.5, metadata={
        "help": "hop between the ~2.3 s blocks of a long clip, as a fraction of a block (the package uses 0.5)"})
    hidden: int | None = field(default=None, metadata={
        "help": "width of the first conv block (64 in the real model; read from the checkpoint when given)"})


@register_encoder("aisfx", modality="audio", token_dim=512, pooled_dim=512, input_spec=AUDIO_INPUT_SPEC,
                  default_model="asset:aisfx", options=AisfxOptions)
def aisfx_encoder(pretrained: str | None, opts: AisfxOptions) -> AisfxAudioEncoder:
    """aisfx from its converted checkpoint (`pretrained`), or random weights of width `hidden` (default 64)."""
    state, config, hidden = None, {}, opts.hidden
    if pretrained is not None:
        state, config, where = _read_checkpoint(str(pretrained))
        found = int(state["conv_block1.conv1.weight"].shape[0]) if "conv_block1.conv1.weight" in state else None
        if found is None or (hidden is not None and hidden != found):
            raise ValueError(f"aisfx: {where} is not an aisfx checkpoint of hidden={hidden} "
                             f"(conv_block1.conv1.weight {'missing' if found is None else f'has {found} channels'})")
        hidden = found
    net = AisfxNet(hidden or 64)
    if state is not None:
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"aisfx: {where} does not fit the aisfx network: {len(missing)} missing "
                             f"({missing[:3]}), {len(unexpected)} unexpected ({unexpected[:3]}) weights")
    front = {**FRONT_END, **{k: v for k, v in (config.get("front_end") or {}).items() if k in FRONT_END}}
    return AisfxAudioEncoder(net.eval(), front, hop_fraction=opts.hop_fraction)

