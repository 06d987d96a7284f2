"""Damaged checkpoints (issue 12): `--resume` verifies the newest checkpoint against its manifest (sizes and sha256,
written last) and falls back to the newest intact one with a warning; never a silent non-exact resume."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anyalign.align import TrainingError, load_recipe, train
from anyalign.align.checkpoint import (
    MANIFEST_NAME,
    latest_good_checkpoint,
    list_checkpoints,
    verify_checkpoint,
)
from tests.test_stream import WEIGHTS, _recipe, feature_folder


class StopAt:
    """Ends a run early, like a preemption (the checkpoints written so far stay)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, step: int, logs: dict) -> None:  # noqa: ANN001
        if step == self.step:
            raise KeyboardInterrupt


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ckpt")
    folder = feature_folder(tmp / "f", shards=4, per_shard=16)
    recipe = _recipe(tmp, folder, minilm_dir, max_steps=8, save_every=2, keep_checkpoints=3, grad_accum=1,
                     stream_lanes=2)
    full = train(load_recipe(recipe), output_dir=tmp / "full")
    return recipe, full.output_dir


def _interrupted(recipe: Path, out: Path) -> list[Path]:
    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(recipe), output_dir=out, callbacks=[StopAt(7)])
    ckpts = list_checkpoints(out)
    assert [p.name for p in ckpts] == ["step-000002", "step-000004", "step-000006"]
    assert all(verify_checkpoint(p) is None for p in ckpts)
    return ckpts


@pytest.mark.parametrize("damage", ["truncate-rng", "flip-weights", "delete-optimizer"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(runs: tuple[Path, Path], tmp_path: Path, damage: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    recipe, full = runs
    out = tmp_path / "run"
    newest = _interrupted(recipe, out)[-1]
    if damage == "truncate-rng":
        _truncate(newest / "random_states_0.pkl")
    elif damage == "flip-weights":
        _flip(newest / "model.safetensors")
    else:
        (newest / "optimizer.bin").unlink()
    problem = verify_checkpoint(newest)
    assert problem is not None and {"truncate-rng": "truncated", "flip-weights": "sha256",
                                    "delete-optimizer": "missing"}[damage] in problem
    with caplog.at_level(logging.WARNING):
        train(load_recipe(recipe), output_dir=out, resume=True)
    text = caplog.text
    assert "step-000006 is damaged" in text and "resuming from" in text and "step-000004" in text
    assert (out / "checkpoints" / ".step-000006.damaged").is_dir()  # kept aside for inspection, not deleted
    a, b = load_file(full / WEIGHTS), load_file(out / WEIGHTS)  # resuming from step 4 is still exact
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_no_intact_checkpoint_is_an_error(runs: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, _ = runs
    out = tmp_path / "run"
    for ckpt in _interrupted(recipe, out):
        _truncate(ckpt / "random_states_0.pkl")
    with pytest.raises(TrainingError, match=r"no intact checkpoint .*random_states_0.pkl has \d+ bytes"):
        train(load_recipe(recipe), output_dir=out, resume=True)


def test_manifest_is_required_to_list_every_rng_state(runs: tuple[Path, Path], tmp_path: Path) -> None:
    recipe, _ = runs
    out = tmp_path / "run"
    newest = _interrupted(recipe, out)[-1]
    assert verify_checkpoint(newest, need=["random_states_1.pkl"]) == \
        "random_states_1.pkl is missing (not written by this checkpoint)"
    (newest / MANIFEST_NAME).write_text("{not json")
    good, bad = latest_good_checkpoint(out)
    assert good is not None and good.name == "step-000004" and bad[0][0] == newest and "unreadable" in bad[0][1]
