"""IMU encoder for 6-axis accelerometer + gyroscope windows (AnyMAL's IMU modality, IMU2CLIP-style).

No public pretrained IMU weights load offline, so it trains from scratch in an adapter (`train_encoder: true`): a
strided 1-D conv stem, then a small Transformer; tokens `[B, T', D]` with a mask, pooled their masked mean. Inputs
(`[C, T]`/`[T, C]` arrays, `.npy`, `.csv`) are resampled to `target_rate`, optionally cut into `window_seconds`
windows (valid tokens concatenated) and normalised per channel (`window` z-score, or fixed `stats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..io import load_weights, resolve_pretrained
from .audio_io import resample
from .base import Encoder, EncoderOutput, InputError, join_windows, masked_mean, pad_sequences
from .registry import register_encoder

IMU_INPUT_SPEC = "array [6, T] or [T, 6] (accel xyz + gyro xyz), or a .npy/.csv file of one"


def window_stream(x: np.ndarray, sample_rate: float, window_seconds: float,
                  hop_seconds: float | None = None) -> np.ndarray:
    """Cut a long `[C, T]` stream into windows `[N, C, W]` of `window_seconds`, every `hop_seconds`.

    The last partial window is dropped unless the stream is shorter than one window (then it is returned alone).
    """
    win = int(round(window_seconds * sample_rate))
    hop = int(round((hop_seconds or window_seconds) * sample_rate))
    if win <= 0 or hop <= 0:
        raise ValueError(f"window/hop must cover at least one sample at {sample_rate} Hz")
    t = x.shape[-1]
    if t <= win:
        return x[None]
    starts = range(0, t - win + 1, hop)
    return np.stack([x[:, s : s + win] for s in starts])


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of training windows `[N, C, T]` (or one stream `[C, T]`) for `normalize="stats"`."""
    x = np.asarray(x, dtype=np.float64)
    flat = np.moveaxis(x, -2, 0).reshape(x.shape[-2], -1)  # [C, N*T]
    return flat.mean(1).tolist(), flat.std(1).tolist()


@dataclass
class IMUOptions:
    """Options of the "imu" encoder (the arguments of `IMUEncoder`)."""

    channels: int = field(default=6, metadata={"help": "sensor channels (accel xyz + gyro xyz)", "min": 1})
    dim: int = field(default=256, metadata={"help": "token width", "min": 1})
    depth: int = field(default=2, metadata={"help": "transformer layers", "min": 1})
    heads: int = field(default=4, metadata={"help": "attention heads", "min": 1})
    stride: int = field(default=4, metadata={"help": "time downsampling of the conv stem: 1, 2, 4 or 8"})
    dropout: float = field(default=0.1, metadata={"help": "transformer dropout"})
    sample_rate: float | None = field(default=None, metadata={"help": "the input's rate in Hz"})
    target_rate: float | None = field(default=None, metadata={"help": "resample to this rate in Hz"})
    max_tokens: int = field(default=1024, metadata={"help": "longest token sequence (position table size)",
                                                    "min": 1})
    window_seconds: float | None = field(default=None, metadata={
        "help": "cut longer streams into windows of this length (needs sample_rate)"})
    hop_seconds: float | None = field(default=None, metadata={"help": "window hop (default: window_seconds)"})
    normalize: Literal["none", "window", "stats"] = field(default="none", metadata={
        "help": "per-channel normalisation: none, window (z-score), stats (channel_mean/std)"})
    channel_mean: list[float] | None = field(default=None, metadata={"help": "normalize=stats: channel means"})
    channel_std: list[float] | None = field(default=None, metadata={"help": "normalize=stats: channel stds"})

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.stride not in (1, 2, 4, 8):
            raise ValueError(f"imu encoder: stride must be 1, 2, 4 or 8, got {self.stride}")
        if self.window_seconds is not None and not (self.target_rate or self.sample_rate):
            raise ValueError("imu encoder: window_seconds needs sample_rate (the input's rate in Hz)")
        if any(v is not None and v <= 0 for v in (self.window_seconds, self.hop_seconds)):
            raise ValueError(f"imu encoder: window_seconds/hop_seconds must be positive, got {self.window_seconds}/"
                             f"{self.hop_seconds}")
        if self.normalize == "stats":
            if self.channel_mean is None or self.channel_std is None:
                raise ValueError("imu encoder: normalize='stats' needs channel_mean and channel_std (channel_stats)")
            if len(self.channel_mean) != self.channels or len(self.channel_std) != self.channels:
                raise ValueError(f"imu encoder: channel_mean/channel_std need {self.channels} values each, got "
                                 f"{len(self.channel_mean)}/{len(self.channel_std)}")


