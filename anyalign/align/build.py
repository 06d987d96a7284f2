"""Building the `AlignmentModel` of a recipe: its anchors, one adapter per modality (projectors checked against
their options first, widths from the anchors, the LLM or cached feature shards), the frozen LLM when a task needs
it (from the LLM backend, `anyalign.language_model`), and the tasks its data name."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from typing import Any

import torch

from ..adapter import HEAD_ATTRS, WEIGHTS_NAME, AdapterConfig, ModalityAdapter, read_adapter_config
from ..config import ConfigError
from ..encoders import Encoder
from ..encoders.spec import EncoderSpec
from ..features import read_manifest
from ..io import load_weights
from ..language_model import llm_backend
from ..projectors import Projector, check_projector_options
from ..projectors.base import spec_options
from .config import TASK_REGISTRY, AdapterSpec, Recipe
from .model import AlignmentModel
from .shared import SharedProjectors
from .sources import source_modality
from .tasks import LLM_TASKS, parse_loss_weights

logger = logging.getLogger(__name__)


def _embed_dim(recipe: Recipe, anchors: dict[str, Encoder]) -> int | None:
    if recipe.model.embed_dim is not None:
        return recipe.model.embed_dim
    dims = {a: e.pooled_dim for a, e in anchors.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(f"anchors have different widths {dims}; set model.embed_dim and give anchors a common space")
    return next(iter(dims.values()), None)


def _feature_dims(modality: str, sources: Sequence[Any], encoder: str | None = None) -> tuple[int, int] | None:
    """(token_dim, pooled_dim) when every source with `modality` is cached features; None otherwise. With `encoder`
    (the adapter's encoder name), a source that renames the features' modality must have them from that encoder."""
    manifests = {s.path: read_manifest(s.path) for s in sources if s.kind == "features"}
    for s in sources:  # a source may rename the features' modality (speech for audio) if the encoder matches
        stored = manifests[s.path].get("modality") if s.kind == "features" else None
        if encoder and s.modality == modality and stored and stored != modality:
            made_by = manifests[s.path].get("encoder")
            made_by = made_by.get("name") if isinstance(made_by, dict) else made_by
            if made_by != encoder:
                raise ValueError(f"{s.path}: features of modality {stored!r} (encoder {made_by!r}), but the data "
                                 f"source says {modality!r}, whose adapter uses encoder {encoder!r}")
    if any(s.kind == "jsonl" or (s.kind != "features" and source_modality(s) == modality) for s in sources):
        return None  # raw inputs of this modality (a jsonl manifest may hold any modality)
    dims = {(int(manifests[s.path]["token_dim"]), int(manifests[s.path]["pooled_dim"])) for s in sources
            if s.kind == "features" and source_modality(s) == modality}
    if len(dims) > 1:
        raise ValueError(f"adapters.{modality}: feature shards of different widths {sorted(dims)}")
    return dims.pop() if dims else None


def _check_projectors(modality: str, spec: AdapterSpec) -> None:
    """A recipe's projector options against the projector's options dataclass (one-line errors naming the field)."""
    for head in ("embed_projector", "llm_projector"):
        proj = getattr(spec, head)
        if proj is None or isinstance(proj, str):  # a shared projector: checked once (SharedProjectors)
            continue
        where = f"adapters.{modality}.{head}"
        if not isinstance(proj, dict) or not isinstance(proj.get("name"), str):
            raise ConfigError(f"{where}: expected a mapping with a projector name, e.g. {{name: mlp}}, got {proj!r}")
        check_projector_options(proj["name"], spec_options(proj), source=where)


def build_adapter_from_spec(modality: str, spec: AdapterSpec, *, embed_dim: int | None, llm_dim: int | None,
                            feature_dims: tuple[int, int] | None = None, seed: int = 0,
                            space: dict[str, EncoderSpec] | None = None, llm: dict[str, Any] | None = None,
                            shared: SharedProjectors | None = None) -> tuple[ModalityAdapter, Encoder | None]:
    """A fresh (or `init_from`) adapter for one modality and its encoder (registered only when trained/saved).

    `space` (the anchors' specs; an `init_from` adapter's own when this stage has none) and `llm` are recorded in its
    config. With `feature_dims` (all its data cached) a frozen encoder is not built. Initialisation is seeded from
    `seed` alone, so cached-feature and live-encoder runs start alike. A head named by a string is `shared`'s."""
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
        dims = _feature_dims(m, recipe.data.train + recipe.data.eval, spec.encoder.name)
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
    built = [TASK_REGISTRY.get(t).from_recipe(recipe, adapters=adapters, anchors=anchors, mllm=mllm) for t in order]
    built = [t for t in built if t is not None]
    weights = parse_loss_weights(recipe.train.loss_weights, [k for t in built for k in t.terms()], list(adapters))
    return AlignmentModel(adapters, anchors=anchors, frozen_encoders=frozen, mllm=mllm, tasks=built,
                          loss_weights=weights)


__all__ = ["build_adapter_from_spec", "build_model"]
