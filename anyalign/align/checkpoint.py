"""A run's checkpoints and its exact resume.

A checkpoint (`checkpoints/step-NNNNNN`) holds the trainable weights, optimizer, scheduler, every rank's RNG and the
settings that fix the data order (world size, batch, accumulation, seed, data mode, the stream position). It is
written into a hidden temporary folder and renamed in one step, so a run killed at any moment leaves a complete one
or none; its last file is `checkpoint_manifest.json` (size and sha256 of every other file), so later damage is
detected. Resuming loads the newest intact one (damaged ones are set aside), warns when the settings differ (the run
goes on, but not exactly), and turns an architecture mismatch into one line.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ..fingerprint import file_sha256
from ..io import read_json, write_json
from .config import Recipe
from .launch import TrainingError
from .run_data import RunData

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
    """The newest intact checkpoint and the newer damaged ones skipped (each with its problem), warning for each."""
    bad: list[tuple[Path, str]] = []
    for ckpt in reversed(list_checkpoints(output_dir)):
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
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def expected_state(recipe: Recipe, accelerator: Any, data: RunData, step: int) -> dict[str, Any]:
    """The settings a checkpoint at `step` records and a resume compares: they fix the data order."""
    t = recipe.train
    state: dict[str, Any] = {"world_size": accelerator.num_processes, "batch_size": t.batch_size,
                             "grad_accum": t.grad_accum, "seed": recipe.seed, "data_mode": data.mode}
    if data.stream is not None:  # the stream position and the settings that fix the order
        state["stream"] = data.stream.state(step * t.grad_accum)
    return state


def save_run_checkpoint(state_io: Any, output_dir: Path, recipe: Recipe, data: RunData, step: int) -> Path:
    """Write the checkpoint of `step` (`state_io`: the accelerator, or FSDP's full-tensor view of it)."""
    state = {**expected_state(recipe, state_io, data, step), "time": time.time()}
    return save_checkpoint(state_io, output_dir, step, state, recipe.train.keep_checkpoints)


def resume_run(state_io: Any, output_dir: Path, recipe: Recipe, data: RunData) -> int:
    """Load the newest intact checkpoint of `output_dir` into the run; returns its step (0: none, start afresh)."""
    listed = list_checkpoints(output_dir)
    if not listed:
        logger.info("--resume: no checkpoint in %s, starting from scratch", output_dir)
        return 0
    state0 = read_state(listed[-1])
    need = None  # every rank's RNG state must be there when the process count is unchanged
    if state0.get("world_size") == state_io.num_processes:
        need = [f"random_states_{r}.pkl" for r in range(state_io.num_processes)]
    ckpt, bad = latest_good_checkpoint(output_dir, need=need)
    state_io.wait_for_everyone()  # every rank has chosen before damaged ones are moved aside
    if state_io.is_main_process:
        for path, _ in bad:
            logger.warning("moved the damaged checkpoint %s to %s", path, set_aside(path))
    state_io.wait_for_everyone()
    if ckpt is None:
        problems = "; ".join(f"{p.name}: {why}" for p, why in bad)
        raise TrainingError(f"--resume: no intact checkpoint in {checkpoint_dir(output_dir)} ({problems}); start "
                            f"again without --resume into another --output")
    if bad:
        logger.warning("--resume: resuming from %s, the newest intact checkpoint (skipped %s)", ckpt,
                       ", ".join(p.name for p, _ in bad))
    state = read_state(ckpt)
    step = int(state["step"])
    expect = expected_state(recipe, state_io, data, step)
    now = expect.pop("stream", None)
    diff = {k: (state.get(k), v) for k, v in expect.items() if state.get(k, "map") != v}
    if now is not None and "stream" in state:
        diff.update({f"stream.{k}": (state["stream"].get(k), v) for k, v in now.items()
                     if state["stream"].get(k) != v})
    if not (ckpt / f"random_states_{state_io.process_index}.pkl").is_file():
        diff["rng_state"] = ("missing", f"rank {state_io.process_index}")
    if diff:
        logger.warning("%s was written with different settings %s (saved, now): resume will not be exact", ckpt, diff)
    try:
        state_io.load_state(str(ckpt))
    except RuntimeError as e:  # the recipe's architecture changed since the checkpoint was written
        lines = [ln.strip() for ln in str(e).splitlines() if "mismatch" in ln or "key(s)" in ln]
        if not lines:
            raise
        raise TrainingError(f"--resume: {ckpt} was written for another architecture ({lines[0].rstrip('.')}"
                            f"{f'; {len(lines) - 1} more' if len(lines) > 1 else ''}); resume with the recipe "
                            "it was written with, or train into a new --output") from None
    logger.info("resumed from %s (step %d)", ckpt, step)
    return step


__all__ = ["MANIFEST_NAME", "STATE_NAME", "checkpoint_dir", "expected_state", "latest_checkpoint",
           "latest_good_checkpoint", "list_checkpoints", "read_state", "resume_run", "save_checkpoint",
           "save_run_checkpoint", "set_aside", "verify_checkpoint", "write_manifest"]
