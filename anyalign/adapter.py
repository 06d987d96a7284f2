"""`ModalityAdapter`: a frozen encoder (by reference) plus trainable projectors, saved like a peft adapter.

On disk a saved adapter is a folder with two files:
`anyalign_adapter.json` (the `AdapterConfig`: the frozen encoder's `EncoderSpec`, the projector heads, and the
space it was aligned to: the anchor encoders' specs, and the LLM for soft tokens) and
`anyalign_adapter.safetensors` (only the trainable weights: projectors, and the encoder only when it was
trained, e.g. an IMU encoder learned from scratch). The frozen encoder is rebuilt from its spec, never saved.
Like peft's `base_model_name_or_path`, the recorded space means downstream commands (search, classify) find
the other side of the space from the adapter itself. Format v1 files (encoder as name + source + kwargs, no
space) are upgraded when read.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import read_saved, to_dict
from .encoders import Encoder, EncoderOutput, masked_mean
from .encoders.spec import EncoderSpec
from .hub import model_card, portable_source, push_folder, rebase_source, resolve_artifact, stage_folder
from .io import load_weights, read_json, save_weights, write_json
from .projectors import Projector, ProjectorOutput, create_projector
from .projectors.shared import (
    SHARED_DIR,
    build_projector_from_spec,
    load_shared_state,
    read_shared_config,
    save_shared_projector,
)
from .version import FORMAT_VERSION, __version__

logger = logging.getLogger(__name__)

CONFIG_NAME = "anyalign_adapter.json"
WEIGHTS_NAME = "anyalign_adapter.safetensors"


@dataclass
class AdapterConfig:
    """What an adapter is made of. Projector specs are `{"name": ..., **options}` (dims are filled in)."""

    modality: str
    encoder: EncoderSpec
    in_dim: int
    feature: Literal["tokens", "pooled"] = "tokens"  # which encoder output feeds the projectors
    embed_dim: int | None = None  # shared-space width; None = no shared-space head
    embed_projector: dict[str, Any] | None = None  # None with embed_dim set = identity on the pooled output
    llm_dim: int | None = None  # LLM hidden size; None = no LLM head
    llm_projector: dict[str, Any] | None = None
    train_encoder: bool = False  # the encoder's weights are trained and saved with the adapter
    space: dict[str, EncoderSpec] = field(default_factory=dict)  # anchors aligned to: modality -> encoder
    llm: dict[str, Any] | None = None  # the causal LM the soft tokens are for: {"name_or_path", "gguf_file"}
    # zero-shot use (align/calibration.py): {"seen_classes": [phrase], "label_text": {class: phrase},
    # "calibration": gamma or None, "calibration_source": {...where and how gamma was tuned}}
    zeroshot: dict[str, Any] | None = None
    #: heads that are a shared projector (projectors/shared.py): "embed_projector"/"llm_projector" ->
    #: {"name", "path" (from this folder), "sha256", "format_version"}; their weights live there, not here
    shared: dict[str, dict[str, Any]] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=list)  # modules outside anyalign that register its encoder/projectors
    format_version: int = FORMAT_VERSION
    anyalign_version: str = __version__

    def __post_init__(self) -> None:
        if isinstance(self.encoder, (str, dict)):
            self.encoder = EncoderSpec.from_dict(self.encoder, source="encoder")
        self.space = {m: EncoderSpec.from_dict(s, source=f"space.{m}") for m, s in (self.space or {}).items()}
        if self.feature not in ("tokens", "pooled"):
            raise ValueError(f"feature: expected 'tokens' or 'pooled', got {self.feature!r}")
        if self.embed_dim is None and self.llm_dim is None:
            raise ValueError("an adapter needs embed_dim (shared space) and/or llm_dim (LLM soft tokens)")
        if self.llm_dim is not None and not self.llm_projector:
            raise ValueError("llm_dim is set but llm_projector is missing (e.g. {'name': 'mlp'})")
        for key in ("embed_projector", "llm_projector"):
            spec = getattr(self, key)
            if spec is not None and "name" not in spec:
                raise ValueError(f"{key}: expected a mapping with a 'name' (e.g. {{'name': 'mlp'}}), got {spec!r}")


def upgrade_config(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A saved config of any earlier format in the current layout (v1: `encoder` name + `encoder_pretrained` +
    `encoder_kwargs`, no recorded space)."""
    version = int(data.get("format_version", 1))
    if version > FORMAT_VERSION:
        logger.warning("%s: written by a newer format (%s > %s)", source, version, FORMAT_VERSION)
    if version < 2 and not isinstance(data.get("encoder"), dict):
        data = dict(data)
        data["encoder"] = {"name": data.get("encoder"), "pretrained": data.pop("encoder_pretrained", None),
                           "options": data.pop("encoder_kwargs", None) or {}}
    return data


