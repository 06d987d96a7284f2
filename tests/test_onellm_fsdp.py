"""A shared universal projector under FSDP2 (2 CPU processes, gloo, `accelerate launch --use_fsdp`): the experts
are one sharded set of weights, written once in the checkpoint and in the saved adapters folder, and a run resumed
from its checkpoint continues exactly as the uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_fsdp import FSDP, _resume_from
from tests.test_launch import _losses, accelerate_launch
from tests.test_onellm_ddp import _saved, checkpointed_recipe


@pytest.mark.slow
def test_shared_projector_fsdp_resumes_exactly(tmp_path: Path, minilm_dir: Path) -> None:
    recipe = checkpointed_recipe(tmp_path, minilm_dir)

    full = accelerate_launch(["train", str(recipe), "--output", str(tmp_path / "fsdp")], launcher="--use_fsdp",
                             extra=FSDP)
    assert full.returncode == 0, full.stderr[-3000:]
    record = json.loads((tmp_path / "fsdp/eval.json").read_text())
    assert record["distributed"] == "fsdp2" and record["world_size"] == 2
    assert record["fsdp"]["units"] == 1 and record["fsdp"]["sharded_trainable"] > 0
    ckpt = tmp_path / "fsdp/checkpoints/step-000002"
    state = load_file(ckpt / "model.safetensors")
    experts = [k for k in state if ".embed_head.experts." in k]  # the shared experts once in the checkpoint
    assert experts and len({k.split(".embed_head.")[1] for k in experts}) == len(experts)
    saved = _saved(tmp_path / "fsdp")  # and once in the adapters folder: the adapters' own files hold none
    assert any(k.startswith("upm.experts.") for k in saved)
    assert not any(k.startswith(("imu.embed_head.", "acc.embed_head.")) for k in saved)

    _resume_from(ckpt, tmp_path / "fsdp", tmp_path / "resumed", recipe)
    reference = _losses(tmp_path / "fsdp")
    assert len(reference) == 4
    assert _losses(tmp_path / "resumed") == pytest.approx(reference, rel=1e-6)
    a, b = _saved(tmp_path / "fsdp"), _saved(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)

    # a DDP run's checkpoint (accelerate keeps a shared tensor under its first name) holds the same keys, and an
    # FSDP run resumes from it (before: FSDP wrote the experts under every adapter's name, 48 keys for 24 tensors)
    ddp = accelerate_launch(["train", str(recipe), "--output", str(tmp_path / "ddp")])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    ddp_ckpt = tmp_path / "ddp/checkpoints/step-000002"
    assert load_file(ddp_ckpt / "model.safetensors").keys() == state.keys()
    assert _losses(tmp_path / "ddp") == pytest.approx(reference, rel=1e-5)
    _resume_from(ddp_ckpt, tmp_path / "ddp", tmp_path / "from-ddp", recipe)
    assert _losses(tmp_path / "from-ddp") == pytest.approx(reference, rel=1e-5)
    c = _saved(tmp_path / "from-ddp")
    for k in a:
        torch.testing.assert_close(c[k], a[k], rtol=0, atol=1e-4, msg=k)
