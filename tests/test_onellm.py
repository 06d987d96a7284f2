"""OneLLM's recipe: one universal projection shared by several adapters (saved once, loaded by each), and
progressive stages that add modalities to it.

Two modalities of the real `imu` encoder (6-channel and 3-channel windows, trained from scratch) bound to the real
MiniLM text space through one shared `universal` projector.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from anyalign.adapter import ModalityAdapter
from anyalign.align import load_recipe, train
from anyalign.align.build import build_model
from anyalign.align.checkpoint import list_checkpoints
from anyalign.align.progressive import plan_stages, replay_repeats, train_progressive
from anyalign.align.trainer import Trainer
from anyalign.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["walking", "running", "standing", "jumping"]
UPM = {"name": "universal", "num_experts": 2, "num_modality_tokens": 4, "dim": 32, "heads": 2}


def _windows(root: Path, modality: str, channels: int, n: int = 16) -> Path:
    """Class-dependent `[channels, 32]` windows as .npy files and a jsonl manifest (field = modality)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(channels)
    t = np.linspace(0, 4 * np.pi, 32, dtype=np.float32)
    lines = []
    for i in range(n):
        c = i % len(CLASSES)
        x = np.stack([np.sin(t * (c + 1) + k) * (c + 0.5) for k in range(channels)])
        x = x + rng.normal(0, 0.1, (channels, 32))
        np.save(root / f"{modality}{i:03d}.npy", x.astype(np.float32))
        lines.append(json.dumps({modality: f"{modality}{i:03d}.npy", "label": CLASSES[c],
                                 "caption": f"a person {CLASSES[c]}"}))
    (root / f"{modality}.jsonl").write_text("\n".join(lines) + "\n")
    return root / f"{modality}.jsonl"


def _imu(channels: int, dim: int) -> dict:
    return {"encoder": {"name": "imu", "options": {"channels": channels, "dim": dim, "depth": 1, "heads": 2,
                                                   "dropout": 0.0}}, "train_encoder": True}


