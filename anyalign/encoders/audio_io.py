"""Decode one raw audio input (file path, `(array, sample_rate)` or a bare 1-D array) to mono float32 at a target rate,
the same way for every audio encoder (soundfile reads, polyphase resampling, an `InputError` naming a bad input).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from .base import Encoder, InputError


def _audio_extensions() -> tuple[str, ...]:
    """Suffixes libsndfile decodes here; `.mp3` only when this libsndfile build has MP3 support (>= 1.1)."""
    exts = [".wav", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".au", ".caf", ".w64"]
    if "MP3" in sf.available_formats():
        exts.append(".mp3")
    return tuple(exts)


AUDIO_EXTENSIONS: tuple[str, ...] = _audio_extensions()
AUDIO_INPUT_SPEC = (
    f"audio: file path ({' '.join(AUDIO_EXTENSIONS)}), (array, sample_rate) tuple, or a 1-D array already at the "
    f"encoder's sample rate; multi-channel audio is mixed to mono"
)


def load_audio(item: Any, target_rate: int) -> np.ndarray:
    """`item` as a mono float32 waveform `[N]` at `target_rate` Hz (a bare array is taken to be at that rate; 2-D
    arrays are mixed down over their shorter axis); an `InputError` naming the input otherwise."""
    if isinstance(item, (str, os.PathLike)):
        wave, rate, where = *_read_file(Path(item)), str(item)
    elif isinstance(item, tuple) and len(item) == 2 and np.isscalar(item[1]):
        wave, rate, where = _to_mono(item[0], "audio array"), item[1], "audio array"
        if not rate or float(rate) <= 0:
            raise InputError(f"audio array: sample rate must be a positive number, got {rate!r}")
    elif isinstance(item, (np.ndarray, torch.Tensor)):
        wave, rate, where = _to_mono(item, "audio array"), target_rate, "audio array"
    else:
        raise InputError(f"expected an audio file path, (array, sample_rate) or a 1-D array, got "
                         f"{type(item).__name__}: {item!r:.80}")
    if wave.size == 0:
        raise InputError(f"{where}: no audio samples")
    if not np.isfinite(wave).all():
        raise InputError(f"{where}: audio contains NaN or inf")
    return resample(wave, float(rate), target_rate)


def resample(wave: np.ndarray, rate: float, target_rate: float) -> np.ndarray:
    """Polyphase resampling along the last axis from `rate` to `target_rate` Hz (float32 out)."""
    if rate == target_rate:
        return wave.astype(np.float32, copy=False)
    frac = Fraction(target_rate / rate).limit_denominator(10_000)  # exact for the usual integer rates
    return resample_poly(wave, frac.numerator, frac.denominator, axis=-1).astype(np.float32)


def split_windows(wave: np.ndarray, size: int, *, min_fraction: float = 0.5) -> list[np.ndarray]:
    """Cut a 1-D waveform into consecutive windows of `size` samples; a tail shorter than `min_fraction` of a
    window is dropped unless it is all there is."""
    n = int(wave.shape[-1])
    if n <= size:
        return [wave]
    starts = list(range(0, n, size))
    if n - starts[-1] < min_fraction * size:
        starts = starts[:-1]
    return [wave[s:s + size] for s in starts]


def _read_file(path: Path) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise InputError(f"{path}: audio file not found")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [N, C]
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types; any decode failure names the file
        detail = getattr(e, "error_string", None) or f"{type(e).__name__}: {e}"
        raise InputError(f"{path}: cannot read as audio ({detail})") from None
    return data.mean(axis=1), int(rate)


def _to_mono(arr: Any, where: str) -> np.ndarray:
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().float().numpy()
    arr = np.asarray(arr)
    if np.issubdtype(arr.dtype, np.integer):  # PCM integers -> [-1, 1]
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    elif not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{where}: expected a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 2:
        arr = arr.mean(axis=0 if arr.shape[0] <= arr.shape[1] else 1)  # channel axis is the shorter one
    elif arr.ndim != 1:
        raise InputError(f"{where}: expected shape [N], [C, N] or [N, C], got {tuple(arr.shape)}")
    return arr


class AudioEncoder(Encoder):
    """Base of the audio encoders: raw audio decoded to a mono waveform `[N]` at the model's `sample_rate`."""

    modality = "audio"
    extensions = AUDIO_EXTENSIONS
    input_spec = AUDIO_INPUT_SPEC
    sample_rate: int

    def load(self, item: Any) -> np.ndarray:
        return load_audio(item, self.sample_rate)  # [N]
