"""Training tasks: one registered class per objective (open_clip style), each turning a batch into loss terms.

A task is an `nn.Module` (its trainable state, e.g. InfoNCE temperatures, is in the state dict and under DDP) with
`training_forward(model, batch, feats) -> {term key: loss}`; a row belongs to the task its data source names. A new
objective is one `Task` subclass under `@register_task("name")`. Term keys are tuples whose first item is the task
name (`("contrastive", modality, anchor)`, `("caption",)`, `("aux", modality, name)` for projector auxiliary losses);
logged and `train.loss_weights` names come from the tuple (`term_name`), and are mapped back by matching the names a
recipe can produce, never by splitting (modality names may contain `-`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..encoders import EncoderOutput
from .config import TASK_REGISTRY
from .data import Batch
from .losses import contrastive_loss, global_size

AlignmentModel = nn.Module  # annotations only: the model passes itself in (importing model.py here would be a cycle)

TermKey = tuple[str, ...]
LossTerms = dict[TermKey, torch.Tensor]
AUX = "aux"  # first item of a projector auxiliary-loss key: ("aux", modality, name)


class Task(nn.Module):
    """Base class of training tasks; subclasses set `name` (by `register_task`) and implement the two methods."""

    name: str = ""

    @classmethod
    def from_recipe(cls, recipe: Any, *, adapters: Mapping[str, Any], anchors: Mapping[str, Any],
                    mllm: Any) -> Task | None:
        """The task for a recipe whose data use it (None when the recipe's parts cannot serve it)."""
        raise NotImplementedError

    def training_forward(self, model: AlignmentModel, batch: Batch, feats: dict[str, EncoderOutput]) -> LossTerms:
        """Loss terms of this task's rows of `batch` (`feats`: encoder output per modality, computed once)."""
        raise NotImplementedError

    def terms(self) -> list[TermKey]:
        """The term keys this task can produce (for `train.loss_weights`)."""
        return [(self.name,)]

    @classmethod
    def term_name(cls, key: TermKey) -> str:
        """The logged name of one of this task's term keys."""
        return "/".join(key) if len(key) > 1 else key[0]

    def rows(self, batch: Batch) -> list[int]:
        """Indices of the batch rows that belong to this task."""
        return [i for i, t in enumerate(batch.tasks) if t == self.name]


def register_task(name: str) -> Any:
    """Class decorator registering a `Task` under `name` (the value of `data.*.task` in recipes)."""

    def wrap(cls: type[Task]) -> type[Task]:
        cls.name = name
        return TASK_REGISTRY.register(name)(cls)

    return wrap


def term_name(key: TermKey) -> str:
    """Logged name of a loss term: `imu-text` (contrastive), `caption`, `imu/commitment` (auxiliary)."""
    if key[0] == AUX:
        return f"{key[1]}/{key[2]}"
    if key[0] in TASK_REGISTRY:
        return TASK_REGISTRY.get(key[0]).term_name(key)
    return "/".join(key)


def parse_loss_weights(weights: Mapping[str, float], terms: Iterable[TermKey], modalities: Sequence[str], *,
                       source: str = "train.loss_weights") -> dict[TermKey, float]:
    """Recipe `loss_weights` (logged names -> weight) as term keys, matched against the terms a recipe produces.

    `<modality>/<name>` keys are auxiliary losses of an adapter modality. An unknown or ambiguous key is a
    `ConfigError` listing the known names.
    """
    by_name: dict[str, list[TermKey]] = {}
    for key in terms:
        by_name.setdefault(term_name(key), []).append(key)
    out: dict[TermKey, float] = {}
    for name, weight in weights.items():
        found = list(dict.fromkeys(by_name.get(name, [])))
        found += [(AUX, m, name[len(m) + 1:]) for m in modalities
                  if name.startswith(f"{m}/") and len(name) > len(m) + 1]
        if len(found) != 1:
            known = ", ".join(sorted(by_name)) + (", <modality>/<auxiliary loss>" if modalities else "")
            why = "is ambiguous" if found else "is not a loss term of this recipe"
            raise ConfigError(f"{source}: {name!r} {why}; known: {known}")
        out[found[0]] = float(weight)
    return out


# --- the built-in tasks ------------------------------------------------------------------------------------------
@register_task("contrastive")
class ContrastiveTask(Task):
    """ImageBind binding: one InfoNCE (or soft InfoNCE) per (adapter modality, frozen anchor) pair.

    The anchor side is the frozen text encoder on the rows' captions (anchor `text`) or a frozen encoder on the
    rows' items of the anchor modality. With `positives="label"` rows sharing a label are positives too.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], anchor_options: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> None:
        super().__init__()
        opts = dict(anchor_options or {})
        self.pairs = [(str(m), str(a)) for m, a in pairs]
        self.temperatures = nn.ModuleDict()  # modality -> anchor -> loss module with its own temperature
        for m, a in self.pairs:
            if m not in self.temperatures:
                self.temperatures[m] = nn.ModuleDict()
            self.temperatures[m][a] = contrastive_loss(opts.get(a, {}))
        self.weights = {a: float(o.get("weight", 1.0)) for a, o in opts.items()}
        self.positives = {a: o.get("positives", "label") for a, o in opts.items()}

    @classmethod
    def from_recipe(cls, recipe: Any, *, adapters: Mapping[str, Any], anchors: Mapping[str, Any],
                    mllm: Any) -> ContrastiveTask | None:
        pairs = [(m, a) for m in adapters for a in anchors  # a head gradients cannot reach learns by its own task
                 if (adapters[m].embed_head is not None or adapters[m].config.embed_dim is not None)
                 and getattr(adapters[m].embed_head, "differentiable", True)]
        opts = {a: {"temperature": s.temperature, "learn_temperature": s.learn_temperature, "weight": s.weight,
                    "positives": s.positives, "loss": s.loss, "soft_temperature": s.soft_temperature}
                for a, s in recipe.anchors.items()}
        return cls(pairs, opts) if pairs else None

    def loss_module(self, modality: str, anchor: str) -> nn.Module:
        """The loss (with its learnable temperature) of one pair."""
        return self.temperatures[modality][anchor]

    def terms(self) -> list[TermKey]:
        return [(self.name, m, a) for m, a in self.pairs]

    @classmethod
    def term_name(cls, key: TermKey) -> str:
        return f"{key[1]}-{key[2]}"  # the name logged since the first release (loss/imu-text)

    def training_forward(self, model: AlignmentModel, batch: Batch, feats: dict[str, EncoderOutput]) -> LossTerms:
        out: LossTerms = {}
        is_con = torch.zeros(len(batch.tasks), dtype=torch.bool)
        is_con[self.rows(batch)] = True
        for m, a in self.pairs:
            emb, aux, rows = self._modality_rows(model, m, batch, feats, is_con)
            if a == "text":
                keep = [i for i, r in enumerate(rows.tolist()) if batch.captions[r] is not None]
                anchor = model.anchor_texts(a, [batch.captions[rows[i]] for i in keep])
            else:
                mb = batch.media.get(a)
                where = {r: j for j, r in enumerate(mb.rows.tolist())} if mb is not None else {}
                keep = [i for i, r in enumerate(rows.tolist()) if r in where]
                if keep:
                    anchor = F.normalize(feats[a].pooled[[where[int(rows[i])] for i in keep]].float(), dim=-1)
                else:
                    anchor = torch.zeros(0, emb.shape[1], device=emb.device)
            if global_size(len(keep), emb.device) == 0:
                continue
            every = len(keep) == len(rows)  # the common case: no gather (and no scatter in backward)
            emb_k = emb if every else emb[keep]
            labels = None
            if self.positives.get(a, "label") == "label":
                mine = rows if every else rows[keep]
                labels = batch.labels.to(emb.device)[mine.to(emb.device)] if keep else \
                    batch.labels.new_zeros(0).to(emb.device)
            loss = self.loss_module(m, a)(emb_k, anchor.to(emb_k.dtype), labels)
            out[(self.name, m, a)] = loss * self.weights.get(a, 1.0)
            for k, v in aux.items():
                out[(AUX, m, k)] = v
        return out

    @staticmethod
    def _modality_rows(model: AlignmentModel, m: str, batch: Batch, feats: dict[str, EncoderOutput],
                       is_con: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Embeddings of modality `m` for this task's rows (one item per example), possibly empty."""
        adapter = model.adapters[m]
        mb = batch.media.get(m)
        if mb is None:
            dim = adapter.config.in_dim
            empty = EncoderOutput(torch.zeros(0, 1, dim, device=model.device),
                                  torch.ones(0, 1, dtype=torch.bool, device=model.device),
                                  torch.zeros(0, dim, device=model.device))
            emb, _ = adapter.embed_output(empty)
            return emb, {}, torch.zeros(0, dtype=torch.long)
        rows = mb.rows.cpu()
        sel = is_con[rows].nonzero().flatten()
        sub = feats[m] if len(sel) == len(rows) else feats[m][sel.to(feats[m].tokens.device)]  # no copy if all
        emb, aux = adapter.embed_output(sub)
        return emb, aux, rows[sel]


class LMTask(Task):
    """Next-token loss of the frozen LLM on the rows' target text (prompt and media positions masked).

    Under DDP each rank's mean is reweighted by its share of the global target tokens, so the averaged gradient
    is that of the global per-token mean (as with one process); every rank runs the same collectives.
    """

    @classmethod
    def from_recipe(cls, recipe: Any, *, adapters: Mapping[str, Any], anchors: Mapping[str, Any],
                    mllm: Any) -> LMTask | None:
        return cls() if mllm is not None else None

    def training_forward(self, model: AlignmentModel, batch: Batch, feats: dict[str, EncoderOutput]) -> LossTerms:
        rows = self.rows(batch)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world == 1:
            return {(self.name,): model.llm_loss(batch, feats, rows)} if rows else {}
        local = model.target_tokens([batch.targets[i] for i in rows]) if rows else 0
        total = global_size(local, model.device)  # a collective: every rank runs it for every LM task
        if not (rows and total):
            idle = getattr(model, "idle_llm", None)  # FSDP (align/fsdp.py): every rank runs every LLM forward
            return {(self.name,): idle()} if total and idle is not None else {}
        res = model.llm_output(batch, feats, rows)
        return {(self.name,): res.lm_loss * (local * world / total) + sum((res.aux_losses or {}).values())}


@register_task("caption")
class CaptionTask(LMTask):
    """Captioning: the LLM writes the caption of the media (stage-1 LLM alignment)."""


@register_task("instruct")
class InstructTask(LMTask):
    """Instruction following: LLaVA-style conversations about the media (stage 2)."""


LLM_TASKS = ("caption", "instruct", "distill")  # tasks that need the LLM (distill: align/distill.py)

__all__ = ["AUX", "LLM_TASKS", "CaptionTask", "ContrastiveTask", "InstructTask", "LMTask", "LossTerms",
           "Task", "TermKey", "parse_loss_weights", "register_task", "term_name"]
