"""A saved adapter away from where it was trained: portable paths and plugin modules in its config, and the files
of a Hub upload with a model card."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..config import to_dict
from ..hub import model_card, portable_source, push_folder, stage_folder
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


__all__ = ["push_adapter_folder", "stage_adapter"]
