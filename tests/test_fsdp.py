"""Multi-process joint stage (LoRA on a tiny Llama) on CPU/gloo: DDP, and FSDP2 (torch `fully_shard`).

accelerate 1.15 enables its FSDP plugin only for GPU-type runs (on CPU `--use_fsdp` used to become DDP silently),
so the trainer shards the model itself (align/fsdp.py): these tests check that an FSDP run really is sharded
(DTensor LoRA weights, recorded in eval.json), trains like DDP, writes DDP's checkpoint files and resumes."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

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


def _with(recipe: Path, name: str, **train: object) -> Path:
    data = yaml.safe_load(recipe.read_text())
    data["train"].update(train)
    out = recipe.with_name(name)
    out.write_text(yaml.safe_dump(data))
    return out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    """Every saved weight of a run: the adapters and the bundle's LoRA (peft's file)."""
    out = {f"adapter.{k}": v for k, v in load_file(run / "adapters" / "imu" / "anyalign_adapter.safetensors").items()}
    out |= {f"lora.{k}": v for k, v in load_file(run / "mllm" / "lora" / "adapter_model.safetensors").items()}
    return out


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, worst
    return worst


FSDP = ["--fsdp_version", "2"]  # with launcher="--use_fsdp": accelerate sets ACCELERATE_USE_FSDP=true


@pytest.fixture(scope="module")
def fsdp_and_ddp(tmp_path_factory: pytest.TempPathFactory, tiny_llm_dir: Path,  # noqa: F811
                 minilm_dir: Path) -> tuple[Path, Path, Path]:
    """The joint stage (LoRA, gradient accumulation, clipping, a checkpoint at step 2) under DDP and FSDP2."""
    if not (Path(sys.executable).parent / "accelerate").is_file():
        pytest.skip("the accelerate CLI is not installed in this environment")
    root = tmp_path_factory.mktemp("fsdp")
    recipe = _with(joint_recipe(root, tiny_llm_dir, minilm_dir), "r.yaml", grad_accum=2, clip_grad=0.5,
                   save_every=2)
    ddp = accelerate_launch(["train", str(recipe), "--output", str(root / "ddp")])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    fsdp = accelerate_launch(["train", str(recipe), "--output", str(root / "fsdp")], launcher="--use_fsdp",
                             extra=FSDP)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    return recipe, root / "ddp", root / "fsdp"


def test_fsdp2_joint_stage_on_cpu_matches_ddp(fsdp_and_ddp: tuple[Path, Path, Path]) -> None:
    """`accelerate launch --use_fsdp` on CPU shards with FSDP2 over gloo (the LoRA'd decoder layers and the
    adapters; parameters are DTensors) and trains like DDP; its checkpoint has DDP's files, keys and layout."""
    _, ddp, fsdp = fsdp_and_ddp
    record = json.loads((fsdp / "eval.json").read_text())
    assert record["distributed"] == "fsdp2" and record["world_size"] == 2
    assert record["fsdp"]["units"] == 3  # 2 decoder layers + the root
    assert record["fsdp"]["sharded_lora"] == 8  # 2 layers x (q, v) x (A, B), all DTensors
    assert json.loads((ddp / "eval.json").read_text())["distributed"] == "ddp"
    assert _losses(fsdp) == pytest.approx(_losses(ddp), rel=1e-5)
    _close(_weights(fsdp), _weights(ddp), atol=1e-3)  # lr 1e-2 Adam on tiny gradients: rounding shows ~3e-4

    a, b = (run / "checkpoints" / "step-000002" for run in (ddp, fsdp))
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    _close(load_file(a / "model.safetensors"), load_file(b / "model.safetensors"), atol=1e-3)
    oa, ob = (torch.load(d / "optimizer.bin", weights_only=True) for d in (a, b))
    impl = ("foreach", "fused")  # DDP uses the fused AdamW kernel; sharded parameters the loop one
    assert [{k: v for k, v in g.items() if k not in impl} for g in oa["param_groups"]] == \
        [{k: v for k, v in g.items() if k not in impl} for g in ob["param_groups"]]
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ob["state"][i][k], oa["state"][i][k], rtol=1e-3, atol=1e-6)


