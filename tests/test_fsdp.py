"""Multi-process joint stage (LoRA on a tiny Llama) on CPU/gloo, and FSDP on CPU.

FSDP on CPU does not run through accelerate 1.15: its state sets `DistributedType.FSDP` only for GPU-type runs, so
`accelerate launch --use_fsdp` on a CPU machine became plain DDP (MULTI_CPU) without a word; the trainer now refuses
it. torch's own FSDP2 (`fully_shard`) does work over gloo on CPU; wiring it in directly needs the LoRA weights (held
by the frozen LLM's modules, registered in `AlignmentModel.lora`) sharded where they are used and full state dicts
gathered before saving: not done."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_align_joint import _data, tiny_llm_dir  # noqa: F401 - the tiny Llama fixture
from tests.test_launch import accelerate_launch


def joint_recipe(tmp_path: Path, llm: Path, minilm: Path) -> Path:
    captions, instruct = _data(tmp_path / "data")
    imu = {"encoder": {"name": "imu", "options": {"dim": 16, "depth": 1, "heads": 2, "dropout": 0.0}}}
    recipe = {
        "model": {"llm": str(llm), "lora": {"r": 4, "alpha": 8, "dropout": 0.0,
                                            "target_modules": ["q_proj", "v_proj"]}},
        "adapters": {"imu": {**imu, "train_encoder": True, "embed_projector": {"name": "mlp"},
                             "llm_projector": {"name": "mlp"}}},
        "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm)}}},
        "data": {"train": [{"kind": "jsonl", "path": str(captions), "task": "caption",
                            "prompts": ["<imu>\nwhat is the person doing?"]},
                           {"kind": "jsonl", "path": str(instruct), "task": "instruct"},
                           {"kind": "jsonl", "path": str(captions)}]},
        "train": {"batch_size": 12, "max_steps": 4, "lr": 1e-2, "log_every": 1, "save_every": 100,
                  "tensorboard": False},
        "eval": {"at_start": False},
    }
    path = tmp_path / "joint.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
def test_joint_stage_two_processes_equal_one(tmp_path: Path, tiny_llm_dir: Path, minilm_dir: Path) -> None:  # noqa: F811
    """DDP over gloo for the joint stage (LoRA, caption + instruct + contrastive in one batch)."""
    from anyalign.align import load_recipe, train

    if not (Path(sys.executable).parent / "accelerate").is_file():
        pytest.skip("the accelerate CLI is not installed in this environment")
    recipe = joint_recipe(tmp_path, tiny_llm_dir, minilm_dir)
    one = train(load_recipe(recipe), output_dir=tmp_path / "one")
    ddp = accelerate_launch(["train", str(recipe), "--output", str(tmp_path / "ddp")])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(one.output_dir), rel=1e-4)


def test_fsdp_on_cpu_is_refused_not_silently_ddp(tmp_path: Path, tiny_llm_dir: Path,  # noqa: F811
                                                 minilm_dir: Path) -> None:
    """accelerate 1.x enables its FSDP plugin only for GPU-type runs (MULTI_GPU/XPU/NPU/...), never MULTI_CPU:
    `--use_fsdp` on a CPU machine used to train with DDP while the user believed it was sharded."""
    if not (Path(sys.executable).parent / "accelerate").is_file():
        pytest.skip("the accelerate CLI is not installed in this environment")
    recipe = joint_recipe(tmp_path, tiny_llm_dir, minilm_dir)
    fsdp = accelerate_launch(["train", str(recipe), "--output", str(tmp_path / "fsdp")], launcher="--use_fsdp",
                             extra=["--fsdp_version", "2"])
    assert fsdp.returncode != 0
    assert "FSDP was requested" in fsdp.stderr and "would silently run DDP" in fsdp.stderr
    assert not (tmp_path / "fsdp" / "metrics.jsonl").exists()
