"""A run's checkpoints and its exact resume.

A checkpoint holds the trainable weights, optimizer, scheduler, every rank's RNG and the settings that fix the data
order (world size, batch, accumulation, seed, data mode, the stream position); `align/checkpoint.py` writes it with
a manifest of sizes and hashes. Resuming loads the newest intact one (damaged ones are set aside), warns when the
settings differ (the run goes on, but not exactly), and turns an architecture mismatch into one line.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .checkpoint import (
    checkpoint_dir,
    latest_good_checkpoint,
    list_checkpoints,
    read_state,
    save_checkpoint,
    set_aside,
)
from .config import Recipe
from .launch import TrainingError
from .run_data import RunData

logger = logging.getLogger(__name__)


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
    acc = state_io
    listed = list_checkpoints(output_dir)
    if not listed:
        logger.info("--resume: no checkpoint in %s, starting from scratch", output_dir)
        return 0
    state0 = read_state(listed[-1])
    need = None  # every rank's RNG state must be there when the process count is unchanged
    if state0.get("world_size") == acc.num_processes:
        need = [f"random_states_{r}.pkl" for r in range(acc.num_processes)]
    ckpt, bad = latest_good_checkpoint(output_dir, need=need)
    acc.wait_for_everyone()  # every rank has chosen before damaged ones are moved aside
    if acc.is_main_process:
        for path, _ in bad:
            logger.warning("moved the damaged checkpoint %s to %s", path, set_aside(path))
    acc.wait_for_everyone()
    if ckpt is None:
        problems = "; ".join(f"{p.name}: {why}" for p, why in bad)
        raise TrainingError(f"--resume: no intact checkpoint in {checkpoint_dir(output_dir)} ({problems}); start "
                            f"again without --resume into another --output")
    if bad:
        logger.warning("--resume: resuming from %s, the newest intact checkpoint (skipped %s)", ckpt,
                       ", ".join(p.name for p, _ in bad))
    state = read_state(ckpt)
    step = int(state["step"])
    expect = expected_state(recipe, acc, data, step)
    expect.pop("stream", None)
    diff = {k: (state.get(k), v) for k, v in expect.items() if state.get(k, "map") != v}
    if data.stream is not None and "stream" in state:
        now = data.stream.state(step * recipe.train.grad_accum)
        diff.update({f"stream.{k}": (state["stream"].get(k), v) for k, v in now.items()
                     if state["stream"].get(k) != v})
    if not (ckpt / f"random_states_{acc.process_index}.pkl").is_file():
        diff["rng_state"] = ("missing", f"rank {acc.process_index}")
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


__all__ = ["expected_state", "resume_run", "save_run_checkpoint"]
