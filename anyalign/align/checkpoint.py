"""Training checkpoints: `accelerator.save_state` into a hidden temporary folder, then one atomic rename.

A run killed at any moment (SIGKILL included) leaves either a complete `checkpoints/step-NNNNNN` folder or
none; half-written `.step-*.tmp` folders are ignored by `latest_checkpoint` and removed by the next save.
The last file written into a checkpoint is `checkpoint_manifest.json` (size and sha256 of every other file), so a
checkpoint damaged later (a truncated RNG state, a disk error, a partial copy) is detected by `verify_checkpoint`;
`latest_good_checkpoint` then falls back to the newest intact one with a warning.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..fingerprint import file_sha256
from ..io import read_json, write_json

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
MANIFEST_NAME = "checkpoint_manifest.json"
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


def write_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Record size and sha256 of every file of a checkpoint folder in its manifest (written last)."""
    path = Path(path)
    files = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        files[f.relative_to(path).as_posix()] = {"size": f.stat().st_size, "sha256": file_sha256(f)}
    manifest = {"format": 1, "files": files}
    write_json(path / MANIFEST_NAME, manifest)
    return manifest


def verify_checkpoint(path: str | os.PathLike, *, need: list[str] | None = None) -> str | None:
    """None when the checkpoint is intact, else what is wrong (one line). `need`: files that must be listed."""
    path = Path(path)
    try:
        manifest = read_json(path / MANIFEST_NAME)
        read_state(path)
    except (OSError, ValueError) as e:
        return f"unreadable ({str(e).splitlines()[0]})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        return f"{MANIFEST_NAME} lists no files"
    for name in need or []:
        if name not in files:
            return f"{name} is missing (not written by this checkpoint)"
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != info.get("size"):
            return f"{name} has {size} bytes, {info.get('size')} were written (truncated or altered)"
        if file_sha256(f) != info.get("sha256"):
            return f"{name} does not match its sha256 (corrupt)"
    return None


def latest_good_checkpoint(output_dir: str | os.PathLike, *, need: list[str] | None = None
                           ) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint and the newer damaged ones skipped (each with its problem), warning for each.

    A checkpoint without a manifest (written before manifests existed) is used with a warning that it cannot be
    verified."""
    bad: list[tuple[Path, str]] = []
    for ckpt in reversed(list_checkpoints(output_dir)):
        if not (ckpt / MANIFEST_NAME).is_file():
            logger.warning("%s has no %s (written by an older version): using it unverified", ckpt, MANIFEST_NAME)
            return ckpt, bad
        problem = verify_checkpoint(ckpt, need=need)
        if problem is None:
            return ckpt, bad
        logger.warning("checkpoint %s is damaged: %s; falling back to an older one", ckpt, problem)
        bad.append((ckpt, problem))
    return None, bad


def set_aside(ckpt: Path) -> Path:
    """Rename a damaged checkpoint out of the way (kept for inspection, never listed or pruned again)."""
    target = ckpt.with_name(f".{ckpt.name}.damaged")
    n = 1
    while target.exists():
        target = ckpt.with_name(f".{ckpt.name}.damaged{n}")
        n += 1
    os.replace(ckpt, target)
    return target


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
        write_manifest(tmp)  # last: a checkpoint whose files all match it is complete and intact
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


__all__ = ["MANIFEST_NAME", "STATE_NAME", "checkpoint_dir", "latest_checkpoint", "latest_good_checkpoint",
           "list_checkpoints", "read_state", "save_checkpoint", "set_aside", "verify_checkpoint", "write_manifest"]
