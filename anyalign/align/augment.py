"""Augmentation of raw sensor windows `[C, T]` for training (never for evaluation data).

`augment_series` applies, each when its option is on: a random 3-D rotation of every axis triad alike (`rotate`),
time warping, a random resized crop, a circular shift, per-channel and whole-window gains, and jitter (rotation,
whole-window scaling and time warping as in UniMTS, NeurIPS 2024). Randomness comes only from the generator passed in.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import AugmentSpec


def random_rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    """A `[3, 3]` rotation about a uniformly random axis by an angle uniform in [-max_degrees, max_degrees];
    `max_degrees >= 180` gives a uniformly random rotation (Haar measure on SO(3))."""
    if max_degrees >= 180:
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        q = q * np.sign(np.diag(r))  # unique QR: q is Haar-distributed over O(3)
        if np.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]
        return q.astype(np.float32)
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis) + 1e-12
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return (np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)).astype(np.float32)  # Rodrigues


def sensor_triads(channels: int, triads: list[list[int]] | None) -> list[list[int]]:
    """The channel triads that rotate together: `triads`, else consecutive triples (accel xyz, gyro xyz, ...)."""
    if triads is None:
        if channels % 3:
            raise ValueError(f"augment.rotate: {channels} channels are not whole xyz triads; name them with "
                             f"augment.triads (e.g. [[0, 1, 2], [3, 4, 5]])")
        return [[i, i + 1, i + 2] for i in range(0, channels, 3)]
    for t in triads:
        if len(t) != 3 or not all(0 <= int(i) < channels for i in t):
            raise ValueError(f"augment.triads: {t} is not three channel indices below {channels}")
    return [[int(i) for i in t] for t in triads]


def rotate_frame(x: np.ndarray, rotation: np.ndarray, triads: list[list[int]]) -> np.ndarray:
    """Every triad of `x` `[C, T]` turned by the same `[3, 3]` rotation (other channels untouched)."""
    out = x.copy()
    for t in triads:
        out[t] = rotation @ x[t]  # [3, T]
    return out


def time_warp(x: np.ndarray, sigma: float, rng: np.random.Generator, knots: int = 4) -> np.ndarray:
    """Resample `x` `[C, T]` along a smooth random time axis: the local speed is 1 + N(0, sigma) at `knots + 2`
    evenly spaced points, interpolated, integrated and rescaled so the warped window spans the same length."""
    c, t = x.shape
    speed = np.clip(rng.normal(1.0, sigma, size=knots + 2), 0.1, None)
    curve = np.interp(np.arange(t), np.linspace(0, t - 1, knots + 2), speed)  # [T] local speed
    pos = np.concatenate([[0.0], np.cumsum(curve[:-1])])
    pos = pos * (t - 1) / max(pos[-1], 1e-9)  # [T] where each output step reads the input
    grid = np.arange(t)
    return np.stack([np.interp(pos, grid, x[i]) for i in range(c)]).astype(np.float32)


def augment_series(x: np.ndarray, spec: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
    """The augmented copy of a `[C, T]` window (see the module docstring for the order)."""
    x = np.asarray(x, dtype=np.float32)
    c, t = x.shape
    if spec.rotate > 0:
        x = rotate_frame(x, random_rotation(rng, spec.rotate), sensor_triads(c, spec.triads))
    if spec.time_warp > 0:
        x = time_warp(x, spec.time_warp, rng)
    if spec.crop < 1.0:
        length = max(2, int(round(t * rng.uniform(spec.crop, 1.0))))
        start = int(rng.integers(0, t - length + 1))
        window = torch.from_numpy(np.ascontiguousarray(x[:, start:start + length]))[None]  # [1, C, L]
        x = torch.nn.functional.interpolate(window, size=t, mode="linear", align_corners=True)[0].numpy()
    if spec.shift > 0:
        x = np.roll(x, int(rng.integers(-int(spec.shift * t), int(spec.shift * t) + 1)), axis=1)
    if spec.scale > 0:
        x = x * rng.normal(1.0, spec.scale, size=(c, 1)).astype(np.float32)
    if spec.scale_all > 0:
        x = x * np.float32(max(rng.normal(1.0, spec.scale_all), 0.1))
    if spec.jitter > 0:
        x = x + rng.normal(0.0, 1.0, size=x.shape).astype(np.float32) * spec.jitter * (x.std(1, keepdims=True) + 1e-6)
    return x.astype(np.float32)


__all__ = ["augment_series", "random_rotation", "rotate_frame", "sensor_triads", "time_warp"]
