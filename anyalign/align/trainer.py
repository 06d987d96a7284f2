"""The alignment training loop on accelerate: mixed precision, accumulation, DDP or FSDP2 via `accelerate launch`.

Exact resume: the data order is a pure function of (seed, epoch) and per-sample randomness of (seed, epoch, index);
a checkpoint holds the trainable weights, optimizer, scheduler, every rank's RNG and the stream position, so a run
killed and resumed ends with the same weights as an uninterrupted one. Where the parts live: the accelerator,
optimizer and schedule in `launch.py`, the run's data in `run_data.py` (large feature sets streamed, `stream.py`),
checkpoints and resume in `checkpoint.py`, FSDP2 sharding and its state I/O in `fsdp.py`, the model in `build.py`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from tqdm.auto import tqdm

from ..config import to_dict
from ..io import atomic_path, write_json
from .build import build_model
from .calibration import record_zeroshot
from .captions import captions_used
from .checkpoint import latest_checkpoint, list_checkpoints, resume_run, save_run_checkpoint
from .config import Recipe
from .evaluate import evaluate_model
from .fsdp import FSDPState, FSDPStateIO, fsdp_requested, shard_model
from .launch import TrainingError, check_run_folder, make_accelerator, make_optimizer, make_schedule
from .metrics_log import MetricsLog, plot_curves
from .model import AlignmentModel
from .run_data import build_run_data, fill_text_table
from .tasks import term_name

logger = logging.getLogger(__name__)


class Callback(Protocol):
    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None: ...


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    adapters: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    curves: Path | None = None


class Trainer:
    """Builds model, data, optimizer and accelerator from a recipe; `fit()` trains, evaluates and saves."""

    def __init__(self, recipe: Recipe, *, output_dir: str | os.PathLike | None = None,
                 callbacks: list[Callback] | None = None) -> None:
        from accelerate.utils import set_seed

        self.recipe = recipe
        self.output_dir = Path(output_dir) if output_dir is not None else recipe.output_path
        check_run_folder(self.output_dir)  # before anything is built: finishing replaces adapters/ and mllm/
        self.callbacks = list(callbacks or [])
        t = recipe.train
        tasks = {s.task for s in recipe.data.train}
        find_unused = len(recipe.adapters) > 1 or len(tasks) > 1 or recipe.model.lora is not None
        want_fsdp = fsdp_requested(recipe)
        self.accelerator = acc = make_accelerator(recipe, self.output_dir, find_unused, want_fsdp)
        if t.batch_size % acc.num_processes:
            raise TrainingError(f"train.batch_size={t.batch_size} is the global batch and must be divisible by the "
                                f"{acc.num_processes} processes")
        sharded = want_fsdp and acc.num_processes > 1
        if want_fsdp and not sharded:
            logger.warning("FSDP was requested but this is a single process: training unsharded")
        if sharded and recipe.data.eval:  # evaluation runs on the main process alone: sharded units wait for the rest
            raise TrainingError("FSDP runs do not evaluate during training: drop data.eval (evaluate the saved "
                                "adapters with `anyalign eval`) or train with DDP")
        set_seed(recipe.seed)
        self.model = build_model(recipe)
        self.fsdp: FSDPState | None = None
        self.distributed = "ddp" if acc.num_processes > 1 else "none"
        if sharded:
            self.model.to(acc.device)
            self.fsdp = shard_model(self.model, acc.device)
            self.distributed = "fsdp2"
            logger.info("distributed: fsdp2 over %d processes (%s): %d LLM layer units + the adapters' root unit",
                        acc.num_processes, acc.device.type, self.fsdp.layers)
        self.data = build_run_data(recipe, self.model, acc)
        optimizer = make_optimizer(self.model, recipe, sharded=self.fsdp is not None)
        self.optimizer, self.scheduler = self._prepare(optimizer, make_schedule(optimizer, recipe))
        # what saves and loads checkpoints: the accelerator, or its FSDP full-tensor view
        self.state_io = acc if self.fsdp is None else FSDPStateIO(acc, self.fsdp, self.optimizer)
        if "text" in recipe.anchors:
            fill_text_table(recipe, self.unwrapped, self.data, acc)
        self.metrics = MetricsLog(self.output_dir / "metrics.jsonl", acc, enabled=acc.is_main_process)
        self.step = 0

    def _prepare(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[Any, Any]:
        """accelerate wraps the model (in DDP, unless FSDP sharded it already), the optimizer, the map-style loader
        and the scheduler; a stream's loader is not prepared: every rank reads only its own lanes."""
        acc, stream = self.accelerator, self.data.stream
        parts = [optimizer, scheduler] if stream is not None else [optimizer, self.data.loader, scheduler]
        if self.fsdp is None:
            self.model, *parts = acc.prepare(self.model, *parts)
        else:
            parts = list(acc.prepare(*parts))
        if stream is None:
            self.data.loader = parts[1]
        return parts[0], parts[-1]

    @property
    def unwrapped(self) -> AlignmentModel:
        return self.accelerator.unwrap_model(self.model)

    # --- the loop ---------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        """Train to `train.max_steps` (with `resume`, from the newest intact checkpoint), evaluate and save."""
        t = self.recipe.train
        self._start(resume)
        weights = self.unwrapped.loss_weights  # term key -> weight, parsed from train.loss_weights by build_model
        self._train_mode()
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not self.accelerator.is_local_main_process,
                   desc="train", dynamic_ncols=True)
        window: dict[str, float] = {}
        n_window, t0 = 0, time.perf_counter()
        batches = self.data.batches(self.accelerator, self.step * t.grad_accum)
        while self.step < t.max_steps:
            for _ in range(t.grad_accum):
                for k, v in self._micro_step(next(batches), weights).items():
                    window[k] = window.get(k, 0.0) + v / t.grad_accum
            self.step += 1
            n_window += 1
            bar.update(1)
            logs = {k: v / n_window for k, v in window.items()}
            if self.step % t.log_every == 0 or self.step == t.max_steps:
                logs = self._log(logs, n_window, time.perf_counter() - t0, bar)
                window, n_window, t0 = {}, 0, time.perf_counter()
            if self.recipe.eval.every and self.step % self.recipe.eval.every == 0 and self.step < t.max_steps:
                self.evaluate()
            if self.step % t.save_every == 0 and self.step < t.max_steps:
                save_run_checkpoint(self.state_io, self.output_dir, self.recipe, self.data, self.step)
            for cb in self.callbacks:
                cb.on_step_end(self, self.step, logs)
        bar.close()
        return self._finish()

    def _start(self, resume: bool) -> None:
        """The run folder (recipe.yaml, captions.json), trackers, the resumed state and the evaluation at step 0."""
        acc, t = self.accelerator, self.recipe.train
        if not resume and list_checkpoints(self.output_dir):
            raise TrainingError(f"{self.output_dir} already holds checkpoints; pass --resume to continue that run or "
                                f"choose another --output")
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.output_dir / "recipe.yaml") as tmp:
                tmp.write_text(yaml.safe_dump(to_dict(self.recipe), sort_keys=False))
            if self.data.stream is None:  # streamed data: its captions are not all known up front
                write_json(self.output_dir / "captions.json",
                           captions_used(self.data.train_set, self.data.eval_sets))
        if t.trackers():  # tensorboard: <output>/tensorboard/<name>; the others: the recipe's name as project
            acc.init_trackers(self.recipe.name, config={"lr": t.lr, "batch_size": t.batch_size,
                                                        "grad_accum": t.grad_accum, "max_steps": t.max_steps,
                                                        "mixed_precision": t.mixed_precision})
        if resume:
            self.step = resume_run(self.state_io, self.output_dir, self.recipe, self.data)
            self.metrics.truncate_after(self.step)
        if self.step == 0 and self.recipe.eval.at_start:
            self.evaluate()

    def _train_mode(self) -> None:
        self.model.train()
        mllm = self.unwrapped.frozen.mllm
        if self.fsdp is not None and mllm is not None and not len(self.unwrapped.lora):
            mllm.llm.eval()  # in the module tree under FSDP, but without LoRA the LLM stays in eval mode

    def _micro_step(self, batch: Any, weights: dict[Any, float]) -> dict[str, float]:
        """Forward, backward and (at the last micro-step of a step) clipping and the optimizer step; returns the
        loss and its terms by logged name."""
        acc, t = self.accelerator, self.recipe.train
        with acc.accumulate(self.model):
            terms = self.model(batch)
            if not terms:
                raise TrainingError("the batch produced no loss term: check the data tasks against the adapters and "
                                    "anchors")
            loss = sum(weights.get(k, 1.0) * v for k, v in terms.items())
            values = {term_name(k): float(v.detach()) for k, v in terms.items()}  # logged names
            self._finite_or_stop(loss.detach(), "loss", values)
            acc.backward(loss)
            if acc.sync_gradients and self.fsdp is not None:
                self.fsdp.sync_replicated_grads()
                acc.unscale_gradients()
                norm = self.fsdp.clip_grad_norm(t.clip_grad or math.inf)
                self._finite_or_stop(norm, "gradient norm", values)
            elif acc.sync_gradients:
                norm = acc.clip_grad_norm_(self.model.parameters(), t.clip_grad or math.inf)
                self._finite_or_stop(torch.as_tensor(norm), "gradient norm", values)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return {"loss": float(loss.detach()), **{f"loss/{k}": v for k, v in values.items()}}

    def _finite_or_stop(self, value: torch.Tensor, what: str, terms: dict[str, float]) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            last = latest_checkpoint(self.output_dir)
            self.accelerator.end_training()
            raise TrainingError(
                f"non-finite {what} at step {self.step + 1} ({', '.join(f'{k}={v:.4g}' for k, v in terms.items())}); "
                f"training stopped without saving. Last good checkpoint: {last or 'none'} (continue with --resume "
                f"after lowering train.lr or setting train.clip_grad).")

    def _global_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """Average the loss terms over ranks: each rank's terms are shares of the global-batch loss (contrastive
        terms are already global; LM terms are token-weighted), so the mean is the one-process value."""
        world = self.accelerator.num_processes
        if world == 1:
            return logs
        import torch.distributed as dist

        keys: list[Any] = [None] * world
        dist.all_gather_object(keys, sorted(logs))  # ranks without rows of a task lack its term
        names = sorted(set().union(*keys))
        vec = torch.tensor([logs.get(k, 0.0) for k in names], dtype=torch.float64, device=self.accelerator.device)
        vec = self.accelerator.reduce(vec, reduction="sum") / world
        return dict(zip(names, vec.tolist()))

    def _log(self, logs: dict[str, float], n_window: int, seconds: float, bar: Any) -> dict[str, float]:
        """The window's mean terms over all ranks, the learning rate, throughput and temperatures, logged."""
        t = self.recipe.train
        logs = self._global_logs(logs)
        logs["lr"] = self.scheduler.get_last_lr()[0]
        logs["samples_per_s"] = n_window * t.batch_size * t.grad_accum / max(seconds, 1e-9)
        for key, mod in self.unwrapped.contrastive_losses().items():
            logs[f"logit_scale/{term_name(key)}"] = float(mod.scale.detach())
        self.metrics.log(self.step, logs)
        bar.set_postfix(loss=f"{logs['loss']:.4f}", sps=f"{logs['samples_per_s']:.0f}")
        return logs

    # --- evaluation and the saved run -------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Held-out metrics on the main process (logged and returned; empty on other ranks)."""
        metrics: dict[str, float] = {}
        if self.data.eval_sets and self.accelerator.is_main_process:
            e = self.recipe.eval
            metrics = evaluate_model(self.unwrapped, self.data.eval_sets, self.data.collate_fns,
                                     batch_size=e.batch_size, zero_shot=e.zero_shot, recall_k=e.recall_k,
                                     max_samples=e.max_samples)
            self.metrics.log(self.step, metrics)
            logger.info("step %d: %s", self.step, metrics)
        self.accelerator.wait_for_everyone()
        return metrics

    def _finish(self) -> TrainResult:
        acc = self.accelerator
        metrics = self.evaluate()
        model = self.unwrapped
        adapters: dict[str, str] = {}
        curves = None
        gathered = self.fsdp.gathered(acc.is_main_process) if self.fsdp is not None else contextlib.nullcontext()
        with gathered:  # FSDP: full tensors on the main process while it saves
            if acc.is_main_process:
                saved, curves = self._save_final(model, metrics)
                adapters = {m: str(self.output_dir / "adapters" / Path(p).name) for m, p in saved.items()}
        acc.wait_for_everyone()
        acc.end_training()
        return TrainResult(self.output_dir, self.step, adapters, metrics, curves)

    def _save_final(self, model: AlignmentModel, metrics: dict[str, float]) -> tuple[dict[str, str], Path | None]:
        """Adapters, the multimodal bundle (LoRA, code table), eval.json and the curves (main process)."""
        with atomic_path(self.output_dir / "adapters", is_dir=True) as tmp:
            saved = model.save_adapters(tmp)
        if model.frozen.mllm is not None and hasattr(model.frozen.mllm, "save_pretrained"):
            with atomic_path(self.output_dir / "mllm", is_dir=True) as tmp:
                model.frozen.mllm.save_pretrained(tmp)
        write_json(self.output_dir / "eval.json", {"step": self.step, "world_size": self.accelerator.num_processes,
                                                   "distributed": self.distributed,
                                                   **({"fsdp": self.fsdp.record} if self.fsdp is not None else {}),
                                                   "mixed_precision": self.accelerator.mixed_precision,
                                                   "grad_accum": self.accelerator.gradient_accumulation_steps,
                                                   **metrics})
        return saved, plot_curves(self.metrics.read(), self.output_dir / "curves.png", title=self.recipe.name)


def train(recipe: Recipe, *, output_dir: str | os.PathLike | None = None, resume: bool = False,
          callbacks: list[Callback] | None = None) -> TrainResult:
    """Train one recipe end to end (`Trainer`); the saved adapters then record their seen classes and, with
    `data.validation`, the zero-shot calibration tuned there (align/calibration.py)."""
    result = Trainer(recipe, output_dir=output_dir, callbacks=callbacks).fit(resume=resume)
    record_zeroshot(recipe, result.output_dir, result.adapters, Trainer)
    return result


__all__ = ["Callback", "TrainResult", "Trainer", "TrainingError", "train"]