class IMUEncoder(Encoder):
    """1-D conv stem + Transformer over IMU windows; trainable from scratch, frozen by default."""

    modality = "imu"
    extensions = (".npy", ".csv")
    input_spec = IMU_INPUT_SPEC

    def __init__(self, opts: IMUOptions | None = None) -> None:
        super().__init__()
        self.opts = o = opts or IMUOptions()
        self.channels, self.rate = o.channels, o.target_rate or o.sample_rate  # Hz of the arrays the network sees
        if o.normalize == "stats":
            self.channel_mean = np.asarray(o.channel_mean, np.float32)[:, None]  # [C, 1]
            self.channel_std = np.maximum(np.asarray(o.channel_std, np.float32), 1e-6)[:, None]
        self.token_dim = self.pooled_dim = o.dim
        n_down = int(math.log2(o.stride))  # stride-2 convolutions in the stem
        self.stem = nn.ModuleList(
            nn.Conv1d(o.channels if i == 0 else o.dim, o.dim, kernel_size=5, stride=2 if n_down else 1, padding=2)
            for i in range(max(n_down, 1)))
        self.act = nn.GELU()
        self.pos = nn.Parameter(torch.zeros(1, o.max_tokens, o.dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        block = nn.TransformerEncoderLayer(o.dim, o.heads, dim_feedforward=4 * o.dim, dropout=o.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(block, o.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(o.dim)

    def load(self, item: Any) -> np.ndarray:
        where = str(item) if isinstance(item, (str, Path)) else "IMU input"
        arr = channels_first(read_array(item, where), self.channels, where)
        if self.opts.sample_rate and self.opts.target_rate:
            arr = resample(arr, self.opts.sample_rate, self.opts.target_rate)
        if arr.shape[1] < 2:  # an empty window would become a NaN embedding that nothing can retrieve
            raise InputError(f"{where}: IMU window has {arr.shape[1]} time steps; expected at least 2")
        if self.opts.window_seconds is None and arr.shape[1] > self.max_steps:
            raise InputError(f"{where}: IMU window too long: {arr.shape[1]} steps > {self.max_steps} (max_tokens "
                             f"{self.pos.shape[1]}); set the encoder option window_seconds to window long streams")
        return arr  # [C, T]

    @property
    def max_steps(self) -> int:
        """The longest window (time steps) the positional table covers."""
        strides = sum(1 for conv in self.stem if conv.stride[0] == 2)
        return int(self.pos.shape[1]) * 2 ** strides

    def windows(self, x: np.ndarray) -> list[np.ndarray]:
        """One loaded stream `[C, T]` -> its normalised windows `[C, W]` (just itself without `window_seconds`)."""
        o = self.opts
        parts = [x] if o.window_seconds is None else list(window_stream(x, self.rate, o.window_seconds, o.hop_seconds))
        if o.normalize == "window":
            parts = [(p - p.mean(1, keepdims=True)) / np.maximum(p.std(1, keepdims=True), 1e-6) for p in parts]
        elif o.normalize == "stats":
            parts = [(p - self.channel_mean) / self.channel_std for p in parts]
        return [p.astype(np.float32, copy=False) for p in parts]

    def collate(self, items: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        groups = [self.windows(x) for x in items]
        seqs = [torch.from_numpy(np.ascontiguousarray(w)).T for ws in groups for w in ws]  # [T, C] each
        x, mask = pad_sequences(seqs)
        return {"x": x.transpose(1, 2).contiguous(), "mask": mask,  # [W, C, T], [W, T]
                "windows": torch.tensor([len(ws) for ws in groups])}  # [B]

    def encode(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        h, tmask = self.encode_windows(batch["x"], batch["mask"])  # [W, T', D], [W, T']
        h, tmask = join_windows(h, tmask, batch["windows"].tolist() if "windows" in batch else [1] * h.shape[0])
        return EncoderOutput(h, tmask, masked_mean(h, tmask))

    def encode_windows(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network: windows `[W, C, T]` with mask `[W, T]` -> tokens `[W, T', D]` and their mask `[W, T']`."""
        lengths = mask.sum(1)
        h = x
        for conv in self.stem:  # re-mask after every layer so padding never reaches valid positions
            h = h * (torch.arange(h.shape[-1], device=h.device)[None] < lengths[:, None])[:, None].to(h.dtype)
            h = self.act(conv(h))
            if conv.stride[0] == 2:  # kernel 5, padding 2, stride 2 maps L -> floor((L - 1) / 2) + 1
                lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        h = h.transpose(1, 2)  # [B, T', D]
        tmask = torch.arange(h.shape[1], device=h.device)[None] < lengths[:, None]  # [B, T']
        if h.shape[1] > self.pos.shape[1]:
            raise InputError(f"IMU window too long: {h.shape[1]} tokens > max_tokens={self.pos.shape[1]}")
        h = h + self.pos[:, : h.shape[1]]
        h = self.norm(self.transformer(h, src_key_padding_mask=~tmask))
        return h, tmask


def read_array(item: Any, where: str) -> np.ndarray:
    """`item` (an array, a tensor, or a `.npy`/`.csv` path: one row per time step, an optional header row) as a
    finite float32 array; an `InputError` naming the input otherwise."""
    if isinstance(item, (str, Path)):
        item = _read_file(Path(item))
    try:
        raw = np.asarray(item.detach().cpu() if torch.is_tensor(item) else item)
        if np.iscomplexobj(raw):  # a cast to float32 would silently drop the imaginary part
            raise InputError(f"{where}: complex values ({raw.dtype}); expected real sensor readings")
        arr = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{where}: expected a numeric array or a .npy/.csv path, got {type(item).__name__}: "
                         f"{item!r:.80}") from None
    if not np.isfinite(arr).all():
        raise InputError(f"{where}: contains NaN or inf")
    return arr


def channels_first(arr: np.ndarray, channels: int, where: str) -> np.ndarray:
    """A `[C, T]` or `[T, C]` array as `[C, T]` (`[C, C]` is read as `[C, T]`)."""
    if arr.ndim != 2 or channels not in arr.shape:
        raise InputError(f"{where}: expected a 2-D array with {channels} channels ([C, T] or [T, C]), got shape "
                         f"{arr.shape}")
    return arr if arr.shape[0] == channels else arr.T


def _read_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        try:
            return np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float32)
        except ValueError:  # a header row such as "ax,ay,az,gx,gy,gz"
            return np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float32, skiprows=1)
    except Exception as e:  # noqa: BLE001 - any decode failure names the file
        raise InputError(f"{path}: cannot read IMU data ({type(e).__name__}: {e})") from None


@register_encoder("imu", modality="imu", token_dim=256, pooled_dim=256, input_spec=IMU_INPUT_SPEC,
                  default_model="imu-conv-transformer (train from scratch)", options=IMUOptions)
def imu_encoder(pretrained: str | None, opts: IMUOptions) -> IMUEncoder:
    """IMU encoder; `pretrained=` a local safetensors/.pt state dict of this architecture."""
    enc = IMUEncoder(opts)
    if pretrained is not None:
        src = resolve_pretrained(pretrained)
        if src.kind != "file":
            raise FileNotFoundError(f"imu encoder: pretrained={pretrained!r} must be a local weights file")
        state = load_weights(src.location)
        try:
            enc.load_state_dict(state)
        except RuntimeError as e:  # missing/unexpected keys or shape mismatch: another architecture or size
            raise ValueError(f"{pretrained}: not an imu encoder checkpoint for these options "
                             f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})") from None
    return enc
