"""Shipped recipes: package data read by name with `load_recipe(name, overrides)`; the demos' recipes are these."""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path

import pytest
import tomllib

from anyalign.align.config import Recipe, load_recipe
from anyalign.config import RECIPES_DIR, ConfigError, recipe_file, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_shipped_recipe_loads_by_name(name: str) -> None:
    by_name = load_recipe(name, check=False)
    assert isinstance(by_name, Recipe) and by_name == load_recipe(ROOT / "configs" / f"{name}.yaml", check=False)


def test_overrides_apply_to_a_shipped_recipe() -> None:
    shipped = load_recipe("sound_text_contrastive", check=False)
    r = load_recipe("sound_text_contrastive", ["train.max_steps=7", "data.train.0.path=/x/train", "seed=5",
                                               "anchors.text.temperature=0.1"], check=False)
    assert (r.train.max_steps, r.data.train[0].path, r.seed, r.anchors["text"].temperature) == (7, "/x/train", 5, 0.1)
    assert r.train.lr == shipped.train.lr and r.adapters == shipped.adapters  # the rest as shipped
    with pytest.raises(ConfigError, match=r"sound_text_contrastive.yaml: train: unknown key\(s\) max_stepz"):
        load_recipe("sound_text_contrastive", ["train.max_stepz=7"], check=False)


def test_unknown_name_lists_the_shipped_recipes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="imu_text_contrastive") as e:
        load_recipe("no_such_recipe")
    assert "\n" not in str(e.value)
    own = tmp_path / "mine.yaml"
    assert recipe_file(own) == own  # a path stays a path (load_yaml then names it when missing)
    with pytest.raises(ConfigError, match="mine.yaml: config file not found"):
        load_recipe(own)


def test_recipes_and_their_data_are_package_data() -> None:
    """The package ships `anyalign/configs` (the checkout's configs/): every file there matches a package-data glob,
    so a non-editable install finds the same recipes and their ${RECIPE_DIR}/data files."""
    assert (ROOT / "anyalign" / "configs").resolve() == (ROOT / "configs").resolve() == RECIPES_DIR.resolve()
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["anyalign"]
    files = [p.relative_to(RECIPES_DIR).as_posix() for p in RECIPES_DIR.rglob("*") if p.is_file()]
    assert len(files) > 10 and any(f.startswith("data/") for f in files)
    missed = [f for f in files if not any(fnmatch(f"configs/{f}", g.replace("**/", "*")) for g in globs)]
    assert not missed


def test_sound_demo_recipe_is_the_shipped_recipe_with_overrides(assets: Path, tmp_path: Path) -> None:
    from anyalign.demos.sound_adapter import RECIPE, sound_recipe

    (tmp_path / "f" / "train").mkdir(parents=True)
    (tmp_path / "f" / "test").mkdir()
    (tmp_path / "f" / "train" / "manifest.json").write_text(json.dumps({"count": 20}))
    demo, shipped = sound_recipe(tmp_path / "f", tmp_path / "run", steps=40, root=assets), load_recipe(RECIPE,
                                                                                                        check=False)
    assert demo.data.train[0].path == str(tmp_path / "f" / "train") and demo.data.eval[0].path.endswith("f/test")
    assert (demo.train.batch_size, demo.train.max_steps, demo.eval.every) == (20, 40, 40)
    assert demo.anchors["text"].temperature == shipped.anchors["text"].temperature
    assert demo.adapters["audio"].embed_projector == shipped.adapters["audio"].embed_projector
