"""`autocast: auto` for frozen encoders: bf16 only where this machine runs it faster than fp32.

On a CPU bf16 is chosen only when /proc/cpuinfo lists `avx512_bf16` or `amx_bf16` AND a ~0.2 s GEMM probe (cached per
CPU model and torch version under `$ANYALIGN_CACHE`) shows it `MIN_SPEEDUP` faster (without native bf16 it runs at
0.2x fp32); on CUDA it is bf16 where the GPU supports it.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from functools import cache
from pathlib import Path

import torch

from ..io import cache_dir, write_json

logger = logging.getLogger(__name__)

MIN_SPEEDUP = 1.15  # bf16 must beat fp32 by this factor to be chosen on a CPU
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo(*keys: str) -> str:
    """The value of the first /proc/cpuinfo line starting with one of `keys` ("" where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(keys)), "")


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (empty where /proc/cpuinfo does not exist)."""
    return set(_cpuinfo("flags", "Features").split())


def probe_cpu_bf16(n: int = 512, k: int = 1536, repeats: int = 5) -> float:
    """Speed of bf16 autocast over fp32 for a `[n, k] x [k, k]` linear layer on this CPU (>1: bf16 faster)."""
    x, lin = torch.randn(n, k), torch.nn.Linear(k, k)

    def run(bf16: bool) -> float:
        times = []
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                lin(x)
                if i:
                    times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    run(False), run(True)  # warm-up (kernels, caches)
    return run(False) / run(True)


@cache
def _cpu_bf16_is_faster() -> bool:
    flags = cpu_flags()
    if not any(f in flags for f in _BF16_FLAGS):
        return False  # no native bf16: emulated bf16 is always slower
    key = f"{_cpuinfo('model name') or platform.machine()}|torch {torch.__version__}|threads {torch.get_num_threads()}"
    path = cache_dir("autocast_probe.json")
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        cached[key] = probe_cpu_bf16()
        try:
            write_json(path, cached)  # makes the cache folder
        except OSError:  # a read-only cache folder: probe again next time
            pass
        logger.info("bf16 autocast probe on %s: %.2fx fp32", key, cached[key])
    return float(cached[key]) >= MIN_SPEEDUP


def auto_autocast_dtype(device: torch.device | str = "cpu") -> torch.dtype | None:
    """The dtype `autocast: auto` means on `device`: bf16 where it is faster, None (fp32) otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_bf16_is_faster() else None
    return None


_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": None, "float32": None, "none": None, "no": None, "": None}
AUTOCAST_NAMES = ("auto", *_DTYPES)


def resolve_autocast(value: str | torch.dtype | None, device: torch.device | str = "cpu") -> torch.dtype | None:
    """An `autocast` or `weights_dtype` setting (None, a dtype, "bf16", "fp16", "fp32"/"no", "auto") as a dtype
    (None: fp32)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if value.lower() == "auto":
        return auto_autocast_dtype(device)
    if value.lower() not in _DTYPES:
        raise ValueError(f"autocast: expected auto, bf16, fp16 or no, got {value!r}")
    return _DTYPES[value.lower()]


__all__ = ["AUTOCAST_NAMES", "MIN_SPEEDUP", "auto_autocast_dtype", "cpu_flags", "probe_cpu_bf16", "resolve_autocast"]
