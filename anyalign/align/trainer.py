"""The alignment training loop on accelerate: mixed precision, accumulation, DDP or FSDP2 via `accelerate launch`.

Exact resume: the data order is a pure function of (seed, epoch), per-sample randomness is seeded by
(seed, epoch, index), and a checkpoint holds the trainable weights, optimizer, scheduler and every rank's RNG;
resuming loads it and skips the consumed batches of the current epoch (`skip_first_batches`), so a run killed
and resumed ends with the same weights as an uninterrupted one. Large feature sets are streamed (`stream.py`,
`train.stream`); the checkpoint then records the stream position. Checkpoints carry a manifest of sizes and
hashes; `--resume` falls back to the newest intact one.

Multi-process runs use DDP, or FSDP2 (`train.fsdp: true` or `accelerate launch --use_fsdp`): the trainer then
shards the model itself with torch's `fully_shard` (align/fsdp.py), on CPU (gloo) as on GPUs; checkpoints and saved
adapters hold full tensors in the same files as a DDP run's.
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
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..io import atomic_path, write_json
from .captions import captions_used
from .checkpoint import (
    latest_checkpoint,
    latest_good_checkpoint,
    list_checkpoints,
    read_state,
    save_checkpoint,
    set_aside,
)
from .config import Recipe, recipe_to_dict
from .data import Collator, EpochSampler, PairedDataset
from .evaluate import evaluate_model
from .fsdp import FSDPState, fsdp_requested, load_checkpoint_files, save_checkpoint_files, shard_model
from .metrics_log import MetricsLog, plot_curves
from .model import AlignmentModel, build_model
from .stream import FeatureStream, choose_mode, default_lanes, prefetched
from .tasks import term_name
from .text_cache import table_for_anchor

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, inconsistent resume); the message says what to do."""


class Callback(Protocol):
    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None: ...


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    adapters: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    curves: Path | None = None


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


def _make_accelerator(recipe: Recipe, output_dir: Path, find_unused: bool, fsdp: bool) -> Any:
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


def _schedule(optimizer: torch.optim.Optimizer, recipe: Recipe) -> Any:
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


