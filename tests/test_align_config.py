"""Training recipes: strict reading, env-var paths, overrides, and bad configs rejected naming file and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from anyalign.align.config import AdapterSpec, DataSource, load_recipe
from anyalign.cli.main import main
from anyalign.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _recipe(tmp_path: Path, **changes: object) -> dict:
    data_dir = tmp_path / "BasicMotions"
    data_dir.mkdir(exist_ok=True)
    base = {
        "name": "t",
        "adapters": {"imu": {"encoder": "imu", "train_encoder": True, "embed_projector": {"name": "mlp"}}},
        "anchors": {"text": {"encoder": {"name": "text", "pretrained": "${TEST_ASSETS}/minilm"}}},
        "data": {"train": [{"kind": "uea", "path": str(data_dir)}]},
        "train": {"lr": "3e-4", "max_steps": 10},
    }
    base.update(changes)
    return base


def _write(tmp_path: Path, data: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    text = yaml.safe_dump(data, sort_keys=False).replace("'3e-4'", "3e-4")  # a YAML 1.1 "string" float
    path.write_text(text)
    return path


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "minilm").mkdir()
    monkeypatch.setenv("TEST_ASSETS", str(tmp_path))
    return tmp_path


def test_valid_recipe_env_expansion_and_overrides(env: Path) -> None:
    path = _write(env, _recipe(env))
    r = load_recipe(path, ["train.max_steps=5", "adapters.imu.embed_projector.hidden_dim=64", "train.lr=1e-2"])
    assert r.train.max_steps == 5 and r.train.lr == pytest.approx(1e-2)
    assert isinstance(r.adapters["imu"], AdapterSpec) and r.adapters["imu"].embed_projector["hidden_dim"] == 64
    assert r.anchors["text"].encoder.pretrained == f"{env}/minilm"
    assert isinstance(r.data.train[0], DataSource) and r.output_path == Path("runs/t")
    assert load_recipe(path).train.lr == pytest.approx(3e-4)  # `3e-4` is a float, not a string


@pytest.mark.parametrize(("change", "field"), [
    ({"trian": {}}, "trian"),
    ({"train": {"lr": 1e-3, "batchsize": 4}}, "batchsize"),
    ({"adapters": {"imu": {"encoder": "imu", "embed_projektor": {"name": "mlp"}}}}, "adapters.imu"),
])
def test_unknown_keys_rejected(env: Path, change: dict, field: str) -> None:
    path = _write(env, _recipe(env, **change))
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert str(path) in str(e.value) and field in str(e.value) and "unknown key" in str(e.value)


def test_data_source_unknown_key_names_the_entry(env: Path) -> None:
    bad = _recipe(env)
    bad["data"]["train"][0]["splitt"] = "test"
    path = _write(env, bad)
    with pytest.raises(ConfigError, match=r"r\.yaml: data: train\[0\]: unknown key\(s\) splitt"):
        load_recipe(path)


@pytest.mark.parametrize(("change", "message"), [
    ({"train": {"lr": "fast"}}, "field 'lr' expects float, got 'fast'"),
    ({"train": {"max_steps": 2.5}}, "field 'max_steps' expects int"),
    ({"seed": "zero"}, "field 'seed' expects int"),
    ({"train": {"mixed_precision": "fp8"}}, "field 'mixed_precision'"),
    ({"train": {"batch_size": 0}}, "field 'batch_size' must be >= 1"),
])
def test_wrong_types_rejected(env: Path, change: dict, message: str) -> None:
    path = _write(env, _recipe(env, **change))
    with pytest.raises(ConfigError, match=str(path).replace(".", r"\.") + ".*" + message.replace("(", r"\(")):
        load_recipe(path)


def test_missing_files_and_unset_variables(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = _recipe(env)
    bad["data"]["train"][0]["path"] = str(env / "nope")
    path = _write(env, bad)
    with pytest.raises(ConfigError, match=r"r\.yaml: data\.train\[0\]\.path: .*nope: no such file"):
        load_recipe(path)
    path = _write(env, _recipe(env))
    monkeypatch.delenv("TEST_ASSETS")
    with pytest.raises(ConfigError, match=r"r\.yaml: field 'anchors\.text\.encoder\.pretrained': environment variable "
                                          r"TEST_ASSETS is not set"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_recipe(env / "absent.yaml")


def test_inconsistent_recipes_rejected(env: Path) -> None:
    with pytest.raises(ConfigError, match="contrastive data needs at least one anchor"):
        load_recipe(_write(env, _recipe(env, anchors={})))
    caption = _recipe(env)
    caption["data"]["train"][0]["task"] = "caption"
    with pytest.raises(ConfigError, match="model.llm: caption/instruct data needs a causal LM"):
        load_recipe(_write(env, caption))
    with pytest.raises(ConfigError, match="either trained .adapters. or a frozen anchor"):
        load_recipe(_write(env, _recipe(env, anchors={"imu": {"encoder": "imu"}})))


def test_cli_reports_bad_config_in_one_line(env: Path, capsys: pytest.CaptureFixture) -> None:
    path = _write(env, _recipe(env, trian={}))
    with pytest.raises(SystemExit) as e:
        main(["train", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "trian" in err and str(path) in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["imu_text_contrastive.yaml", "imu_llm_caption.yaml", "audio_llm_caption.yaml",
                                  "joint_instruct.yaml"])
def test_shipped_recipes_parse(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYALIGN_ASSETS", "/assets")
    recipe = load_recipe(CONFIGS / name, check=False)
    assert recipe.data.train and recipe.adapters


@pytest.mark.parametrize(("override", "message"), [
    ("train.clip_grad=-1", "'clip_grad' must be > 0"),
    ("train.warmup_steps=-5", "'warmup_steps' must be >= 0"),
    ("train.lr=0", "'lr' must be > 0"),
    ("train.betas=[0.9, 1.5]", "'betas' must be two numbers"),
    ("data.train.0.caption_templates=[a person.]", "no {caption} or {label} placeholder"),
    ("data.train.0.holdout=1.5", "'holdout' must be in"),
    ("data.train.0.classes=[yes,no,on,off]", "field 'classes' expects list[str] | None, got [True, False, True, False]"
     "; YAML reads unquoted yes/no/on/off/true/false as booleans: quote them"),
    ("data.train.0.caption_templates=[1, 2]", "field 'caption_templates' expects list[str], got [1, 2]"),
])
def test_settings_that_make_results_wrong_are_refused(env: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_recipe(_write(env, _recipe(env)), [override])


def test_duplicate_yaml_keys_are_refused(env: Path) -> None:
    path = env / "dup.yaml"
    path.write_text(_write(env, _recipe(env)).read_text() + "train: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match="duplicate key 'train'"):
        load_recipe(path)
