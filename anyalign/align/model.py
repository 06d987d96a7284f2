"""`AlignmentModel`: trainable adapters (ImageBind-style, one per modality) around frozen encoders and LLM.

Only trainable parts are registered submodules (projector heads, encoders trained from scratch, InfoNCE
temperatures, LoRA weights), so `state_dict()`, DDP and checkpoints hold just them; the frozen encoders,
anchors and the LLM live beside them (moved along by `.to()`) and run under `no_grad`.
`training_forward(batch)` returns one loss per term of its registered tasks (align/tasks.py), keyed by tuples:
`("contrastive", modality, anchor)` (binding), `("caption",)` and `("instruct",)` (next-token loss on the target
text of a frozen causal LM), `("aux", modality, name)` (projector auxiliary losses).
"""

from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..adapter import HEAD_ATTRS, WEIGHTS_NAME, AdapterConfig, ModalityAdapter, read_adapter_config
from ..encoders import Encoder, EncoderOutput
from ..encoders.spec import EncoderSpec
from ..io import load_weights
from ..language_model import llm_backend
from ..projectors import Projector
from . import distill as _distill  # noqa: F401 - registers the 'distill' task (its own module)
from .config import AdapterSpec, Recipe
from .data import Batch, MediaBatch
from .shared import SharedProjectors
from .tasks import LLM_TASKS, TASKS, ContrastiveTask, LossTerms, Task, TermKey, parse_loss_weights

logger = logging.getLogger(__name__)


class _Frozen:
    """Holder that keeps frozen modules out of the registered module tree."""

    def __init__(self) -> None:
        self.encoders: dict[str, Encoder] = {}  # modality -> frozen encoder of an adapter
        self.anchors: dict[str, Encoder] = {}  # anchor modality -> frozen encoder
        self.mllm: Any = None  # MultimodalLM (frozen LLM; LoRA weights are registered separately)

    def modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [*self.encoders.values(), *self.anchors.values()]
        if self.mllm is not None:
            mods.append(self.mllm.llm)  # its adapters and code table are registered in the AlignmentModel
        return mods