def _optimizer(model: AlignmentModel, recipe: Recipe, *, sharded: bool = False) -> torch.optim.Optimizer:
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
    from ..adapter import CONFIG_NAME
    from ..language_model import llm_backend
    from ..projectors.shared import SHARED_DIR

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
        self.accelerator = _make_accelerator(recipe, self.output_dir, find_unused, want_fsdp)
        acc = self.accelerator
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
        media = list(recipe.adapters) + [a for a in recipe.anchors if a != "text"]
        encoders = {m: self.model.encoder_for(m) for m in media if self.model.has_encoder(m)}
        loaders = {m: e.load for m, e in encoders.items()}
        self.collate_fns = {m: e.collate for m, e in encoders.items()}
        self.data_mode = choose_mode(t.stream, recipe.data.train)
        self.stream: FeatureStream | None = None
        self.eval_sets = [PairedDataset([s], media, seed=recipe.seed, train=False, loaders=loaders)
                          for s in recipe.data.eval]
        optimizer = _optimizer(self.model, recipe, sharded=self.fsdp is not None)
        scheduler = _schedule(optimizer, recipe)
        if self.data_mode == "stream":  # large feature sets: read as a stream, never all in memory
            lanes = t.stream_lanes or default_lanes(acc.num_processes, t.num_workers)
            try:
                self.stream = FeatureStream(recipe.data.train, batch_size=t.batch_size, lanes=lanes,
                                            buffer=t.stream_buffer, seed=recipe.seed, rank=acc.process_index,
                                            world=acc.num_processes, num_workers=t.num_workers)
                self.stream.steps_in_epoch(0)
            except ValueError as e:
                raise TrainingError(str(e)) from None
            self.train_set: Any = self.stream
            self.loader = self.stream.loader()  # not prepared: every rank reads only its own lanes
            if self.fsdp is not None:  # already sharded: accelerate must not wrap it in DDP
                self.optimizer, self.scheduler = acc.prepare(optimizer, scheduler)
            else:
                self.model, self.optimizer, self.scheduler = acc.prepare(self.model, optimizer, scheduler)
        else:
            self.train_set = PairedDataset(recipe.data.train, media, seed=recipe.seed, train=True, loaders=loaders)
            if len(self.train_set) < t.batch_size:
                raise TrainingError(f"train.batch_size={t.batch_size} is larger than the {len(self.train_set)} "
                                    f"training examples; lower it")
            self.sampler = EpochSampler(len(self.train_set), seed=recipe.seed)
            loader = DataLoader(self.train_set, batch_size=t.batch_size, sampler=self.sampler, drop_last=True,
                                collate_fn=Collator(self.collate_fns, self.train_set.labels),
                                num_workers=t.num_workers, generator=torch.Generator().manual_seed(recipe.seed))
            self.steps_per_epoch = len(self.train_set) // t.batch_size
            if self.fsdp is not None:
                self.optimizer, self.loader, self.scheduler = acc.prepare(optimizer, loader, scheduler)
            else:
                self.model, self.optimizer, self.loader, self.scheduler = acc.prepare(self.model, optimizer, loader,
                                                                                      scheduler)
        if "text" in recipe.anchors:
            self._text_table()
        self.metrics = MetricsLog(self.output_dir / "metrics.jsonl", acc, enabled=acc.is_main_process)
        self.step = 0

    @property
    def unwrapped(self) -> AlignmentModel:
        return self.accelerator.unwrap_model(self.model)

    def _text_table(self) -> None:
        """Put the frozen text anchor's caption embeddings in an on-disk table: every known caption (map-style
        training data, eval captions, class prompts) is encoded now in length-sorted batches, streamed captions
        when first met; each is encoded once, ever (the table is shared by runs with the same anchor)."""
        acc = self.accelerator
        spec = self.recipe.anchors["text"].encoder  # what fixes the embeddings: its spec and weight files
        table = table_for_anchor(spec, self.unwrapped.frozen.anchors["text"])
        texts: set[str] = set() if self.stream is not None else self.train_set.all_captions()
        for ds in self.eval_sets:
            texts |= ds.all_captions() | {x for xs in ds.class_prompts().values() for x in xs}
        with acc.main_process_first():  # the main process encodes, the others then find everything stored
            added = table.add(sorted(texts), progress=acc.is_local_main_process and len(texts) > 10_000)
        if added:
            logger.info("text anchor: %d new caption embeddings in %s", added, table.path)
        self.unwrapped.text_tables["text"] = table

    # --- checkpoints -----------------------------------------------------------------------------------------
    def _expected_state(self) -> dict[str, Any]:
        t = self.recipe.train
        state: dict[str, Any] = {"world_size": self.accelerator.num_processes, "batch_size": t.batch_size,
                                 "grad_accum": t.grad_accum, "seed": self.recipe.seed, "data_mode": self.data_mode}
        if self.stream is not None:  # the stream position and the settings that fix the order
            state["stream"] = self.stream.state(self.step * t.grad_accum)
        return state

    def _resume(self) -> None:
        acc = self.accelerator
        listed = list_checkpoints(self.output_dir)
        if not listed:
            logger.info("--resume: no checkpoint in %s, starting from scratch", self.output_dir)
            return
        state0 = read_state(listed[-1]) if listed else {}
        need = None  # every rank's RNG state must be there when the process count is unchanged
        if state0.get("world_size") == acc.num_processes:
            need = [f"random_states_{r}.pkl" for r in range(acc.num_processes)]
        ckpt, bad = latest_good_checkpoint(self.output_dir, need=need)
        acc.wait_for_everyone()  # every rank has chosen before damaged ones are moved aside
        if acc.is_main_process:
            for path, _ in bad:
                logger.warning("moved the damaged checkpoint %s to %s", path, set_aside(path))
        acc.wait_for_everyone()
        if ckpt is None:
            problems = "; ".join(f"{p.name}: {why}" for p, why in bad)
            raise TrainingError(f"--resume: no intact checkpoint in {checkpoint_dir_of(self.output_dir)} "
                                f"({problems}); start again without --resume into another --output")
        if bad:
            logger.warning("--resume: resuming from %s, the newest intact checkpoint (skipped %s)", ckpt,
                           ", ".join(p.name for p, _ in bad))
        state = read_state(ckpt)
        self.step = int(state["step"])
        expect = self._expected_state()
        expect.pop("stream", None)
        diff = {k: (state.get(k), v) for k, v in expect.items() if state.get(k, "map") != v}
        if self.stream is not None and "stream" in state:
            now = self.stream.state(self.step * self.recipe.train.grad_accum)
            diff.update({f"stream.{k}": (state["stream"].get(k), v) for k, v in now.items()
                         if state["stream"].get(k) != v})
        if not (ckpt / f"random_states_{acc.process_index}.pkl").is_file():
            diff["rng_state"] = ("missing", f"rank {acc.process_index}")
        if diff:
            logger.warning("%s was written with different settings %s (saved, now): resume will not be exact",
                           ckpt, diff)
        try:
            self._state_io().load_state(str(ckpt))
        except RuntimeError as e:  # the recipe's architecture changed since the checkpoint was written
            lines = [ln.strip() for ln in str(e).splitlines() if "mismatch" in ln or "key(s)" in ln]
            if not lines:
                raise
            raise TrainingError(f"--resume: {ckpt} was written for another architecture ({lines[0].rstrip('.')}"
                                f"{f'; {len(lines) - 1} more' if len(lines) > 1 else ''}); resume with the recipe "
                                "it was written with, or train into a new --output") from None
        self.metrics.truncate_after(self.step)
        logger.info("resumed from %s (step %d)", ckpt, self.step)

    def _checkpoint(self) -> Path:
        state = {**self._expected_state(), "time": time.time()}
        return save_checkpoint(self._state_io(), self.output_dir, self.step, state, self.recipe.train.keep_checkpoints)

    def _state_io(self) -> Any:
        return self.accelerator if self.fsdp is None else _FSDPStateIO(self.accelerator, self.fsdp, self.optimizer)

    # --- the loop ---------------------------------------------------------------------------------------------
    def _batches(self, micro: int) -> Any:
        """Micro-batches from global micro-step `micro` on, epoch after epoch, in the seeded order."""
        if self.stream is not None:
            while True:
                self.stream.set_position(*self.stream.position(micro))
                batches = self.stream.batches(self.loader)
                for batch in batches if self.stream.num_workers else prefetched(batches):
                    yield batch.to(self.accelerator.device)
                    micro += 1
        while True:
            epoch, skip = divmod(micro, self.steps_per_epoch)
            for batch in epoch_batches(self.accelerator, self.loader, self.sampler, epoch, skip):
                yield batch
                micro += 1

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

    def fit(self, resume: bool = False) -> TrainResult:
        acc, t = self.accelerator, self.recipe.train
        if not resume and list_checkpoints(self.output_dir):
            raise TrainingError(f"{self.output_dir} already holds checkpoints; pass --resume to continue that run or "
                                f"choose another --output")
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.output_dir / "recipe.yaml") as tmp:
                tmp.write_text(yaml.safe_dump(recipe_to_dict(self.recipe), sort_keys=False))
            if self.stream is None:  # streamed data: its captions are not all known up front
                write_json(self.output_dir / "captions.json", captions_used(self.train_set, self.eval_sets))
        if t.trackers():  # tensorboard: <output>/tensorboard/<name>; the others: the recipe's name as project
            acc.init_trackers(self.recipe.name, config={"lr": t.lr, "batch_size": t.batch_size,
                                                        "grad_accum": t.grad_accum, "max_steps": t.max_steps,
                                                        "mixed_precision": t.mixed_precision})
        if resume:
            self._resume()
        if self.step == 0 and self.recipe.eval.at_start:
            self.evaluate()
        weights = self.unwrapped.loss_weights  # term key -> weight, parsed from train.loss_weights by build_model
        self.model.train()
        mllm = self.unwrapped.frozen.mllm
        if self.fsdp is not None and mllm is not None and not len(self.unwrapped.lora):
            mllm.llm.eval()  # in the module tree under FSDP, but without LoRA the LLM stays in eval mode
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not acc.is_local_main_process, desc="train",
                   dynamic_ncols=True)
        window: dict[str, float] = {}
        n_window, t0 = 0, time.perf_counter()
        batches = self._batches(self.step * t.grad_accum)
        while self.step < t.max_steps:
            for _ in range(t.grad_accum):
                batch = next(batches)
                with acc.accumulate(self.model):
                    terms = self.model(batch)
                    if not terms:
                        raise TrainingError("the batch produced no loss term: check the data tasks against the "
                                            "adapters and anchors")
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
                for k, v in {"loss": float(loss.detach()), **{f"loss/{k}": v for k, v in values.items()}}.items():
                    window[k] = window.get(k, 0.0) + v / t.grad_accum
            self.step += 1
            n_window += 1
            bar.update(1)
            logs = {k: v / n_window for k, v in window.items()}
            if self.step % t.log_every == 0 or self.step == t.max_steps:
                logs = self._global_logs(logs)
                dt = time.perf_counter() - t0
                logs["lr"] = self.scheduler.get_last_lr()[0]
                logs["samples_per_s"] = n_window * t.batch_size * t.grad_accum / max(dt, 1e-9)
                for key, mod in self.unwrapped.contrastive_losses().items():
                    logs[f"logit_scale/{term_name(key)}"] = float(mod.scale.detach())
                self.metrics.log(self.step, logs)
                bar.set_postfix(loss=f"{logs['loss']:.4f}", sps=f"{logs['samples_per_s']:.0f}")
                window, n_window, t0 = {}, 0, time.perf_counter()
            if self.recipe.eval.every and self.step % self.recipe.eval.every == 0 and self.step < t.max_steps:
                self.evaluate()
            if self.step % t.save_every == 0 and self.step < t.max_steps:
                self._checkpoint()
            for cb in self.callbacks:
                cb.on_step_end(self, self.step, logs)
        bar.close()
        return self._finish()

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics on the main process (logged and returned; empty on other ranks)."""
        metrics: dict[str, float] = {}
        if self.eval_sets and self.accelerator.is_main_process:
            e = self.recipe.eval
            metrics = evaluate_model(self.unwrapped, self.eval_sets, self.collate_fns, batch_size=e.batch_size,
                                     zero_shot=e.zero_shot, recall_k=e.recall_k, max_samples=e.max_samples)
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
                                                   "distributed": self.distributed, **self._fsdp_record(),
                                                   "mixed_precision": self.accelerator.mixed_precision,
                                                   "grad_accum": self.accelerator.gradient_accumulation_steps,
                                                   **metrics})
        return saved, plot_curves(self.metrics.read(), self.output_dir / "curves.png", title=self.recipe.name)

    def _fsdp_record(self) -> dict[str, Any]:
        return {"fsdp": self.fsdp.record} if self.fsdp is not None else {}


class _FSDPStateIO:
    """The accelerator as `save_checkpoint` / `_resume` use it, with the model and optimizer state gathered to full
    tensors (accelerate's files and names) instead of accelerate's per-rank view; scheduler and RNG via accelerate."""

    def __init__(self, accelerator: Any, fsdp: FSDPState, optimizer: Any) -> None:
        self._acc, self._fsdp, self._optimizer = accelerator, fsdp, optimizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._acc, name)

    @contextlib.contextmanager
    def _without_optimizers(self) -> Any:
        kept, self._acc._optimizers = self._acc._optimizers, []
        try:
            yield
        finally:
            self._acc._optimizers = kept

    def save_state(self, output_dir: str) -> None:
        save_checkpoint_files(self._fsdp, self._optimizer, Path(output_dir), self._acc.is_main_process)
        with self._without_optimizers():
            self._acc.save_state(output_dir)

    def load_state(self, input_dir: str) -> None:
        with self._without_optimizers():
            self._acc.load_state(input_dir)
        load_checkpoint_files(self._fsdp, self._optimizer, Path(input_dir))


def epoch_batches(accelerator: Any, loader: Any, sampler: EpochSampler, epoch: int, skip: int = 0) -> Any:
    """The batches of `epoch` of a prepared map-style loader, from batch `skip` on (a resumed run's first epoch).

    The sampler's epoch is set directly: accelerate's `set_epoch` on a `skip_first_batches` loader reaches the
    sampler through one process's `BatchSampler`, but not through the `BatchSamplerShard` of a multi-process run
    (SkipBatchSampler -> BatchSamplerShard -> BatchSampler -> sampler), so a run resumed mid-epoch on 2+ processes
    used to read that epoch in epoch 0's order and draws."""
    loader = accelerator.skip_first_batches(loader, skip) if skip else loader
    loader.set_epoch(epoch)
    sampler.set_epoch(epoch)
    return iter(loader)


def checkpoint_dir_of(output_dir: Path) -> Path:
    from .checkpoint import checkpoint_dir

    return checkpoint_dir(output_dir)


__all__ = ["Callback", "TrainResult", "Trainer", "TrainingError"]
