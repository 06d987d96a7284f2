"""Training checkpoints: `accelerator.save_state` into a hidden temporary folder, then one atomic rename.

A run killed at any moment (SIGKILL included) leaves either a complete `checkpoints/step-NNNNNN` folder or
none; half-written `.step-*.tmp` folders are ignored by `latest_checkpoint` and removed by the next save.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..io import read_json, write_json

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
_PATTERN = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _PATTERN.match(p.name)) and
             (p / STATE_NAME).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    return read_json(Path(path) / STATE_NAME)


def save_checkpoint(accelerator: Any, output_dir: str | os.PathLike, step: int, state: dict[str, Any],
                    keep: int) -> Path:
    """Write `checkpoints/step-{step}` atomically on every rank (collective); keep the newest `keep`."""
    root = checkpoint_dir(output_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".step-*.tmp"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model (trainable part), optimizer, scheduler, RNG of every rank
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_NAME, {**state, "step": step})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    logger.info("checkpoint %s", final)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["STATE_NAME", "checkpoint_dir", "latest_checkpoint", "list_checkpoints", "read_state", "save_checkpoint"]
