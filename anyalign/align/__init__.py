"""Alignment training: turn paired data into trained adapters (ImageBind binding, AnyMAL/LLaVA LLM alignment).

    recipe = load_recipe("configs/imu_text_contrastive.yaml", ["train.max_steps=200"])
    result = train(recipe)            # or: anyalign train configs/imu_text_contrastive.yaml train.max_steps=200
    result.metrics["eval/imu/zeroshot_acc"]
"""

from __future__ import annotations

from .build import build_model
from .config import Recipe, load_recipe
from .losses import InfoNCE, gather_with_grad, info_nce
from .model import AlignmentModel
from .trainer import Trainer, TrainingError, TrainResult, train

__all__ = ["AlignmentModel", "InfoNCE", "Recipe", "TrainResult", "Trainer", "TrainingError", "build_model",
           "gather_with_grad", "info_nce", "load_recipe", "train"]