HEAD_ATTRS = {"embed_projector": "embed_head", "llm_projector": "llm_head"}  # config key -> module attribute


def _build_head(spec: dict[str, Any] | None, in_dim: int, out_dim: int | None) -> Projector | None:
    if spec is None or out_dim is None:
        return None
    opts = {k: v for k, v in spec.items() if k not in ("name", "in_dim", "out_dim")}
    return create_projector(spec["name"], in_dim=in_dim, out_dim=out_dim, **opts)


class ModalityAdapter(nn.Module):
    """Encoder features -> (a) an L2-normalised shared-space embedding and/or (b) LLM soft tokens."""

    def __init__(self, config: AdapterConfig, encoder: Encoder | None = None, *,
                 shared_heads: dict[str, Projector] | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        shared_heads = dict(shared_heads or {})
        if set(config.shared) != set(shared_heads):
            raise ValueError(f"{config.modality}: shared heads {sorted(config.shared)} need their projector "
                             f"instances (got {sorted(shared_heads)}); load saved adapters with from_pretrained")
        self.embed_head = shared_heads.get("embed_projector") or _build_head(config.embed_projector, config.in_dim,
                                                                             config.embed_dim)
        self.llm_head = shared_heads.get("llm_projector") or _build_head(config.llm_projector, config.in_dim,
                                                                         config.llm_dim)
        if config.embed_dim is not None and self.embed_head is None and config.embed_dim != config.in_dim:
            raise ValueError(f"identity shared-space head needs embed_dim == in_dim ({config.in_dim}), "
                             f"got embed_dim={config.embed_dim}; add an embed_projector")

    @property
    def modality(self) -> str:
        return self.config.modality

    # --- forward paths --------------------------------------------------------------------------------
    def encode(self, inputs: Sequence[Any]) -> EncoderOutput:
        """Run the (frozen) encoder on raw inputs."""
        if self.encoder is None:
            raise RuntimeError(f"{self.modality} adapter has no encoder loaded; pass features or load_encoder=True")
        return self.encoder(inputs)

    def _features(self, feats: EncoderOutput) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.feature == "pooled":
            return feats.pooled[:, None, :], torch.ones(feats.pooled.shape[0], 1, dtype=torch.bool,
                                                         device=feats.pooled.device)
        return feats.tokens, feats.mask

    def embed_output(self, feats: EncoderOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Shared-space embeddings `[B, E]` (L2-normalised) and the projector's auxiliary losses."""
        if self.config.embed_dim is None:
            raise RuntimeError(f"{self.modality} adapter has no shared-space head (embed_dim is None)")
        if self.embed_head is None:
            return F.normalize(feats.pooled.float(), dim=-1), {}
        tokens, mask = self._features(feats)
        out = self.embed_head(tokens, mask, modality=self.modality)
        return F.normalize(masked_mean(out.tokens, out.mask), dim=-1), out.losses

    def embed(self, feats: EncoderOutput) -> torch.Tensor:
        """Shared-space embeddings `[B, E]`, L2-normalised."""
        return self.embed_output(feats)[0]

    def soft_tokens(self, feats: EncoderOutput) -> ProjectorOutput:
        """LLM soft tokens `[B, N, D_llm]` with mask (or discrete codes for the `rvq` projector)."""
        if self.llm_head is None:
            raise RuntimeError(f"{self.modality} adapter has no LLM head (llm_dim is None)")
        tokens, mask = self._features(feats)
        return self.llm_head(tokens, mask, modality=self.modality)

    @torch.no_grad()
    def embed_inputs(self, inputs: Sequence[Any]) -> torch.Tensor:
        """Raw inputs -> shared-space embeddings (inference)."""
        return self.embed(self.encode(inputs))

    # --- persistence --------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights an adapter file holds: projectors, plus the encoder when `train_encoder`."""
        skip = ("encoder.", *(f"{HEAD_ATTRS[key]}." for key in self.config.shared))  # shared heads: saved apart
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}
        if self.config.train_encoder and self.encoder is not None:
            state.update({f"encoder.{k}": v for k, v in self.encoder.trained_state_dict().items()})
        return state

    def save_pretrained(self, save_directory: str | os.PathLike, *, is_main_process: bool = True,
                        shared_saved: dict[str, dict[str, Any]] | None = None) -> Path:
        """Write `anyalign_adapter.json` + `anyalign_adapter.safetensors` into `save_directory`; a shared head is
        written once into `../_shared/<name>/` (`shared_saved`: records of those already written there)."""
        path = Path(save_directory)
        if not is_main_process:
            return path
        path.mkdir(parents=True, exist_ok=True)
        save_weights(path / WEIGHTS_NAME, self.trainable_state_dict(),
                     metadata={"format": "anyalign-adapter", "format_version": str(FORMAT_VERSION)})
        config = {**to_dict(self.config), **_portable_fields(self.config, path)}
        for key, ref in self.config.shared.items():
            head, where = getattr(self, HEAD_ATTRS[key]), path.parent / SHARED_DIR / ref["name"]
            saved = (shared_saved or {}).get(ref["name"])
            if saved is None:
                saved = save_shared_projector(where, ref["name"], head, [self.modality])
            config["shared"][key] = {**saved, "path": os.path.relpath(where, path)}
            config[key] = {k: v for k, v in head.spec().items() if k not in ("in_dim", "out_dim")}
        write_json(path / CONFIG_NAME, {**config, "format_version": FORMAT_VERSION,
                                        "anyalign_version": __version__})  # written in the current layout
        return path

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        revision: str | None = None,
        load_encoder: bool = True,
        encoder_pretrained: str | None = None,
        is_trainable: bool = False,
        device: str | torch.device | None = None,
        autocast: str | None = None,
    ) -> ModalityAdapter:
        """Load a saved adapter (a folder, or a Hub repo `org/name[@rev]`); the frozen encoder is rebuilt from its
        recorded name and weights, importing the plugin module that provides it when one is recorded.

        Args:
            revision: Hub revision (branch, tag or commit) to pin; also written `org/name@rev`.
            load_encoder: also build the encoder (skip it when working from cached features).
            encoder_pretrained: override the recorded encoder weights source (e.g. a local copy).
            is_trainable: leave projector weights trainable (default: frozen, eval mode).
        """
        path = resolve_adapter(path, revision=revision)
        config = read_adapter_config(path)
        encoder = None
        if load_encoder:
            _import_plugins(config, path)
            spec = config.encoder if autocast is None else config.encoder.replace(autocast=autocast)
            try:
                encoder = spec.build(pretrained=encoder_pretrained, frozen=not (is_trainable and config.train_encoder))
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{path}: {e} (or pass encoder_pretrained=PATH)") from None
        shared = {}
        for key, ref in config.shared.items():  # shared projectors: one folder beside the adapters, checked by hash
            where = path / ref["path"]
            shared[key] = build_projector_from_spec(read_shared_config(where)["projector"])
            shared[key].load_state_dict(load_shared_state(where, sha256=ref.get("sha256")))
        adapter = cls(config, encoder, shared_heads=shared)
        state = load_weights(path / WEIGHTS_NAME)
        if not load_encoder:
            state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        missing, unexpected = adapter.load_state_dict(state, strict=False)
        loaded_apart = ("encoder.", *(f"{HEAD_ATTRS[key]}." for key in config.shared))  # rebuilt / shared part
        missing = [k for k in missing if not k.startswith(loaded_apart)]
        if missing or unexpected:
            raise ValueError(f"{path / WEIGHTS_NAME}: weights do not match the config "
                             f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})")
        if device is not None:
            adapter.to(device)
        if not is_trainable:
            adapter.requires_grad_(False).eval()
        elif encoder is not None and not config.train_encoder:
            encoder.freeze()
        return adapter


    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None, branch: str | None = None,
                    commit_message: str = "Upload anyalign adapter", evaluation: dict[str, Any] | None = None,
                    recipe: dict[str, Any] | None = None) -> str:
        """Save this adapter with a model card (`evaluation`: measured numbers for it) and upload it to the Hub repo
        `repo_id` (created if needed); returns the commit URL. A saved folder: `push_adapter_folder`."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(Path(tmp) / "adapter")
            stage = stage_adapter(Path(tmp) / "adapter", Path(tmp) / "stage", repo_id=repo_id, evaluation=evaluation,
                                  recipe=recipe)
            return push_folder(stage, repo_id, private=private, token=token, branch=branch,
                               commit_message=commit_message)


def resolve_adapter(path: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local adapter folder, or a Hub repo id (`org/name`, `org/name@rev`) downloaded once into the Hub cache."""
    return resolve_artifact(path, marker=CONFIG_NAME, what="adapter", revision=revision)


