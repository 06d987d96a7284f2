"""A training run never replaces what anyalign did not write: a user's `adapters/` or `mllm/` in the run folder is
refused before anything is built (a finished run would otherwise replace it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from anyalign.align import TrainingError, load_recipe, train
from anyalign.align.launch import check_run_folder
from tests.test_stream import _recipe, feature_folder


def test_foreign_files_in_adapters_or_mllm_are_refused(tmp_path: Path) -> None:
    check_run_folder(tmp_path / "new")  # absent: fine
    (tmp_path / "ours" / "adapters" / "imu").mkdir(parents=True)
    (tmp_path / "ours" / "adapters" / "imu" / "anyalign_adapter.json").write_text("{}")
    (tmp_path / "ours" / "adapters" / "_shared").mkdir()
    (tmp_path / "ours" / "notes.txt").write_text("the user's own file beside the run is never touched")
    check_run_folder(tmp_path / "ours")
    (tmp_path / "user" / "adapters").mkdir(parents=True)
    (tmp_path / "user" / "adapters" / "thesis.tex").write_text("precious")
    with pytest.raises(TrainingError, match="thesis.tex that anyalign did not write"):
        check_run_folder(tmp_path / "user")
    (tmp_path / "llm" / "mllm").mkdir(parents=True)
    (tmp_path / "llm" / "mllm" / "weights.bin").write_text("x")
    with pytest.raises(TrainingError, match="not an LLM bundle written by anyalign"):
        check_run_folder(tmp_path / "llm")


def test_train_keeps_a_users_adapters_folder(tmp_path: Path, minilm_dir: Path) -> None:
    folder = feature_folder(tmp_path / "f", shards=1, per_shard=8)
    recipe = _recipe(tmp_path, folder, minilm_dir, max_steps=1, save_every=1, keep_checkpoints=1, grad_accum=1,
                     stream_lanes=1)
    out = tmp_path / "run"
    (out / "adapters").mkdir(parents=True)
    (out / "adapters" / "thesis.tex").write_text("precious")
    with pytest.raises(TrainingError, match="did not write"):
        train(load_recipe(recipe), output_dir=out)
    assert (out / "adapters" / "thesis.tex").read_text() == "precious"
