"""What a training run is launched with: the accelerator (with the launcher's settings), the optimizer and its
schedule, and the check that a run folder holds nothing anyalign did not write."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..adapter import CONFIG_NAME
from ..language_model import llm_backend
from ..projectors.shared import SHARED_DIR
from .config import Recipe
from .model import AlignmentModel

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, inconsistent resume); the message says what to do."""


class BatchLargerThanData(TrainingError):
    """`train.batch_size` exceeds the `examples` the training data holds (calibration rotations shrink the batch)."""

    def __init__(self, batch_size: int, examples: int) -> None:
        super().__init__(f"train.batch_size={batch_size} is larger than the {examples} training examples; lower it")
        self.examples = examples


def launcher_settings(recipe: Recipe) -> None:
    """Fill the recipe's unset `train.mixed_precision` / `train.grad_accum` from the launcher (`accelerate launch
    --mixed_precision bf16 --gradient_accumulation_steps 4`, or `accelerate config`, which set ACCELERATE_* variables);
    a recipe value the launcher contradicts wins, with one warning line."""
    t = recipe.train
    for key, env, default, cast in (("mixed_precision", "ACCELERATE_MIXED_PRECISION", "no", str),
                                    ("grad_accum", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS", 1, int)):
        launcher = os.environ.get(env)
        value = cast(launcher) if launcher else None
        if getattr(t, key) is None:
            setattr(t, key, value if value is not None else default)
        elif value is not None and value != getattr(t, key):
            logger.warning("train.%s=%s from the recipe overrides the launcher's %s=%s", key, getattr(t, key), env,
                           launcher)


def make_accelerator(recipe: Recipe, output_dir: Path, find_unused: bool, fsdp: bool) -> Any:
    """The `Accelerator` of a run: the recipe's precision and accumulation, gloo on CPU, trackers in `output_dir`."""
    from accelerate import Accelerator
    from accelerate.utils import (
        DataLoaderConfiguration,
        DistributedDataParallelKwargs,
        GradientAccumulationPlugin,
        ProjectConfiguration,
    )

    launcher_settings(recipe)
    t = recipe.train
    # CPU-only multi-process runs (torchrun / accelerate launch --cpu) need cpu=True for accelerate to use gloo
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if fsdp:
        # the trainer shards with FSDP2 itself (align/fsdp.py); accelerate's plugin (GPU-only in 1.x: on CPU it
        # silently became DDP) must not wrap the model a second time
        os.environ.pop("ACCELERATE_USE_FSDP", None)
    return Accelerator(
        cpu=multi_cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"),
        mixed_precision=t.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=t.grad_accum, sync_with_dataloader=False),
        dataloader_config=DataLoaderConfiguration(split_batches=True),  # batch_size is the global batch
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
        log_with=t.trackers() or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "tensorboard")),
    )


def make_schedule(optimizer: torch.optim.Optimizer, recipe: Recipe) -> Any:
    """The recipe's learning-rate schedule (constant, cosine or linear, after `train.warmup_steps`)."""
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    t = recipe.train
    if t.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, t.warmup_steps)
    fn = get_cosine_schedule_with_warmup if t.schedule == "cosine" else get_linear_schedule_with_warmup
    return fn(optimizer, t.warmup_steps, t.max_steps)


def make_optimizer(model: AlignmentModel, recipe: Recipe, *, sharded: bool = False) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and temperatures; trained encoders may use their own lr.
    `sharded` (FSDP): DTensor and replicated parameters mix in a group, which the fused and foreach kernels refuse."""
    t = recipe.train
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.trainable_parameters():
        is_encoder = name.startswith("adapters.") and ".encoder." in name
        lr = t.encoder_lr if is_encoder and t.encoder_lr is not None else t.lr
        wd = 0.0 if p.dim() < 2 else t.weight_decay
        groups.setdefault((lr, wd), []).append(p)
    if not groups:
        raise TrainingError("nothing to train: every parameter is frozen")
    param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    if sharded:
        return torch.optim.AdamW(param_groups, lr=t.lr, betas=tuple(t.betas), foreach=False)
    try:  # one fused kernel per step (CPU and CUDA) instead of a Python loop over tensors
        return torch.optim.AdamW(param_groups, lr=t.lr, betas=tuple(t.betas), fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused implementation
        return torch.optim.AdamW(param_groups, lr=t.lr, betas=tuple(t.betas))


def check_run_folder(output_dir: Path) -> None:
    """Refuse a run folder whose `adapters/` or `mllm/` anyalign did not write: a finished run replaces them, and no
    command deletes what it did not write (a folder of saved adapters, `_shared/` parts or an LLM bundle is ours)."""
    adapters, mllm = output_dir / "adapters", output_dir / "mllm"
    if adapters.is_symlink() or adapters.is_file():
        raise TrainingError(f"{adapters}: not a folder of saved adapters; choose another train.output_dir")
    if adapters.is_dir():
        foreign = sorted(p.name for p in adapters.iterdir()
                         if not (p.is_dir() and (p.name == SHARED_DIR or (p / CONFIG_NAME).is_file())))
        if foreign:
            raise TrainingError(f"{adapters}: holds {', '.join(foreign[:3])} that anyalign did not write; a finished "
                                f"run would replace the folder: move them or choose another train.output_dir")
    if (mllm.exists() or mllm.is_symlink()) and not (mllm.is_dir() and not mllm.is_symlink() and
                                                      (not any(mllm.iterdir()) or llm_backend().is_bundle(mllm))):
        raise TrainingError(f"{mllm}: not an LLM bundle written by anyalign; a finished run would replace it: move it "
                            f"or choose another train.output_dir")


__all__ = ["TrainingError", "check_run_folder", "launcher_settings", "make_accelerator", "make_optimizer",
           "make_schedule"]
