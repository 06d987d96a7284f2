"""Training recipes: one YAML file per stage (`configs/*.yaml`), read strictly into dataclasses.

Sections: `model` (shared-space width, frozen LLM, LoRA), `adapters` (one trainable adapter per modality),
`anchors` (frozen encoders whose embedding space is the target), `data` (train/eval sources), `train`
(optimisation and checkpointing) and `eval`. Strings may use `${VAR}` / `${VAR:-default}` environment
variables (e.g. `${ANYALIGN_ASSETS}/text/all-MiniLM-L6-v2`; `${RECIPE_DIR}` is the recipe's folder); an unset
variable is an error naming the field.
Every problem (unknown key, wrong type, missing file) raises `ConfigError` naming the file and the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import ConfigError, from_dict, load_config, recipe_file
from ..encoders.spec import EncoderSpec
from ..io import WEIGHT_SUFFIXES
from ..registry import Registry
from .captions import CaptionSpec

#: every training task class by name: the built-ins are found by their `@register_task("name")` line in
#: anyalign/align/*.py (tasks.py, distill.py, ctc.py, ...) and plugins register the same way; it lives here, below
#: the tasks, so that reading a recipe checks task names without importing them
TASK_REGISTRY: Registry[Any] = Registry("training task", package="anyalign.align", decorator="register_task")


@dataclass
class AnchorSpec:
    """A frozen encoder defining (part of) the shared space; its pooled output is the target embedding."""

    encoder: EncoderSpec  # e.g. {name: text, pretrained: ${ANYALIGN_ASSETS}/text/all-MiniLM-L6-v2}
    weight: float = 1.0  # weight of this anchor's InfoNCE term
    temperature: float = 0.07  # initial temperature of this anchor's InfoNCE
    learn_temperature: bool = True
    positives: Literal["label", "pair"] = "label"  # label: same-label pairs are positives too (class captions)
    loss: Literal["infonce", "soft"] = "infonce"  # soft: targets from the anchor's own similarities (SoftInfoNCE)
    soft_temperature: float = 0.05  # loss=soft: temperature of the anchor-anchor similarity targets


@dataclass
class AdapterSpec:
    """A modality's adapter: its encoder (frozen unless `train_encoder`) and the trainable projector heads."""

    encoder: EncoderSpec  # a registered name, or {name, pretrained, options, autocast}
    feature: Literal["tokens", "pooled"] = "tokens"
    #: shared-space head, e.g. {name: mlp} (dims are filled in), or the name of a recipe `projectors` entry
    embed_projector: dict[str, Any] | str | None = None
    #: LLM soft-token head, e.g. {name: perceiver, num_latents: 32}, or the name of a recipe `projectors` entry
    llm_projector: dict[str, Any] | str | None = None
    train_encoder: bool = False
    init_from: str | None = None  # a saved adapter folder to continue from (stage 2 after stage 1)


