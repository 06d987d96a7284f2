"""accelerate conventions: the launcher's (or `accelerate config`'s) mixed precision and gradient accumulation are
used unless the recipe sets them (a conflict is one warning line); `train.report_to` picks accelerate trackers."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_align_train import _env, _recipe, _windows

from anyalign.align import load_recipe
from anyalign.align.launch import launcher_settings
from anyalign.config import ConfigError


@pytest.mark.slow  # a real `accelerate launch` subprocess: 45-80 s on a loaded 2-core machine
def test_accelerate_launch_bf16_trains_in_bf16(tmp_path: Path, minilm_dir: Path) -> None:
    recipe = _recipe(tmp_path, _windows(tmp_path / "data", n=16), minilm_dir, max_steps=4, save_every=100)
    launch = Path(sys.executable).parent / "accelerate"
    cmd = [str(launch), "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "bf16",
           "--dynamo_backend", "no", "-m", "anyalign.cli.main", "train", str(recipe), "-o", str(tmp_path / "run")]
    # accelerate launch exports its --gradient_accumulation_steps only for DeepSpeed; the variable itself is honoured
    env = {**_env(), "OMP_NUM_THREADS": "1", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert state["mixed_precision"] == "bf16" and state["grad_accum"] == 2 and state["step"] == 4
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["train"]
    assert saved["mixed_precision"] == "bf16" and saved["grad_accum"] == 2  # the run records what it used


def test_recipe_wins_over_the_launcher_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    manifest = _windows(tmp_path / "data", n=4)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    unset = load_recipe(_recipe(tmp_path, manifest, tmp_path), check=False)
    launcher_settings(unset)
    assert (unset.train.mixed_precision, unset.train.grad_accum) == ("bf16", 3)
    (tmp_path / "b").mkdir()
    pinned = load_recipe(_recipe(tmp_path / "b", manifest, tmp_path, mixed_precision="no"), check=False)
    with caplog.at_level(logging.WARNING):
        launcher_settings(pinned)
    assert (pinned.train.mixed_precision, pinned.train.grad_accum) == ("no", 3)
    lines = [r.getMessage() for r in caplog.records if "overrides" in r.getMessage()]
    assert lines == ["train.mixed_precision=no from the recipe overrides the launcher's "
                     "ACCELERATE_MIXED_PRECISION=bf16"]
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    (tmp_path / "c").mkdir()
    plain = load_recipe(_recipe(tmp_path / "c", manifest, tmp_path), check=False)
    launcher_settings(plain)
    assert (plain.train.mixed_precision, plain.train.grad_accum) == ("no", 1)  # no launcher: the old defaults


def test_report_to_trackers(tmp_path: Path) -> None:
    manifest = _windows(tmp_path / "data", n=4)
    r = load_recipe(_recipe(tmp_path, manifest, tmp_path, tensorboard=True, report_to=["tensorboard", "mlflow"]),
                    check=False)
    assert r.train.trackers() == ["tensorboard", "mlflow"]
    r.train.tensorboard = False  # the older switch still turns tensorboard off
    assert r.train.trackers() == ["mlflow"]
    with pytest.raises(ConfigError, match=r"report_to.*nosuchtracker.*wandb"):
        load_recipe(_recipe(tmp_path, manifest, tmp_path, report_to="nosuchtracker"), check=False)