class AlignmentModel(nn.Module):
    """Adapters + training tasks for one recipe; `forward = training_forward` so DDP wraps it directly.

    `tasks` are `Task` instances (align/tasks.py); without them they are made from `contrastive_pairs` /
    `anchor_options` (a `ContrastiveTask`) and `llm_tasks` (when an `mllm` is given). `loss_weights` maps term
    keys to the weights the trainer applies (default 1).
    """

    def __init__(self, adapters: dict[str, ModalityAdapter], *, anchors: dict[str, Encoder] | None = None,
                 frozen_encoders: dict[str, Encoder] | None = None, mllm: Any = None,
                 contrastive_pairs: Sequence[tuple[str, str]] = (), anchor_options: dict[str, dict] | None = None,
                 llm_tasks: Sequence[str] = LLM_TASKS, tasks: Sequence[Task] | None = None,
                 loss_weights: dict[TermKey, float] | None = None, text_cache_size: int = 100_000) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict(adapters)
        if tasks is None:
            tasks = [ContrastiveTask(contrastive_pairs, anchor_options)] if contrastive_pairs else []
            tasks += [TASKS.get(t)() for t in llm_tasks] if mllm is not None else []
        self.tasks = nn.ModuleDict({t.name: t for t in tasks})  # fixed order: every rank runs the same collectives
        self.loss_weights: dict[TermKey, float] = dict(loss_weights or {})
        self._register_load_state_dict_pre_hook(self._upgrade_state)
        self.frozen = _Frozen()
        self.frozen.encoders = dict(frozen_encoders or {})
        self.frozen.anchors = dict(anchors or {})
        self.frozen.mllm = mllm
        self.lora = nn.ParameterDict()  # the LoRA weights inside the frozen LLM, registered here for DDP/ckpt
        self.code_embeddings = None  # discrete (rvq) adapters: the trainable table of code-token embeddings
        if mllm is not None:
            for name, p in mllm.llm.named_parameters():
                if p.requires_grad and "lora_" in name:
                    self.lora[name.replace(".", "__")] = p
            if mllm.code_embeddings is not None:
                self.code_embeddings = mllm.code_embeddings.requires_grad_(True)
        self._text_cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._text_cache_size = text_cache_size
        self.text_tables: dict[str, Any] = {}  # anchor -> caption table on disk (text_cache.py), set by the trainer

    # --- device / mode handling of the frozen parts -----------------------------------------------------------
    def _apply(self, fn: Callable, recurse: bool = True) -> AlignmentModel:  # .to(), .float(), ...
        super()._apply(fn, recurse)
        for mod in self.frozen.modules():
            mod._apply(fn)
        self._text_cache.clear()
        return self

    def train(self, mode: bool = True) -> AlignmentModel:
        super().train(mode)
        if len(self.lora) and self.frozen.mllm is not None:  # LoRA dropout follows the training mode
            self.frozen.mllm.llm.train(mode)
        return self

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def contrastive_losses(self) -> dict[TermKey, nn.Module]:
        """The binding losses (with their learnable temperatures) by term key `("contrastive", modality, anchor)`."""
        task = self.tasks["contrastive"] if "contrastive" in self.tasks else None
        return {key: task.loss_module(key[1], key[2]) for key in task.terms()} if task is not None else {}

    def _upgrade_state(self, state: dict[str, Any], prefix: str, *args: Any) -> None:
        """Checkpoints written before tasks were modules kept the temperatures at `contrastive.<m>-<a>.*`."""
        for (_, m, a), _mod in self.contrastive_losses().items():
            old = f"{prefix}contrastive.{m}-{a}."
            for k in [k for k in state if k.startswith(old)]:
                state[f"{prefix}tasks.contrastive.temperatures.{m}.{a}.{k[len(old):]}"] = state.pop(k)

    # --- features and embeddings --------------------------------------------------------------------------
    def has_encoder(self, modality: str) -> bool:
        return ((modality in self.adapters and self.adapters[modality].encoder is not None)
                or modality in self.frozen.encoders or modality in self.frozen.anchors)

    def encoder_for(self, modality: str) -> Encoder:
        adapter = self.adapters[modality] if modality in self.adapters else None
        if adapter is not None and adapter.encoder is not None:
            return adapter.encoder
        if modality in self.frozen.encoders:
            return self.frozen.encoders[modality]
        if modality in self.frozen.anchors:
            return self.frozen.anchors[modality]
        raise ValueError(f"{modality}: raw inputs need an encoder, but this run only has cached features for it")

    def features(self, modality: str, mb: MediaBatch) -> EncoderOutput:
        """Encoder output of one modality's items: cached features as they are, raw inputs encoded now."""
        if mb.features is not None:
            return mb.features.to(self.device)
        enc = self.encoder_for(modality)
        if enc.frozen:
            with torch.no_grad():
                return enc.run(mb.inputs)
        return enc.run(mb.inputs)

    def embed(self, modality: str, feats: EncoderOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Shared-space embeddings `[N, E]` of an adapter modality (+ auxiliary projector losses)."""
        return self.adapters[modality].embed_output(feats)

    @torch.no_grad()
    def anchor_texts(self, anchor: str, texts: Sequence[str]) -> torch.Tensor:
        """Frozen text-anchor embeddings `[N, E]`, memoised per sentence (the anchor never changes)."""
        enc = self.frozen.anchors[anchor]
        if anchor in self.text_tables:  # every caption encoded once into a table on disk (no LRU, no cliff)
            return self.text_tables[anchor].get(list(texts)).to(self.device) if texts else \
                torch.zeros(0, enc.pooled_dim, device=self.device)
        missing = list(dict.fromkeys(t for t in texts if (anchor, t) not in self._text_cache))
        if missing:
            pooled = F.normalize(enc(missing).pooled.float(), dim=-1).cpu()
            for t, e in zip(missing, pooled):
                self._text_cache[(anchor, t)] = e
            while len(self._text_cache) > self._text_cache_size:
                self._text_cache.popitem(last=False)
        if not texts:
            return torch.zeros(0, enc.pooled_dim, device=self.device)
        return torch.stack([self._text_cache[(anchor, t)] for t in texts]).to(self.device)

    @torch.no_grad()
    def precompute_texts(self, anchor: str, texts: set[str] | Sequence[str], batch_size: int = 128) -> None:
        """Embed a known set of anchor sentences in a fixed order and chunking, so cached values do not depend
        on which batch first met a sentence (bit-exact resume)."""
        ordered = sorted(set(texts))
        self._text_cache_size = max(self._text_cache_size, len(ordered))
        for i in range(0, len(ordered), batch_size):
            self.anchor_texts(anchor, ordered[i:i + batch_size])

    # --- training -----------------------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> LossTerms:
        return self.training_forward(batch)

    def training_forward(self, batch: Batch) -> LossTerms:
        """All loss terms of a (possibly mixed-task) batch, keyed by tuples; every rank calls the same collectives."""
        feats = {m: self.features(m, mb) for m, mb in batch.media.items()}
        losses: LossTerms = {}
        for task in self.tasks.values():
            losses.update(task.training_forward(self, batch, feats))
        return losses

    def llm_output(self, batch: Batch, feats: dict[str, EncoderOutput], rows: list[int]) -> Any:
        row_set = set(rows)
        sub: dict[str, EncoderOutput] = {}
        for m, mb in batch.media.items():
            if m not in self.adapters or self.adapters[m].llm_head is None:
                continue
            idx = [j for j, r in enumerate(mb.rows.tolist()) if r in row_set]
            if idx:
                sub[m] = feats[m][torch.tensor(idx, device=feats[m].tokens.device)]
        return self.frozen.mllm(prompts=[batch.prompts[i] for i in rows], targets=[batch.targets[i] for i in rows],
                                features=sub)

    def llm_loss(self, batch: Batch, feats: dict[str, EncoderOutput], rows: list[int], *, lm_only: bool = False
                 ) -> torch.Tensor:
        """Next-token loss of the frozen LLM on the targets of `rows` (prompt and media positions masked);
        adapter auxiliary losses are added unless `lm_only`."""
        out = self.llm_output(batch, feats, rows)
        return out.lm_loss if lm_only else out.loss

    def target_tokens(self, targets: Sequence[str]) -> int:
        """Loss-bearing tokens of the targets (their ids plus eos, as `MultimodalLM` builds the labels)."""
        tok = self.frozen.mllm.tokenizer
        ids = tok(list(targets), add_special_tokens=False)["input_ids"] if targets else []
        return sum(len(x) + (tok.eos_token_id is not None) for x in ids)

    # --- persistence --------------------------------------------------------------------------------------------
    def shared_projectors(self) -> dict[str, tuple[Projector, list[str]]]:
        """Projectors shared by several adapters: name -> (the one instance, the modalities using it)."""
        out: dict[str, tuple[Projector, list[str]]] = {}
        for m, adapter in self.adapters.items():
            for key, ref in adapter.config.shared.items():
                out.setdefault(ref["name"], (getattr(adapter, HEAD_ATTRS[key]), []))[1].append(m)
        return out

    def save_adapters(self, directory: Any, *, is_main_process: bool = True) -> dict[str, str]:
        """`save_pretrained` every adapter into `directory/<modality>`; shared projectors once into
        `directory/_shared/<name>` (projectors/shared.py), referenced by each adapter that uses them."""
        from pathlib import Path

        from ..projectors.shared import SHARED_DIR, save_shared_projector

        if SHARED_DIR in self.adapters:
            raise ValueError(f"modality name {SHARED_DIR!r} is reserved for the shared projectors' folder")
        shared_saved = {name: save_shared_projector(Path(directory) / SHARED_DIR / name, name, proj, users)
                        for name, (proj, users) in self.shared_projectors().items()} if is_main_process else {}
        out = {}
        for m, adapter in self.adapters.items():
            path = Path(directory) / m
            adapter.save_pretrained(path, is_main_process=is_main_process, shared_saved=shared_saved)
            out[m] = str(path)
        return out


# --- building from a recipe ------------------------------------------------------------------------------------
def _embed_dim(recipe: Recipe, anchors: dict[str, Encoder]) -> int | None:
    if recipe.model.embed_dim is not None:
        return recipe.model.embed_dim
    dims = {a: e.pooled_dim for a, e in anchors.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(f"anchors have different widths {dims}; set model.embed_dim and give anchors a common space")
    return next(iter(dims.values()), None)


def _feature_dims(modality: str, sources: Sequence[Any]) -> tuple[int, int] | None:
    """(token_dim, pooled_dim) when every source with `modality` is cached features; None otherwise."""
    from ..features import read_manifest

    manifests = {s.path: read_manifest(s.path) for s in sources if s.kind == "features"}

    def source_modality(s: Any) -> str | None:
        if s.kind == "uea":
            return s.modality or "imu"
        if s.kind == "features":
            return s.modality or manifests[s.path].get("modality")
        return s.modality

    if any(s.kind == "jsonl" or (s.kind != "features" and source_modality(s) == modality) for s in sources):
        return None  # raw inputs of this modality (a jsonl manifest may hold any modality)
    dims = {(int(manifests[s.path]["token_dim"]), int(manifests[s.path]["pooled_dim"])) for s in sources
            if s.kind == "features" and source_modality(s) == modality}
    if len(dims) > 1:
        _raise(f"adapters.{modality}: feature shards of different widths {sorted(dims)}")
    return dims.pop() if dims else None


def _raise(msg: str) -> Any:
    raise ValueError(msg)


def _check_projectors(modality: str, spec: AdapterSpec) -> None:
    """A recipe's projector options against the projector's options dataclass (one-line errors naming the field)."""
    from ..config import ConfigError
    from ..projectors import check_projector_options

    for head in ("embed_projector", "llm_projector"):
        proj = getattr(spec, head)
        if proj is None or isinstance(proj, str):  # a shared projector: checked once (SharedProjectors)
            continue
        where = f"adapters.{modality}.{head}"
        if not isinstance(proj, dict) or not isinstance(proj.get("name"), str):
            raise ConfigError(f"{where}: expected a mapping with a projector name, e.g. {{name: mlp}}, got {proj!r}")
        opts = {k: v for k, v in proj.items() if k not in ("name", "in_dim", "out_dim")}
        check_projector_options(proj["name"], opts, source=where)


def build_adapter_from_spec(modality: str, spec: AdapterSpec, *, embed_dim: int | None, llm_dim: int | None,
                            feature_dims: tuple[int, int] | None = None, seed: int = 0,
                            space: dict[str, EncoderSpec] | None = None, llm: dict[str, Any] | None = None,
                            shared: SharedProjectors | None = None) -> tuple[ModalityAdapter, Encoder | None]:
    """A fresh (or `init_from`) adapter for one modality and its encoder (registered only when trained/saved).

    `space` (the anchors' encoder specs) and `llm` are recorded in the adapter's config; an `init_from` adapter's
    recorded space is kept when this stage has no anchors of its own (e.g. LLM alignment after binding).

    With `feature_dims` (all its data are cached features) and a frozen encoder, the encoder is not built at all.
    Random initialisation is seeded from `seed` alone, so it does not depend on what was built before (the
    cached-feature and live-encoder runs of a recipe start from the same projector weights). A head named by a
    string is the shared projector of that name in `shared`.
    """
    _check_projectors(modality, spec)
    encoder = None
    torch.manual_seed(seed)  # a trained-from-scratch encoder's init
    if feature_dims is None or spec.train_encoder:
        encoder = spec.encoder.build(frozen=not spec.train_encoder)
        in_dim = encoder.pooled_dim if spec.feature == "pooled" else encoder.token_dim
    else:
        in_dim = feature_dims[1] if spec.feature == "pooled" else feature_dims[0]
    init_state: dict[str, torch.Tensor] = {}
    space = dict(space or {})
    if spec.init_from:
        from pathlib import Path

        init_state = load_weights(Path(spec.init_from) / WEIGHTS_NAME)
        previous = read_adapter_config(spec.init_from)
        space = {**previous.space, **space}
        llm = llm or previous.llm
    carries_encoder = spec.train_encoder or any(k.startswith("encoder.") for k in init_state)
    if carries_encoder and encoder is None:
        encoder = spec.encoder.build(frozen=True)
    dims = {"embed_projector": embed_dim, "llm_projector": llm_dim}
    shared_heads: dict[str, Projector] = {}
    for key in ("embed_projector", "llm_projector"):
        ref = getattr(spec, key)
        if isinstance(ref, str) and dims[key] is not None:
            if shared is None:
                raise ValueError(f"adapters.{modality}.{key}: {ref!r} names a shared projector; build the model "
                                 f"from a recipe that declares it under projectors")
            shared_heads[key] = shared.attach(ref, modality, in_dim=in_dim, out_dim=dims[key])
    heads = {key: {"name": shared_heads[key].name} if key in shared_heads else getattr(spec, key)
             for key in ("embed_projector", "llm_projector")}
    config = AdapterConfig(modality=modality, encoder=spec.encoder, in_dim=in_dim, space=space,
                           llm=llm if spec.llm_projector is not None else None, feature=spec.feature,
                           embed_dim=embed_dim if spec.embed_projector is not None else None,
                           embed_projector=heads["embed_projector"],
                           llm_dim=llm_dim if spec.llm_projector is not None else None,
                           llm_projector=heads["llm_projector"], train_encoder=carries_encoder,
                           shared={key: {"name": getattr(spec, key)} for key in shared_heads})
    if config.embed_dim is None and config.llm_dim is None:
        raise ValueError(f"adapters.{modality}: give an embed_projector (shared space) and/or an llm_projector")
    torch.manual_seed(seed + 1)  # the projector heads' init
    adapter = ModalityAdapter(config, encoder if carries_encoder else None, shared_heads=shared_heads)
    if init_state:
        heads = {name for name in ("embed_head", "llm_head") if getattr(adapter, name) is None}
        heads |= {HEAD_ATTRS[key] for key in shared_heads}  # a shared head comes from projectors.<name>.init_from
        dropped = sorted({k.split(".")[0] for k in init_state if k.split(".")[0] in heads})
        init_state = {k: v for k, v in init_state.items() if k.split(".")[0] not in heads}
        try:
            missing, unexpected = adapter.load_state_dict(init_state, strict=False)
        except RuntimeError as e:  # shape mismatch: other encoder options or projector sizes
            raise ValueError(f"adapters.{modality}.init_from={spec.init_from}: weights do not fit this adapter's "
                             f"encoder options/projectors ({str(e).splitlines()[-1].strip()})") from None
        if unexpected:
            raise ValueError(f"adapters.{modality}.init_from={spec.init_from}: weights do not fit this adapter "
                             f"(unexpected: {unexpected[:5]})")
        logger.info("%s: initialised from %s (%d new tensors%s)", modality, spec.init_from, len(missing),
                    f"; not used: {', '.join(dropped)}" if dropped else "")
    if encoder is not None and not spec.train_encoder:
        encoder.freeze()
    return adapter, encoder


def build_model(recipe: Recipe, *, need_llm: bool | None = None) -> AlignmentModel:
    """Everything a recipe trains and the frozen parts it trains against."""
    for m, spec in recipe.adapters.items():  # before anything is built: a typo fails in a second
        spec.encoder.checked(f"adapters.{m}.encoder.options")
        _check_projectors(m, spec)
    for a, spec in recipe.anchors.items():
        spec.encoder.checked(f"anchors.{a}.encoder.options")
    anchors = {a: s.encoder.build(frozen=True) for a, s in recipe.anchors.items()}
    space = {a: s.encoder for a, s in recipe.anchors.items()}
    llm_record = {"name_or_path": recipe.model.llm, "gguf_file": recipe.model.gguf_file} if recipe.model.llm else None
    embed_dim = _embed_dim(recipe, anchors)
    tasks = {s.task for s in recipe.data.train + recipe.data.eval}
    need_llm = bool(tasks & set(LLM_TASKS)) if need_llm is None else need_llm
    llm = tokenizer = source = None
    llm_dim = None
    if need_llm and recipe.model.llm:
        backend = llm_backend()
        llm, tokenizer, source = backend.load(recipe.model.llm, gguf_file=recipe.model.gguf_file,
                                              dtype=recipe.model.llm_dtype)
        llm_dim = int(llm.get_input_embeddings().embedding_dim)
    adapters, frozen = {}, {}
    shared = SharedProjectors(recipe.projectors, seed=recipe.seed)
    for m, spec in recipe.adapters.items():
        if spec.llm_projector is not None and llm_dim is None and need_llm:
            raise ValueError(f"adapters.{m}: llm_projector needs model.llm")
        dims = _feature_dims(m, recipe.data.train + recipe.data.eval)
        adapters[m], frozen[m] = build_adapter_from_spec(m, spec, embed_dim=embed_dim,
                                                         llm_dim=llm_dim if need_llm else None, feature_dims=dims,
                                                         seed=recipe.seed * 7919 + zlib.crc32(m.encode()) % 7919,
                                                         space=space, llm=llm_record, shared=shared)
    frozen = {m: e for m, e in frozen.items() if adapters[m].encoder is None and e is not None}
    mllm = None
    if llm is not None:
        mllm = backend.wrap(llm, tokenizer, {m: a for m, a in adapters.items() if a.llm_head is not None},
                            source=source)
        if recipe.model.lora is not None:
            lo = recipe.model.lora
            mllm.add_lora(r=lo.r, alpha=lo.alpha, dropout=lo.dropout, target_modules=lo.target_modules)
    order = [t for t in ("contrastive", *LLM_TASKS) if t in tasks] + sorted(tasks - {"contrastive", *LLM_TASKS})
    built = [TASKS.get(t).from_recipe(recipe, adapters=adapters, anchors=anchors, mllm=mllm) for t in order]
    built = [t for t in built if t is not None]
    weights = parse_loss_weights(recipe.train.loss_weights, [k for t in built for k in t.terms()], list(adapters))
    return AlignmentModel(adapters, anchors=anchors, frozen_encoders=frozen, mllm=mllm, tasks=built,
                          loss_weights=weights)


__all__ = ["AlignmentModel", "LLM_TASKS", "SharedProjectors", "build_adapter_from_spec", "build_model"]