def _recipe(tmp_path: Path, minilm: Path, *, modalities: tuple[str, ...] = ("imu", "acc"),
            init_from: str | None = None, max_steps: int = 6, name: str = "recipe") -> Path:
    widths = {"imu": (6, 32), "acc": (3, 24)}
    upm = {**UPM, **({"init_from": init_from} if init_from else {})}
    recipe = {
        "name": "t",
        "projectors": {"upm": upm},
        "adapters": {m: {**_imu(*widths[m]), "embed_projector": "upm"} for m in modalities},
        "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm)}}},
        "data": {"train": [{"kind": "jsonl", "path": str(_windows(tmp_path / "data", m, widths[m][0]))}
                           for m in modalities]},
        "train": {"batch_size": 8, "max_steps": max_steps, "lr": 1e-3, "save_every": 3, "log_every": 3,
                  "tensorboard": False},
        "eval": {"at_start": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _inputs(tmp_path: Path, modality: str) -> list[np.ndarray]:
    return [np.load(p) for p in sorted((tmp_path / "data").glob(f"{modality}0*.npy"))]


class _StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        if step == self.step:
            raise KeyboardInterrupt  # an interrupted run: the checkpoint before it survives


def test_shared_projector_one_instance_saved_once(tmp_path: Path, minilm_dir: Path) -> None:
    """Fast check (no training): one instance, its parameters counted once, saved once, loaded by each adapter."""
    model = build_model(load_recipe(_recipe(tmp_path, minilm_dir)))
    head = model.adapters["imu"].embed_head
    assert head is model.adapters["acc"].embed_head and sorted(head.modalities) == ["acc", "imu"]
    names = [n for n, _ in model.trainable_parameters() if ".embed_head.experts." in n]
    assert names and len({n.split(".")[1] for n in names}) == 1  # the optimizer sees the experts once
    saved = model.save_adapters(tmp_path / "adapters")
    assert sorted(saved) == ["acc", "imu"] and (tmp_path / "adapters/_shared/upm/anyalign_projector.json").is_file()
    model.eval()
    for m in ("imu", "acc"):
        x = _inputs(tmp_path, m)
        with torch.no_grad():
            expected = model.adapters[m].embed(model.adapters[m].encode(x))
        assert torch.equal(ModalityAdapter.from_pretrained(saved[m]).embed_inputs(x), expected)


@pytest.mark.slow
def test_shared_projector_saved_once_and_loaded_by_every_adapter(tmp_path: Path, minilm_dir: Path) -> None:
    trainer = Trainer(load_recipe(_recipe(tmp_path, minilm_dir, max_steps=4)), output_dir=tmp_path / "run")
    model = trainer.unwrapped
    assert model.adapters["imu"].embed_head is model.adapters["acc"].embed_head  # one instance
    experts0 = {k: v.clone() for k, v in model.adapters["imu"].embed_head.experts.state_dict().items()}
    result = trainer.fit()
    run = result.output_dir
    shared = load_file(run / "adapters/_shared/upm/anyalign_projector.safetensors")
    assert any(k.startswith("experts.") for k in shared)
    assert {"inputs.imu.weight", "inputs.acc.weight", "modality_tokens.imu", "modality_tokens.acc"} <= set(shared)
    assert any(not torch.equal(shared[f"experts.{k}"], v) for k, v in experts0.items())  # the experts trained
    for m in ("imu", "acc"):  # the adapters' own files hold no copy of the shared head
        own = load_file(run / f"adapters/{m}/anyalign_adapter.safetensors")
        assert not any(k.startswith("embed_head.") for k in own) and any(k.startswith("encoder.") for k in own)
        ref = json.loads((run / f"adapters/{m}/anyalign_adapter.json").read_text())["shared"]["embed_projector"]
        assert ref["name"] == "upm" and ref["path"] == "../_shared/upm" and ref["format_version"] == 1
    ckpt = load_file(list_checkpoints(run)[-1] / "model.safetensors")  # the checkpoint holds the experts once
    expert_keys = [k for k in ckpt if ".embed_head.experts." in k]
    assert expert_keys and len({k.split(".embed_head.")[1] for k in expert_keys}) == len(expert_keys)

    model.eval()
    for m in ("imu", "acc"):
        x = _inputs(tmp_path, m)
        with torch.no_grad():
            trained = model.adapters[m].embed(model.adapters[m].encode(x))
        loaded = ModalityAdapter.from_pretrained(run / "adapters" / m)
        assert torch.equal(loaded.embed_inputs(x), trained)

    (run / "adapters/_shared/upm/anyalign_projector.safetensors").write_bytes(
        (run / "adapters/_shared/upm/anyalign_projector.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="rewritten after the adapter"):
        ModalityAdapter.from_pretrained(run / "adapters" / "imu")


@pytest.mark.slow
def test_shared_projector_resumes_exactly(tmp_path: Path, minilm_dir: Path) -> None:
    recipe = _recipe(tmp_path, minilm_dir)
    full = train(load_recipe(recipe), output_dir=tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(recipe), output_dir=tmp_path / "cut", callbacks=[_StopAt(4)])
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step-000003"]
    resumed = train(load_recipe(recipe), output_dir=tmp_path / "cut", resume=True)
    for rel in ("_shared/upm/anyalign_projector.safetensors", "imu/anyalign_adapter.safetensors",
                "acc/anyalign_adapter.safetensors"):
        a, b = load_file(full.output_dir / "adapters" / rel), load_file(resumed.output_dir / "adapters" / rel)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel


def test_shared_projector_recipe_errors(tmp_path: Path, minilm_dir: Path) -> None:
    path = _recipe(tmp_path, minilm_dir)
    with pytest.raises(ConfigError, match=r"adapters.imu.embed_projector: 'nope' is not declared under projectors"):
        load_recipe(path, ["adapters.imu.embed_projector=nope"])
    with pytest.raises(ConfigError, match=r"projectors.upm: modalities are filled in"):
        build_model(load_recipe(path, ["projectors.upm.modalities=[imu]"]))
    with pytest.raises(ConfigError, match=r"projectors.upm: no adapter uses it"):
        load_recipe(path, ["adapters.imu.embed_projector={name: mlp}", "adapters.acc.embed_projector={name: mlp}"])


# --- progressive alignment --------------------------------------------------------------------------------------
def _progressive(tmp_path: Path, minilm: Path, *, steps: int = 2) -> Path:
    path = _recipe(tmp_path, minilm, max_steps=steps, name="progressive")
    recipe = yaml.safe_load(path.read_text())
    for src in recipe["data"]["train"]:
        src["modality"] = Path(src["path"]).stem
    recipe["data"]["eval"] = [dict(s) for s in recipe["data"]["train"]]
    recipe["eval"] = {"at_start": False, "recall_k": [1]}
    recipe["progressive"] = {"replay": 0.5, "stages": [{"add": ["imu"]}, {"add": ["acc"]}]}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_replay_repeats() -> None:
    assert replay_repeats(40, 40, 0.25) == (1, 3, 0.25)
    assert replay_repeats(40, 40, 0.0) == (0, 1, 0.0)
    ke, kn, share = replay_repeats(16, 40, 0.5)
    assert abs(share - 0.5) < 0.02 and ke > kn


def test_progressive_stage_two_starts_from_stage_one_bit_exactly(tmp_path: Path, minilm_dir: Path) -> None:
    recipe = load_recipe(_progressive(tmp_path, minilm_dir))
    plans = plan_stages(recipe, tmp_path / "prog")
    assert [p.modalities for p in plans] == [["imu"], ["imu", "acc"]]
    assert plans[1].replay_share == pytest.approx(0.5)
    assert [s.modality for s in plans[1].recipe.data.train] == ["imu", "acc"]  # equal sizes: one copy each
    stage1 = build_model(plans[0].recipe)
    with torch.no_grad():  # stand-in for stage 1's training: weights that no fresh init reproduces
        for p in stage1.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    stage1.save_adapters(tmp_path / "prog/stage1/adapters")
    stage2 = build_model(plans[1].recipe)
    one, two = stage1.adapters["imu"].embed_head, stage2.adapters["imu"].embed_head
    assert two is stage2.adapters["acc"].embed_head and two.modalities == ["imu", "acc"]
    s1, s2 = one.state_dict(), two.state_dict()
    assert set(s1) < set(s2) and all(torch.equal(s1[k], s2[k]) for k in s1)  # experts, imu router/tokens: exact
    enc1, enc2 = stage1.adapters["imu"].encoder.state_dict(), stage2.adapters["imu"].encoder.state_dict()
    assert all(torch.equal(enc1[k], enc2[k]) for k in enc1)  # the imu encoder continues too
    stage1.eval(), stage2.eval()
    x = _inputs(tmp_path, "imu")
    with torch.no_grad():
        assert torch.equal(stage1.adapters["imu"].embed(stage1.adapters["imu"].encode(x)),
                           stage2.adapters["imu"].embed(stage2.adapters["imu"].encode(x)))


@pytest.mark.slow
def test_progressive_run_reports_every_modality_after_every_stage(tmp_path: Path, minilm_dir: Path) -> None:
    report = train_progressive(load_recipe(_progressive(tmp_path, minilm_dir)), output_dir=tmp_path / "prog")
    rows = report["stages"]
    assert [r["modalities"] for r in rows] == [["imu"], ["imu", "acc"]]
    assert "eval/imu/zeroshot_acc" in rows[0]["metrics"] and "eval/acc/zeroshot_acc" not in rows[0]["metrics"]
    assert {"eval/imu/zeroshot_acc", "eval/acc/zeroshot_acc"} <= set(rows[1]["metrics"])  # forgetting is visible
    assert json.loads((tmp_path / "prog/progressive.json").read_text())["stages"] == rows
    assert (tmp_path / "prog/stage2/adapters/_shared/upm/anyalign_projector.json").is_file()


# the joint recipe on real encoders (with speech, from cached features): tests/test_align_joint.py
@pytest.mark.parametrize("name", ["joint_instruct.yaml", "onellm_progressive.yaml"])
def test_shipped_onellm_recipes_parse(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYALIGN_ASSETS", "/assets")
    recipe = load_recipe(ROOT / "configs" / name, check=False)
    speech = [("speech", "llm_projector")] if name == "joint_instruct.yaml" else []
    assert recipe.shared_users("upm") == [("imu", "llm_projector"), *speech, ("audio", "llm_projector"),
                                          ("image", "llm_projector")]
    if recipe.progressive is not None:
        assert [s.add for s in recipe.progressive.stages] == [["imu"], ["audio"], ["image"]]