def read_adapter_config(path: str | os.PathLike, *, revision: str | None = None) -> AdapterConfig:
    """The config of a saved adapter folder or Hub repo (any format version), without building anything."""
    folder = resolve_adapter(path, revision=revision)
    return read_saved(AdapterConfig, folder / CONFIG_NAME, what="adapter",
                      upgrade=lambda data, source: _rebased(upgrade_config(data, source), folder))


def _rebased(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Weights recorded as `./path` (inside the adapter folder) made absolute for this folder's location."""
    data = dict(data)
    if isinstance(data.get("encoder"), dict):
        data["encoder"] = {**data["encoder"], "pretrained": rebase_source(data["encoder"].get("pretrained"), folder)}
    if isinstance(data.get("space"), dict):
        data["space"] = {m: {**s, "pretrained": rebase_source(s.get("pretrained"), folder)} if isinstance(s, dict)
                         else s for m, s in data["space"].items()}
    return data


def _plugin_module(factory: Any) -> str | None:
    module = getattr(factory, "__module__", None) or ""
    return None if not module or module == "__main__" or module.split(".")[0] == "anyalign" else module


def _portable_fields(config: AdapterConfig, folder: Path) -> dict[str, Any]:
    """The fields that name things outside the adapter, written portably: encoder weights (see `anyalign.hub`), the
    LLM's location, and the plugin modules that register its encoder and projectors."""
    from .encoders.registry import ENCODERS, encoder_info
    from .projectors import PROJECTORS

    plugins = list(config.plugins)
    try:
        encoder_info(config.encoder.name)
        factories = [ENCODERS.get(config.encoder.name)]
        factories += [PROJECTORS.get(p["name"]) for p in (config.embed_projector, config.llm_projector) if p]
    except (KeyError, ValueError):
        factories = []
    for factory in factories:
        module = _plugin_module(factory)
        if module and module not in plugins:
            plugins.append(module)
    out: dict[str, Any] = {"encoder": config.encoder.portable(folder).to_dict(),
                           "space": {m: s.portable(folder).to_dict() for m, s in config.space.items()},
                           "plugins": plugins}
    if config.llm and config.llm.get("name_or_path"):
        out["llm"] = {**config.llm, "name_or_path": portable_source(config.llm["name_or_path"], folder)}
    return out


def _import_plugins(config: AdapterConfig, path: Path) -> None:
    """Import the plugin modules the adapter records; an encoder nobody registers is one line naming --plugin."""
    from .encoders.registry import encoder_info
    from .plugins import PluginError, load_plugins
    from .registry import UnknownNameError

    for module in config.plugins:
        try:
            load_plugins([module])
        except PluginError as e:
            raise PluginError(f"{path}: encoder {config.encoder.name!r} comes from plugin module {module!r}, which "
                              f"cannot be imported here ({str(e).split(': ', 1)[-1]}); install the package that "
                              f"provides it, or pass --plugin MODULE") from None
    try:
        encoder_info(config.encoder.name)
    except UnknownNameError as e:
        raise UnknownNameError(f"{path}: {e}; if a plugin provides it, pass --plugin MODULE (or set "
                               f"ANYALIGN_PLUGINS)") from None


def stage_adapter(folder: str | os.PathLike, dest: str | os.PathLike, *, repo_id: str | None = None,
                  evaluation: dict[str, Any] | None = None, recipe: dict[str, Any] | None = None) -> Path:
    """The files of a Hub upload in `dest`: the adapter's config and weights plus a README.md model card. Numbers
    and training data come from `evaluation`/`recipe`, else from the run the folder was saved by (`RUN/adapters/M`:
    `RUN/eval.json`, `RUN/recipe.yaml`)."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    if config.shared:
        raise ValueError(f"{folder}: its heads {sorted(config.shared)} are shared projectors stored beside it; "
                         f"pushing those is not supported yet")
    run = folder.parent.parent if folder.parent.name == "adapters" else None
    if evaluation is None and run is not None and (run / "eval.json").is_file():
        evaluation = read_json(run / "eval.json")
    if recipe is None and run is not None and (run / "recipe.yaml").is_file():
        import yaml

        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    dest = stage_folder(folder, dest, [CONFIG_NAME, WEIGHTS_NAME])
    config_dict = {**to_dict(config), **_portable_fields(config, folder)}
    for spec in (config_dict["encoder"], *config_dict["space"].values()):  # weights inside the folder go along
        inner = spec.get("pretrained") or ""
        if inner.startswith("./") and not (dest / inner).exists():
            copy = shutil.copytree if (folder / inner).is_dir() else shutil.copy2
            (dest / inner).parent.mkdir(parents=True, exist_ok=True)
            copy(folder / inner, dest / inner)
    write_json(dest / CONFIG_NAME, {**read_json(folder / CONFIG_NAME), **{k: config_dict[k] for k in
                                                                          ("encoder", "space", "plugins")}})
    (dest / "README.md").write_text(model_card(config_dict, repo_id=repo_id, evaluation=evaluation, recipe=recipe))
    return dest


def push_adapter_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
                        branch: str | None = None, commit_message: str = "Upload anyalign adapter") -> str:
    """Upload a saved adapter folder with its model card to the Hub repo `repo_id`; returns the commit URL."""
    with tempfile.TemporaryDirectory() as tmp:
        stage = stage_adapter(folder, Path(tmp) / "stage", repo_id=repo_id)
        return push_folder(stage, repo_id, private=private, token=token, branch=branch, commit_message=commit_message)


def build_adapter(
    modality: str,
    encoder: Encoder | EncoderSpec | str,
    *,
    feature: Literal["tokens", "pooled"] = "tokens",
    embed_dim: int | None = None,
    embed_projector: dict[str, Any] | None = None,
    llm_dim: int | None = None,
    llm_projector: dict[str, Any] | None = None,
    train_encoder: bool = False,
    space: dict[str, EncoderSpec] | None = None,
    llm: dict[str, Any] | None = None,
) -> ModalityAdapter:
    """Create a fresh adapter around an encoder: an `EncoderSpec` (or registry name) built here, or an instance
    (its spec is `EncoderSpec.of(encoder)`). `space`: the anchor encoders it will be aligned to."""
    if isinstance(encoder, (str, EncoderSpec)):
        spec = EncoderSpec.from_dict(encoder).checked("encoder")
        encoder = spec.build(frozen=not train_encoder)
    else:
        spec = EncoderSpec.of(encoder)
    in_dim = encoder.pooled_dim if feature == "pooled" else encoder.token_dim
    config = AdapterConfig(modality=modality, encoder=spec, in_dim=in_dim, feature=feature, embed_dim=embed_dim,
                           embed_projector=embed_projector, llm_dim=llm_dim, llm_projector=llm_projector,
                           train_encoder=train_encoder, space=dict(space or {}), llm=llm)
    if train_encoder:
        encoder.unfreeze()
    return ModalityAdapter(config, encoder)


__all__ = ["AdapterConfig", "HEAD_ATTRS", "ModalityAdapter", "build_adapter", "push_adapter_folder",
           "read_adapter_config", "resolve_adapter", "stage_adapter", "upgrade_config", "CONFIG_NAME", "WEIGHTS_NAME"]
