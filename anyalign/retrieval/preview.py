"""Small previews of array inputs (IMU windows and other `[C, T]` signals) for the search page's plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

MAX_CHANNELS = 6
POINTS = 64
MAX_FILE_BYTES = 8 << 20


def signal_preview(x: Any, *, points: int = POINTS, max_channels: int = MAX_CHANNELS) -> list[list[float]] | None:
    """`[C, T]` (or `[T]`) numbers -> at most `max_channels` rows of `points` means over equal time bins, rounded;
    None for anything that is not a finite numeric array with a time axis."""
    try:
        a = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] < 2 or not np.isfinite(a).all():
        return None
    if a.shape[0] > a.shape[1]:  # [T, C] with more steps than channels: channels first
        a = a.T
    a = a[:max_channels]
    edges = np.linspace(0, a.shape[1], min(points, a.shape[1]) + 1).astype(int)
    binned = np.stack([a[:, s:e].mean(1) for s, e in zip(edges[:-1], edges[1:])], axis=1)  # [C, P]
    return np.round(binned, 4).tolist()


def file_preview(path: str | os.PathLike) -> list[list[float]] | None:
    """The preview of a `.npy` array file (read without unpickling; None when it is not a small numeric array)."""
    p = Path(path)
    try:
        if p.suffix.lower() != ".npy" or p.stat().st_size > MAX_FILE_BYTES:
            return None
        return signal_preview(np.load(p, allow_pickle=False))
    except (OSError, ValueError):
        return None


__all__ = ["file_preview", "signal_preview"]
