"""`train()`: one recipe end to end: the `Trainer`'s run, then what the saved adapters record for zero-shot use
(their seen classes and, with `data.validation`, the calibration tuned there; align/calibration.py)."""

from __future__ import annotations

import os

from .calibration import record_zeroshot
from .config import Recipe
from .trainer import Callback, Trainer, TrainResult


def train(recipe: Recipe, *, output_dir: str | os.PathLike | None = None, resume: bool = False,
          callbacks: list[Callback] | None = None) -> TrainResult:
    """Train one recipe end to end (see `Trainer`); the saved adapters then record their seen classes and, with
    `data.validation`, the zero-shot calibration tuned there."""
    result = Trainer(recipe, output_dir=output_dir, callbacks=callbacks).fit(resume=resume)
    record_zeroshot(recipe, result.output_dir, result.adapters)
    return result


__all__ = ["train"]
