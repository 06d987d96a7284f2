"""A shared universal projector under DDP (2 CPU processes, gloo, `accelerate launch`): an interrupted run resumed
from its checkpoint continues exactly as the uninterrupted one, and the shared experts are still one copy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.test_fsdp import _resume_from
from tests.test_launch import _losses, accelerate_launch
from tests.test_onellm import _recipe


def _saved(run: Path) -> dict[str, torch.Tensor]:
    """Every saved weight: the shared projector's file and each adapter's own file."""
    out = {f"upm.{k}": v for k, v in load_file(run / "adapters/_shared/upm/anyalign_projector.safetensors").items()}
    for m in ("imu", "acc"):
        out |= {f"{m}.{k}": v for k, v in load_file(run / f"adapters/{m}/anyalign_adapter.safetensors").items()}
    return out


def checkpointed_recipe(tmp_path: Path, minilm_dir: Path) -> Path:
    """The shared-projector recipe at 4 steps, checkpointed every 2 (skips without the accelerate CLI)."""
    if not (Path(sys.executable).parent / "accelerate").is_file():
        pytest.skip("the accelerate CLI is not installed in this environment")
    recipe = _recipe(tmp_path, minilm_dir, max_steps=4)
    data = yaml.safe_load(recipe.read_text())
    data["train"].update(save_every=2, log_every=1)
    recipe.write_text(yaml.safe_dump(data))
    return recipe


@pytest.mark.slow
def test_shared_projector_ddp_resumes_exactly(tmp_path: Path, minilm_dir: Path) -> None:
    recipe = checkpointed_recipe(tmp_path, minilm_dir)

    full = accelerate_launch(["train", str(recipe), "--output", str(tmp_path / "ddp")])
    assert full.returncode == 0, full.stderr[-3000:]
    record = json.loads((tmp_path / "ddp/eval.json").read_text())
    assert record["distributed"] == "ddp" and record["world_size"] == 2
    ckpt = tmp_path / "ddp/checkpoints/step-000002"
    state = load_file(ckpt / "model.safetensors")
    experts = [k for k in state if ".embed_head.experts." in k]  # the shared experts once in the checkpoint
    assert experts and len({k.split(".embed_head.")[1] for k in experts}) == len(experts)

    _resume_from(ckpt, tmp_path / "ddp", tmp_path / "resumed", recipe, fsdp=False)
    reference = _losses(tmp_path / "ddp")
    assert len(reference) == 4
    assert _losses(tmp_path / "resumed") == pytest.approx(reference, rel=1e-6)
    a, b = _saved(tmp_path / "ddp"), _saved(tmp_path / "resumed")
    assert a.keys() == b.keys() and any(k.startswith("upm.experts.") for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