@dataclass
class LoraSpec:
    """peft LoRA on the frozen LLM (stage 2)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class ModelSpec:
    embed_dim: int | None = None  # shared-space width; default: the anchors' pooled width
    llm: str | None = None  # causal LM folder or hub id (needed by caption/instruct tasks)
    gguf_file: str | None = None  # a GGUF file name inside `llm`
    llm_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraSpec | None = None


@dataclass
class AugmentSpec:
    """Time-series augmentation for small sensor datasets (applied to raw training windows only; align/augment.py)."""

    crop: float = 1.0  # keep a random crop of this fraction of the steps (1.0 = off)
    jitter: float = 0.0  # gaussian noise, as a fraction of each channel's std
    scale: float = 0.0  # per-channel multiplicative factor ~ N(1, scale)
    shift: float = 0.0  # random circular shift, as a fraction of the length
    rotate: float = 0.0  # random 3-D rotation of the sensor frame, up to this many degrees (180: any orientation)
    triads: list[list[int]] | None = None  # channels rotated together (default: consecutive xyz triples)
    scale_all: float = 0.0  # one factor ~ N(1, scale_all) for the whole window (keeps the triads' geometry)
    time_warp: float = 0.0  # smooth random change of speed: local speed ~ N(1, time_warp)

    def __post_init__(self) -> None:
        if not 0 < self.crop <= 1:
            raise ConfigError(f"augment.crop must be in (0, 1], got {self.crop}")
        for name in ("jitter", "scale", "shift", "rotate", "scale_all", "time_warp"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augment.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class DataSource:
    """One paired dataset. `kind`: any data kind of the input layer (`anyalign.datasets.records`: jsonl, csv,
    folder, glob, webdataset, uea, esc50, urbansound8k, or `auto` to detect it), `files` (a folder whose file names
    are the captions) or `features` (`anyalign extract` shards)."""

    kind: str
    path: str
    task: str = "contrastive"  # a registered training task (align/tasks.py: contrastive, caption, instruct)
    modality: str | None = None  # uea: imu (default); files: required; features: read from the manifest
    split: str = "train"  # uea split; files/jsonl: "train" or "eval" part of a hash split (see holdout)
    holdout: float = 0.0  # files/jsonl: fraction of items held out for split=eval (deterministic by key)
    glob: str = "*"  # files: which files
    caption_templates: list[str] = field(default_factory=lambda: ["{caption}"])  # {caption} / {label}
    label_text: dict[str, str] = field(default_factory=dict)  # class name -> phrase used in captions
    prompts: list[str] = field(default_factory=lambda: ["<{modality}>\nDescribe this."])  # caption task prompts
    augment: AugmentSpec | None = None
    limit: int | None = None  # use only the first N items
    captions: CaptionSpec | None = None  # caption diversity: templates, synonyms, LLM paraphrases (align/captions.py)
    classes: list[str] | None = None  # keep only items of these classes (unseen-class protocol: train on a subset)
    folds: list[str] | None = None  # keep only records of these folds (e.g. ["train"] of a corpus split by voice)

    def __post_init__(self) -> None:
        from ..datasets.records import DATA_KINDS

        known = ["auto", "files", "features", *DATA_KINDS.names()]
        if self.kind not in known:
            raise ConfigError(f"kind {self.kind!r}: expected one of {', '.join(known)}")
        if self.folds is not None:
            self.folds = [str(f) for f in self.folds]
        for t in self.caption_templates:
            if "{caption}" not in t and "{label}" not in t:
                raise ConfigError(f"caption_templates: {t!r} has no {{caption}} or {{label}} placeholder, so every "
                                  f"caption would be the same text")
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"field 'holdout' must be in [0, 1), got {self.holdout}")


@dataclass
class DataSpec:
    train: list[Any] = field(default_factory=list)
    eval: list[Any] = field(default_factory=list)
    # held-out groups/users of the training data (never the test split): tunes the zero-shot calibration gamma after
    # training, by pseudo-unseen class rotation (align/calibration.py)
    validation: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        for part in ("train", "eval", "validation"):
            items = getattr(self, part)
            setattr(self, part, [item if isinstance(item, DataSource) else
                                 from_dict(DataSource, item, source=f"{part}[{i}]") for i, item in enumerate(items)])
        if not self.train:
            raise ConfigError("train: at least one training data source is required")
        for i, v in enumerate(self.validation):
            same = [j for j, e in enumerate(self.eval) if (e.kind, e.path, e.split, e.holdout, e.folds)
                    == (v.kind, v.path, v.split, v.holdout, v.folds)]
            if same:
                raise ConfigError(f"validation[{i}]: the same data as eval[{same[0]}]; calibration is tuned on "
                                  f"held-out training data, never on the evaluation split")


@dataclass
class TrainSpec:
    batch_size: int = 32  # global batch per micro-step, split across processes
    grad_accum: int | None = None  # None: the launcher's (`accelerate launch` / `accelerate config`), else 1
    max_steps: int = 1000  # optimizer steps
    lr: float = 1e-3
    encoder_lr: float | None = None  # lr of trained encoders (default: lr)
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    clip_grad: float | None = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] | None = None  # None: the launcher's, else "no"
    fsdp: bool = False  # shard with FSDP2 when multi-process (as does `accelerate launch --use_fsdp`)
    loss_weights: dict[str, float] = field(default_factory=dict)  # loss name (as logged) -> weight
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    num_workers: int = 0
    report_to: str | list[str] = "tensorboard"  # accelerate trackers: wandb, mlflow, aim, comet_ml, all ... or none
    tensorboard: bool = True  # false drops tensorboard from report_to (older recipes' switch)
    # streamed training data (align/stream.py): auto streams feature sources of more than 100k records
    stream: Literal["auto", "map", "stream"] = "auto"
    stream_buffer: int = 2048  # shuffle buffer per lane, in samples
    stream_lanes: int | None = None  # default processes x workers; fix it to make the order independent of them

    def __post_init__(self) -> None:
        for key in ("batch_size", "grad_accum", "max_steps", "save_every", "keep_checkpoints", "log_every"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"field {key!r} must be >= 1, got {getattr(self, key)}")
        # clip_grad: a negative norm flips the update (trains uphill)
        for key, low, strict in (("lr", 0, True), ("encoder_lr", 0, True), ("clip_grad", 0, True),
                                 ("warmup_steps", 0, False), ("weight_decay", 0, False)):
            value = getattr(self, key)
            if value is not None and (value <= low if strict else value < low):
                raise ConfigError(f"field {key!r} must be {'>' if strict else '>='} {low}, got {value}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"field 'betas' must be two numbers in [0, 1), got {self.betas}")
        from accelerate.utils import LoggerType

        known = sorted(t.value for t in LoggerType)
        bad = [n for n in self.trackers() if n not in known]
        if bad:
            raise ConfigError(f"field 'report_to': unknown tracker(s) {', '.join(bad)}; expected none or any of "
                              f"{', '.join(known)}")

    def trackers(self) -> list[str]:
        """The accelerate trackers to log to (`report_to`, less tensorboard when `tensorboard` is false)."""
        names = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to or [])
        names = [n for n in names if n and n != "none"]
        return [n for n in names if self.tensorboard or n != "tensorboard"]


@dataclass
class StageSpec:
    """One progressive stage (align/progressive.py): the modalities it adds to the shared projector."""

    add: list[str]
    max_steps: int | None = None  # default: train.max_steps
    replay: float | None = None  # default: progressive.replay


@dataclass
class ProgressiveSpec:
    """OneLLM's progressive alignment: stages that add modalities one after another, each starting from the
    previous stage's adapters and shared projectors; earlier modalities stay in the data mix at `replay` (their
    share of the training items, 0 = left out)."""

    stages: list[Any]
    replay: float = 0.25

    def __post_init__(self) -> None:
        self.stages = [s if isinstance(s, StageSpec) else from_dict(StageSpec, s, source=f"progressive.stages[{i}]")
                       for i, s in enumerate(self.stages)]
        for i, s in enumerate(self.stages):
            r = self.replay if s.replay is None else s.replay
            if not 0 <= r < 1:
                raise ConfigError(f"progressive.stages[{i}].replay: expected a share in [0, 1), got {r}")
            if not s.add:
                raise ConfigError(f"progressive.stages[{i}].add: list the modalities this stage adds")
            if s.max_steps is not None and s.max_steps < 1:
                raise ConfigError(f"progressive.stages[{i}].max_steps: must be >= 1, got {s.max_steps}")


@dataclass
class EvalSpec:
    every: int = 0  # evaluate every N steps (0: only at the end)
    at_start: bool = True  # also evaluate the untrained adapters (step 0) for a before/after comparison
    batch_size: int = 64
    zero_shot: bool = True  # labelled eval data: classify against class-caption embeddings
    recall_k: list[int] = field(default_factory=lambda: [1, 5, 10])
    max_samples: int | None = None
    calibration_folds: int | None = None  # pseudo-unseen rotations over the seen classes (None: one per class)
    calibration_steps: int | None = None  # training steps of each rotation's adapter (None: train.max_steps)


@dataclass
class Recipe:
    """A whole training stage."""

    adapters: dict[str, Any]
    data: DataSpec
    name: str = "align"
    seed: int = 0
    output_dir: str | None = None  # default: runs/<name>
    model: ModelSpec = field(default_factory=ModelSpec)
    anchors: dict[str, Any] = field(default_factory=dict)
    #: projectors shared by several adapters (OneLLM's universal projection): name -> {name: <projector>, options,
    #: init_from: a saved `_shared/<name>` folder to continue from}; adapters use one by name
    projectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    progressive: ProgressiveSpec | None = None  # stages adding modalities one after another (align/progressive.py)
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)

    def __post_init__(self) -> None:
        self.adapters = {m: a if isinstance(a, AdapterSpec) else from_dict(AdapterSpec, a, source=f"adapters.{m}")
                         for m, a in self.adapters.items()}
        self.anchors = {m: a if isinstance(a, AnchorSpec) else from_dict(AnchorSpec, a, source=f"anchors.{m}")
                        for m, a in self.anchors.items()}
        if not self.adapters:
            raise ConfigError("adapters: at least one modality adapter is required")
        self._check_shared_projectors()
        if self.progressive is not None:
            added = [m for s in self.progressive.stages for m in s.add]
            if sorted(added) != sorted(self.adapters) or len(set(added)) != len(added):
                raise ConfigError(f"progressive.stages: every adapter must be added exactly once; stages add "
                                  f"{added}, adapters are {list(self.adapters)}")
        both = sorted(set(self.adapters) & set(self.anchors))
        if both:
            raise ConfigError(f"{both}: a modality is either trained (adapters) or a frozen anchor, not both")
        tasks = {s.task for s in self.data.train + self.data.eval}
        for t in sorted(t for t in tasks if t not in TASK_REGISTRY.declared() and t not in TASK_REGISTRY):
            known = sorted(set(TASK_REGISTRY.declared()) | set(TASK_REGISTRY.names()))
            raise ConfigError(f"data: task {t!r} is not a registered training task; expected one of: "
                              f"{', '.join(known)}")
        if "contrastive" in tasks and not self.anchors:
            raise ConfigError("anchors: contrastive data needs at least one anchor (e.g. anchors.text)")
        if tasks & {"caption", "instruct", "distill"}:
            if not self.model.llm:
                raise ConfigError("model.llm: caption/instruct data needs a causal LM")
            if not any(a.llm_projector for a in self.adapters.values()):
                raise ConfigError("adapters: caption/instruct data needs an adapter with an llm_projector")
        for i, s in enumerate(self.data.train + self.data.eval):
            if s.modality is not None and s.modality not in self.adapters:
                raise ConfigError(f"data source {s.path}: modality {s.modality!r} has no adapter "
                                  f"(adapters: {', '.join(self.adapters)})")

    def shared_users(self, name: str) -> list[tuple[str, str]]:
        """`(modality, head)` pairs whose head is the shared projector `name`, in adapter order."""
        return [(m, head) for m, a in self.adapters.items() for head in ("embed_projector", "llm_projector")
                if getattr(a, head) == name]

    def _check_shared_projectors(self) -> None:
        for name, spec in self.projectors.items():
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise ConfigError(f"projectors.{name}: expected a mapping with a projector name, e.g. "
                                  f"{{name: universal}}, got {spec!r}")
            if spec.get("init_from") is not None and not isinstance(spec["init_from"], str):
                raise ConfigError(f"projectors.{name}.init_from: expected a folder path, got {spec['init_from']!r}")
            heads = {head for _, head in self.shared_users(name)}
            if not heads:
                raise ConfigError(f"projectors.{name}: no adapter uses it (set adapters.<m>.llm_projector: {name} "
                                  f"or embed_projector: {name})")
            if len(heads) > 1:
                raise ConfigError(f"projectors.{name}: used both as embed_projector and llm_projector; a shared "
                                  f"projector serves one kind of head (their output widths differ)")
        for m, a in self.adapters.items():
            for head in ("embed_projector", "llm_projector"):
                ref = getattr(a, head)
                if isinstance(ref, str) and ref not in self.projectors:
                    raise ConfigError(f"adapters.{m}.{head}: {ref!r} is not declared under projectors "
                                      f"(declared: {', '.join(self.projectors) or 'none'})")

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)


# --- reading ---------------------------------------------------------------------------------------------
def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or text.endswith(WEIGHT_SUFFIXES) or text.count("/") > 1


def check_paths(recipe: Recipe, source: str) -> None:
    """Fail early, naming the field, when a local file or folder the recipe points to does not exist."""
    def need(where: str, value: str | None, *, always: bool = False) -> None:
        if value and (always or _looks_like_path(value)) and not Path(value).expanduser().exists():
            raise ConfigError(f"{source}: {where}: {value}: no such file or folder")

    for part in ("train", "eval", "validation"):
        for i, s in enumerate(getattr(recipe.data, part)):
            need(f"data.{part}[{i}].path", s.path, always=True)
    for m, a in recipe.adapters.items():
        need(f"adapters.{m}.encoder.pretrained", a.encoder.pretrained)
        need(f"adapters.{m}.init_from", a.init_from, always=True)
    for name, spec in recipe.projectors.items():
        need(f"projectors.{name}.init_from", spec.get("init_from"), always=True)
    for m, a in recipe.anchors.items():
        need(f"anchors.{m}.encoder.pretrained", a.encoder.pretrained)
    need("model.llm", recipe.model.llm)
    if recipe.model.llm and recipe.model.gguf_file and Path(recipe.model.llm).is_dir():
        need("model.gguf_file", str(Path(recipe.model.llm) / recipe.model.gguf_file), always=True)


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None, *, check: bool = True) -> Recipe:
    """Read a recipe strictly: YAML, then `key=value` overrides, then `${VAR}` expansion, then path checks. `path` is
    a YAML file or the name of a shipped recipe (`load_recipe("imu_text_contrastive", ["train.max_steps=200"])`)."""
    path = recipe_file(path)
    recipe = load_config(Recipe, path, overrides, variables={"RECIPE_DIR": str(path.resolve().parent)})
    if check:
        check_paths(recipe, str(path))
    return recipe


__all__ = ["AdapterSpec", "AnchorSpec", "AugmentSpec", "DataSource", "DataSpec", "EvalSpec", "LoraSpec", "ModelSpec",
           "ProgressiveSpec", "Recipe", "StageSpec", "TASK_REGISTRY", "TrainSpec", "check_paths", "load_recipe"]