def _resume_from(ckpt: Path, run: Path, out: Path, recipe: Path, fsdp: bool = True) -> None:
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpt, out / "checkpoints" / ckpt.name)
    shutil.copy(run / "metrics.jsonl", out / "metrics.jsonl")
    proc = accelerate_launch(["train", str(recipe), "--output", str(out), "--resume"],
                             **({"launcher": "--use_fsdp", "extra": FSDP} if fsdp else {}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2/4" in proc.stderr  # the progress bar started at the checkpoint's step


@pytest.mark.slow
def test_fsdp2_resumes_like_ddp(fsdp_and_ddp: tuple[Path, Path, Path]) -> None:
    """Resumed from the step-2 checkpoint (mid-epoch 1 with accumulation 2: the resumed loader skips a batch), a
    DDP run, an FSDP run, and an FSDP run from the DDP run's checkpoint all continue exactly as the uninterrupted
    DDP run (before the sampler's epoch was set directly, 2-process resumes read epoch 0's order: 13.24 at step 3
    against 14.25)."""
    recipe, ddp, fsdp = fsdp_and_ddp
    root = fsdp.parent
    _resume_from(ddp / "checkpoints" / "step-000002", ddp, root / "ddp-resumed", recipe, fsdp=False)
    _resume_from(fsdp / "checkpoints" / "step-000002", fsdp, root / "fsdp-resumed", recipe)
    _resume_from(ddp / "checkpoints" / "step-000002", ddp, root / "from-ddp", recipe)
    reference = _losses(ddp)
    assert len(reference) == 4
    assert _losses(root / "ddp-resumed") == pytest.approx(reference, rel=1e-5)  # DDP resume is exact
    _close(_weights(root / "ddp-resumed"), _weights(ddp), atol=1e-5)
    for run in ("fsdp-resumed", "from-ddp"):
        assert _losses(root / run) == pytest.approx(reference, rel=1e-5)
        _close(_weights(root / run), _weights(ddp), atol=1e-3)  # FSDP vs DDP rounding (see above)


def test_fsdp_refuses_evaluation(tmp_path: Path, tiny_llm_dir: Path, minilm_dir: Path) -> None:  # noqa: F811
    """Evaluation runs on the main process alone, which sharded units cannot: refused in one line."""
    if not (Path(sys.executable).parent / "accelerate").is_file():
        pytest.skip("the accelerate CLI is not installed in this environment")
    recipe = joint_recipe(tmp_path, tiny_llm_dir, minilm_dir)
    data = yaml.safe_load(recipe.read_text())
    data["data"]["eval"] = [dict(data["data"]["train"][0], limit=6)]
    data["train"]["fsdp"] = True
    recipe.write_text(yaml.safe_dump(data))
    proc = accelerate_launch(["train", str(recipe), "--output", str(tmp_path / "fsdp")])
    assert proc.returncode != 0
    assert "FSDP runs do not evaluate during training" in proc.stderr
    assert not (tmp_path / "fsdp" / "metrics.jsonl").exists()


def _stage_recipe(tmp_path: Path, llm: Path, minilm: Path, stage: str) -> Path:
    """The contrastive stage (adapter -> text space, no LLM) or the caption stage (adapter -> frozen LLM, no
    LoRA), from the joint recipe's data and sizes."""
    data = yaml.safe_load(joint_recipe(tmp_path, llm, minilm).read_text())
    captions = data["data"]["train"][0]
    if stage == "contrastive":
        del data["model"]
        data["adapters"]["imu"].pop("llm_projector")
        data["data"]["train"] = [{"kind": "jsonl", "path": captions["path"]}]
    else:  # as configs/imu_llm_caption.yaml: the LLM projector only (an unused embed projector breaks DDP)
        del data["model"]["lora"]
        data["adapters"]["imu"].pop("embed_projector")
        data["data"]["train"] = [captions]
    data["train"].update(grad_accum=2, clip_grad=0.5)
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("stage, units", [("contrastive", 1), ("caption", 3)])
def test_fsdp2_contrastive_and_caption_stages_match_ddp(tmp_path: Path, tiny_llm_dir: Path,  # noqa: F811
                                                        minilm_dir: Path, stage: str, units: int) -> None:
    """FSDP2 for every stage, not only the joint one: the contrastive stage (the adapters' root unit alone) and
    the caption stage (frozen LLM layers + root, no LoRA) really shard (DTensor parameters recorded in eval.json),
    train like DDP and save the same adapter weights."""
    if not (Path(sys.executable).parent / "accelerate").is_file():
        pytest.skip("the accelerate CLI is not installed in this environment")
    recipe = _stage_recipe(tmp_path, tiny_llm_dir, minilm_dir, stage)
    ddp = accelerate_launch(["train", str(recipe), "--output", str(tmp_path / "ddp")])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    fsdp = accelerate_launch(["train", str(recipe), "--output", str(tmp_path / "fsdp")], launcher="--use_fsdp",
                             extra=FSDP)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    record = json.loads((tmp_path / "fsdp" / "eval.json").read_text())
    assert record["distributed"] == "fsdp2" and record["world_size"] == 2, record
    assert record["fsdp"]["units"] == units and record["fsdp"]["sharded_trainable"] > 0, record["fsdp"]
    assert record["fsdp"]["sharded_lora"] == 0
    assert _losses(tmp_path / "fsdp") == pytest.approx(_losses(tmp_path / "ddp"), rel=1e-5)
    name = "anyalign_adapter.safetensors"
    _close(load_file(tmp_path / "fsdp" / "adapters" / "imu" / name),
           load_file(tmp_path / "ddp" / "adapters" / "imu" / name), atol=1e-3)
