"""Zero-shot calibration as part of the adapter: seen classes, gamma and where gamma was tuned, in the saved config.

After a run on labelled data, every saved shared-space adapter records (`AdapterConfig.zeroshot`) its seen classes
(named as its captions named them) and `label_text`. With `data.validation` (held-out groups of the *training* data,
never the test split), the gamma of calibrated stacking (Chao et al. 2016) is tuned there by pseudo-unseen rotation:
for each of `eval.calibration_folds` groups of seen classes an adapter is trained without that group
(`eval.calibration_steps` steps), the validation items are scored against all seen classes, and gamma maximises the
mean seen/unseen harmonic mean over the rotations. `classify`, `eval zeroshot` and the API then apply it.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..adapter import CONFIG_NAME
from ..io import read_json, write_json
from ..metrics.gzsl import tune_calibration_rotated
from .config import DataSource, Recipe
from .data import Collator
from .evaluate import class_embeddings
from .launch import BatchLargerThanData

logger = logging.getLogger(__name__)

METHOD = "calibrated stacking (Chao et al. 2016): the seen classes' cosine scores lowered by gamma"


def _labelled_sources(run_dir: Path, recipe: Recipe) -> list[tuple[int, DataSource, list[str]]]:
    """`(index, source, classes)` of the contrastive training sources with class labels (from the run's
    captions.json, which lists the classes each source actually held)."""
    path = run_dir / "captions.json"
    if not path.is_file():
        return []
    used = read_json(path).get("train") or []
    return [(i, src, list(u["classes"])) for i, (src, u) in enumerate(zip(recipe.data.train, used))
            if src.task == "contrastive" and u.get("classes")]


def _phrase(src: DataSource, label: str) -> str:
    return src.label_text.get(label, label.lower())  # as CaptionPool.phrase names a class in its captions


def seen_record(run_dir: Path, recipe: Recipe) -> dict[str, Any] | None:
    """The seen classes (as phrases) and `label_text` of a finished run, or None when it trained on no labels."""
    sources = _labelled_sources(run_dir, recipe)
    if not sources:
        return None
    label_text = {c: _phrase(src, c) for _, src, classes in sources for c in classes}
    return {"seen_classes": sorted(set(label_text.values())), "label_text": label_text, "calibration": None,
            "calibration_source": None}


def _folds(classes: list[str], folds: int | None) -> list[list[str]]:
    k = len(classes) if folds is None else max(2, min(int(folds), len(classes)))
    return [classes[i::k] for i in range(k)]  # every seen class held out in exactly one rotation


def _describe(src: DataSource) -> str:
    parts = [f"{src.kind} {src.path}", f"split {src.split}"]
    if src.holdout:
        parts.append(f"holdout {src.holdout}")
    if src.folds:
        parts.append(f"folds {','.join(src.folds)}")
    return " ".join(parts)


@torch.no_grad()
def _rotation_scores(trainer: Any, modality: str, prompts: dict[str, list[str]]) -> tuple[torch.Tensor, list[int],
                                                                                        list[str]]:
    """`[N, C]` cosine scores of the validation items (the trainer's eval sets) against every seen class's prompts,
    their class ids and the class order."""
    model = trainer.unwrapped.eval()
    classes = sorted(prompts)
    embs, ys = [], []
    for ds in trainer.data.eval_sets:
        loader = DataLoader(ds, batch_size=64, collate_fn=Collator(trainer.data.collate_fns, ds.labels))
        for batch in loader:
            batch = batch.to(model.device)
            if modality not in batch.media:
                continue
            keep = [j for j, i in enumerate(batch.labels.tolist()) if i >= 0 and ds.labels[i] in prompts]
            emb = model.embed(modality, model.features(modality, batch.media[modality]))[0].float().cpu()
            embs.append(emb[keep])
            ys += [classes.index(ds.labels[int(batch.labels[j])]) for j in keep]
    if not embs:
        raise ValueError(f"data.validation: no {modality} items to tune the calibration on")
    cls = class_embeddings(model, "text", {c: prompts[c] for c in classes}).float().cpu()  # [C, E]
    return F.normalize(torch.cat(embs), dim=-1) @ cls.t(), ys, classes


def _check_disjoint(trainer: Any) -> None:
    """Validation items must be held out of training: no (path, key) on both sides."""
    train_keys = {(trainer.data.train_set.sources[si].path, r["key"]) for si, r in trainer.data.train_set.records}
    for ds in trainer.data.eval_sets:
        both = [r["key"] for si, r in ds.records if (ds.sources[si].path, r["key"]) in train_keys]
        if both:
            raise ValueError(f"data.validation ({_describe(ds.sources[0])}): {len(both)} item(s) are also training "
                             f"items (e.g. {both[0]}); hold them out of data.train (e.g. holdout + split: train / "
                             f"split: eval, or other folds/users)")


def _rotation_trainer(recipe: Recipe, out: Path, make_trainer: Any) -> Any:
    """A trainer for one rotation; with fewer training examples than the batch (a class held out of a small data
    set), the batch shrinks to what there is."""
    try:
        return make_trainer(recipe, output_dir=out)
    except BatchLargerThanData as e:
        if e.examples < 2:
            raise
        logger.warning("calibration rotation %s: batch size %d -> %d (fewer training examples without the held-out "
                       "classes)", out.name, recipe.train.batch_size, e.examples)
        recipe.train.batch_size = e.examples
        return make_trainer(recipe, output_dir=out)


def tune_rotated(recipe: Recipe, run_dir: Path, modality: str, make_trainer: Any) -> dict[str, Any]:
    """Train one adapter per pseudo-unseen rotation and tune gamma on the validation data (see module docstring)."""
    sources = _labelled_sources(run_dir, recipe)
    seen = sorted({c for _, _, classes in sources for c in classes})
    if len(seen) < 2:
        raise ValueError("calibration: pseudo-unseen rotation needs at least two seen classes")
    first = {c: (i, src) for i, src, classes in reversed(sources) for c in classes}  # the source naming each class
    steps = recipe.eval.calibration_steps or recipe.train.max_steps
    runs, rotations = [], _folds(seen, recipe.eval.calibration_folds)
    n_items = 0
    for k, held in enumerate(rotations):
        r = copy.deepcopy(recipe)
        keep = [c for c in seen if c not in held]
        train, where = [], {}
        for i, src in enumerate(r.data.train):
            labelled = next((classes for j, _, classes in sources if j == i), None)
            if labelled is None:
                train.append(src)  # unlabelled sources (free captions) train every rotation
                continue
            mine = [c for c in keep if c in labelled]
            if mine:
                src.classes = mine
                where[i] = len(train)
                train.append(src)
        r.data.train = train
        r.data.eval = [copy.deepcopy(v) for v in recipe.data.validation]  # scored on its seen classes' items only
        r.data.validation = []
        r.train.max_steps, r.train.save_every = steps, steps
        r.train.warmup_steps = min(r.train.warmup_steps, steps // 5)
        r.train.tensorboard = False
        r.eval.at_start, r.eval.every = False, 0
        trainer = _rotation_trainer(r, run_dir / "calibration" / f"rotation-{k}", make_trainer)
        _check_disjoint(trainer)
        trainer.fit()
        prompts = {}  # the training captions' own class prompts (phrase x templates), the held-out classes' too
        for c in seen:
            i = first[c][0]
            prompts[c] = trainer.data.train_set.caption_pool(where[i]).class_prompts(c) if i in where else \
                [t.format(caption=_phrase(first[c][1], c), label=_phrase(first[c][1], c))
                 for t in first[c][1].caption_templates]
        scores, ys, classes = _rotation_scores(trainer, modality, prompts)
        n_items = len(ys)
        runs.append((scores, ys, classes, keep))
        logger.info("calibration rotation %d/%d: %s held out, %d validation items", k + 1, len(rotations),
                    ", ".join(held), len(ys))
    tuned = tune_calibration_rotated(runs)
    return {"method": METHOD,
            "tuned_on": "data.validation (" + "; ".join(_describe(v) for v in recipe.data.validation)
                        + f"): {n_items} held-out training items of the {len(seen)} seen classes",
            "rotations": [[_phrase(first[c][1], c) for c in held] for held in rotations],
            "rotation_steps": steps, "mean_harmonic_mean": tuned["mean_harmonic_mean"],
            "mean_harmonic_mean_uncalibrated": tuned["mean_harmonic_mean_uncalibrated"],
            "per_rotation": tuned["rotations"], "calibration": tuned["calibration"]}


def record_zeroshot(recipe: Recipe, run_dir: str | Path, adapters: dict[str, str], make_trainer: Any
                    ) -> dict[str, Any] | None:
    """Record seen classes (and, with `data.validation`, the rotation-tuned gamma) in every saved shared-space
    adapter of a finished run; returns what was recorded (None: no labelled training data). `make_trainer` (the
    `Trainer` class) trains the rotations; it is passed in so that this module does not import the loop calling it."""
    run_dir = Path(run_dir)
    record = seen_record(run_dir, recipe)
    if record is None or not adapters:
        return record
    targets = {m: Path(p) for m, p in adapters.items()
               if (Path(p) / CONFIG_NAME).is_file() and read_json(Path(p) / CONFIG_NAME).get("embed_dim")
               and "text" in recipe.anchors}
    if not targets:
        return None
    if recipe.data.validation:
        modality = next(iter(targets))
        source = tune_rotated(recipe, run_dir, modality, make_trainer)
        record["calibration"] = source.pop("calibration")
        record["calibration_source"] = source
        logger.info("calibration gamma %.4f (mean H over %d rotations %.3f, uncalibrated %.3f)",
                    record["calibration"], len(source["rotations"]), source["mean_harmonic_mean"],
                    source["mean_harmonic_mean_uncalibrated"])
    for path in targets.values():
        config = read_json(path / CONFIG_NAME)
        config["zeroshot"] = record
        write_json(path / CONFIG_NAME, config)
    return record


__all__ = ["METHOD", "record_zeroshot", "seen_record", "tune_rotated"]
