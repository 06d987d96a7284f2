"""FSDP state I/O: a sharded run's checkpoints gathered to full tensors, in the files and keys of a DDP run's.

`FSDPStateIO` stands in for the accelerator where checkpoints are saved and loaded (`align/resume.py`): the model and
optimizer state go through `FSDPState`'s full state dicts into accelerate's file names, while the scheduler and every
rank's RNG still go through accelerate; so either kind of run resumes from the other's checkpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .fsdp import FSDPState

MODEL_FILE = "model.safetensors"  # accelerate's names, so DDP and FSDP checkpoints read the same
OPTIMIZER_FILE = "optimizer.bin"


def save_checkpoint_files(state: FSDPState, optimizer: torch.optim.Optimizer, directory: Path, is_main: bool) -> None:
    """Model and optimizer state, gathered, in the files and key layout of a DDP checkpoint."""
    from safetensors.torch import save_file

    model_sd = {k: v.contiguous() for k, v in state.full_state_dict().items()}
    optim_sd = state.full_optimizer_state(optimizer)
    if is_main:
        save_file(model_sd, str(directory / MODEL_FILE), metadata={"format": "pt"})
        torch.save(optim_sd, directory / OPTIMIZER_FILE)


def load_checkpoint_files(state: FSDPState, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """The inverse of `save_checkpoint_files`: full tensors read, then sharded into the run."""
    from safetensors.torch import load_file

    state.load_full_state_dict(load_file(str(directory / MODEL_FILE)))
    state.load_full_optimizer_state(optimizer, torch.load(directory / OPTIMIZER_FILE, map_location="cpu",
                                                          weights_only=True))



class FSDPStateIO:
    """The accelerator as `save_checkpoint` / `resume_run` use it, with the model and optimizer state gathered to
    full tensors (accelerate's files and names) instead of accelerate's per-rank view; scheduler and RNG via
    accelerate."""

    def __init__(self, accelerator: Any, fsdp: FSDPState, optimizer: Any) -> None:
        self._acc, self._fsdp, self._optimizer = accelerator, fsdp, optimizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._acc, name)

    @contextlib.contextmanager
    def _without_optimizers(self) -> Iterator[None]:
        kept, self._acc._optimizers = self._acc._optimizers, []
        try:
            yield
        finally:
            self._acc._optimizers = kept

    def save_state(self, output_dir: str) -> None:
        """Model and optimizer gathered (main process writes), the rest through accelerate."""
        save_checkpoint_files(self._fsdp, self._optimizer, Path(output_dir), self._acc.is_main_process)
        with self._without_optimizers():
            self._acc.save_state(output_dir)

    def load_state(self, input_dir: str) -> None:
        """The inverse of `save_state`."""
        with self._without_optimizers():
            self._acc.load_state(input_dir)
        load_checkpoint_files(self._fsdp, self._optimizer, Path(input_dir))


def state_io(accelerator: Any, fsdp: FSDPState | None, optimizer: Any) -> Any:
    """What saves and loads a run's checkpoints: the accelerator itself, or its FSDP full-tensor view."""
    return accelerator if fsdp is None else FSDPStateIO(accelerator, fsdp, optimizer)


__all__ = ["FSDPStateIO", "MODEL_FILE", "OPTIMIZER_FILE", "load_checkpoint_files", "save_checkpoint_files",
           "state_io"]
