"""A saved adapter away from where it was trained: portable paths and plugin modules in its config, and the files
of a Hub upload with a model card."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..config import to_dict
from ..hub import hub_offline, is_hub_id, portable_source
from ..io import read_json, write_json
from .config import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, read_adapter_config


def _plugin_module(factory: Any) -> str | None:
    module = getattr(factory, "__module__", None) or ""
    return None if not module or module == "__main__" or module.split(".")[0] == "anyalign" else module


def portable_fields(config: AdapterConfig, folder: Path) -> dict[str, Any]:
    """The fields that name things outside the adapter, written portably: encoder weights (see `anyalign.hub`), the
    LLM's location, and the plugin modules that register its encoder and projectors."""
    from ..encoders.registry import ENCODERS, encoder_info
    from ..projectors import PROJECTORS

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


def import_plugins(config: AdapterConfig, path: Path) -> None:
    """Import the plugin modules the adapter records; an encoder nobody registers is one line naming --plugin."""
    from ..encoders.registry import encoder_info
    from ..plugins import PluginError, load_plugins
    from ..registry import UnknownNameError

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
    config_dict = {**to_dict(config), **portable_fields(config, folder)}
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
                        branch: str | None = None, commit_message: str = "Upload anyalign adapter",
                        evaluation: dict[str, Any] | None = None, recipe: dict[str, Any] | None = None) -> str:
    """Upload a saved adapter folder with its model card (`stage_adapter`) to the Hub repo `repo_id`; returns the
    commit URL."""
    with tempfile.TemporaryDirectory() as tmp:
        stage = stage_adapter(folder, Path(tmp) / "stage", repo_id=repo_id, evaluation=evaluation, recipe=recipe)
        return push_folder(stage, repo_id, private=private, token=token, branch=branch, commit_message=commit_message)


def stage_folder(src: str | os.PathLike, dest: str | os.PathLike, files: Iterable[str]) -> Path:
    """Copy the named files of `src` (those present) into a fresh `dest` for an upload; returns `dest`."""
    src, dest = Path(src), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in files:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    return dest


def model_card(config: Mapping[str, Any], *, repo_id: str | None = None, evaluation: Mapping[str, Any] | None = None,
               recipe: Mapping[str, Any] | None = None) -> str:
    """A Hub model card (README.md) for a saved adapter: what it reads, the space it was aligned to, what it was
    trained on (from the run's recipe) and its measured numbers (from the run's eval.json), with chance levels."""
    modality = config.get("modality", "?")
    enc = config.get("encoder") or {}
    space = config.get("space") or {}
    title = repo_id or f"anyalign {modality} adapter"
    from huggingface_hub import ModelCardData

    tags = ["anyalign", "multimodal", "adapter", str(modality)] + [str(m) for m in space]
    bases = [s.get("pretrained") for s in space.values() if s.get("pretrained") and is_hub_id(str(s["pretrained"]))]
    front = ["---", ModelCardData(library_name="anyalign", tags=list(dict.fromkeys(tags)),
                                  base_model=list(dict.fromkeys(bases)) or None).to_yaml(), "---"]
    body = [f"# {title}", "",
            f"An anyalign adapter that embeds **{modality}** inputs into a shared space.", "",
            "## What it is", "",
            f"- frozen encoder: `{enc.get('name')}`" + (f" (weights `{enc.get('pretrained')}`)"
                                                       if enc.get("pretrained") else " (weights saved here)"
                                                       if config.get("train_encoder") else ""),
            f"- projector: `{(config.get('embed_projector') or {}).get('name', 'identity')}` -> "
            f"{config.get('embed_dim')}-d, L2-normalised"]
    for m, s in space.items():
        body.append(f"- aligned to the `{m}` side: `{s.get('name')}`"
                    + (f" (`{s.get('pretrained')}`)" if s.get("pretrained") else ""))
    if config.get("llm"):
        body.append(f"- LLM soft tokens for `{config['llm'].get('name_or_path')}`")
    if recipe:
        body += ["", "## Training", ""]
        data = recipe.get("data") or {}
        for part in ("train", "validation", "eval"):
            for s in data.get(part) or []:
                path = s.get("path") if isinstance(s, Mapping) else s
                body.append(f"- {part}: `{Path(str(path)).name}`"
                            + (f" ({s.get('kind')})" if isinstance(s, Mapping) and s.get("kind") else ""))
        train = recipe.get("train") or {}
        if train:
            body.append(f"- {train.get('max_steps')} steps, batch {train.get('batch_size')}, lr {train.get('lr')}")
    body += ["", "## Evaluation", ""]
    if evaluation:
        body += ["Measured by anyalign at the end of training on the run's held-out data (see the recipe for the "
                 "split); `chance` rows give the chance level of the metric beside them.", "",
                 "| metric | value |", "| --- | --- |"]
        body += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in evaluation.items()
                 if k.startswith("eval/") or k == "step"]
    else:
        body.append("No evaluation was saved with this adapter.")
    body += ["", "## Use", "", "```python", "from anyalign import ModalityAdapter", "",
             f'adapter = ModalityAdapter.from_pretrained("{repo_id or "PATH"}")',
             "vectors = adapter.embed_inputs(inputs)  # [N, E], L2-normalised", "```", "",
             "Command line: `anyalign search --adapter " + (repo_id or "PATH") + " ...`; as a sentence-transformers "
             "model: `anyalign export st " + (repo_id or "PATH") + " -o st-model`.", ""]
    return "\n".join(front + body)


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
                branch: str | None = None, commit_message: str = "Upload anyalign adapter") -> str:
    """Create the Hub repo `repo_id` if needed and upload `folder` to it (`HfApi.create_repo` + `upload_folder`);
    returns the commit URL. Needs network and a token (`hf auth login` or `token=`)."""
    if hub_offline():
        raise RuntimeError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if branch:
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=branch,
                             commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


__all__ = ["import_plugins", "model_card", "portable_fields", "push_adapter_folder", "push_folder", "stage_adapter",
           "stage_folder"]
