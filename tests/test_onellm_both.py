"""One run, both products: a shared-space head and an LLM projector of one modality trained together (contrastive
and caption rows in the same batches, losses weighted by `train.loss_weights`); the run's adapter serves both.

The real `imu` encoder (trained from scratch), the real MiniLM text space and a tiny randomly initialised Llama."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from anyalign.adapter import ModalityAdapter
from anyalign.align import load_recipe
from anyalign.align.trainer import Trainer
from anyalign.llm import MultimodalLM
from tests.test_align_joint import _data, tiny_llm_dir  # noqa: F401 - the tiny Llama fixture

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {"imu-text": 1.0, "caption": 0.25}


def _recipe(tmp_path: Path, llm: Path, minilm: Path) -> Path:
    captions, _ = _data(tmp_path / "data")
    recipe = {
        "model": {"llm": str(llm)},
        "adapters": {"imu": {"encoder": {"name": "imu", "options": {"dim": 16, "depth": 1, "heads": 2,
                                                                     "dropout": 0.0}},
                             "train_encoder": True, "embed_projector": {"name": "mlp"},
                             "llm_projector": {"name": "mlp"}}},
        "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm)}}},
        "data": {"train": [{"kind": "jsonl", "path": str(captions)},
                           {"kind": "jsonl", "path": str(captions), "task": "caption",
                            "prompts": ["<imu>\nwhat is the person doing?"]}],
                 "eval": [{"kind": "jsonl", "path": str(captions)},
                          {"kind": "jsonl", "path": str(captions), "task": "caption",
                           "prompts": ["<imu>\nwhat is the person doing?"]}]},
        "train": {"batch_size": 12, "max_steps": 3, "lr": 1e-2, "log_every": 1, "save_every": 100,
                  "tensorboard": False, "loss_weights": WEIGHTS},
        "eval": {"at_start": False},
    }
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_one_run_yields_shared_space_and_llm_adapters(tmp_path: Path, tiny_llm_dir: Path,  # noqa: F811
                                                      minilm_dir: Path) -> None:
    trainer = Trainer(load_recipe(_recipe(tmp_path, tiny_llm_dir, minilm_dir)), output_dir=tmp_path / "run")
    model = trainer.unwrapped
    encoder0 = {k: v.clone() for k, v in model.adapters["imu"].encoder.state_dict().items()}
    result = trainer.fit()

    logs = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss" in r]
    assert len(steps) == 3
    for r in steps:  # both tasks in every batch, added with the recipe's weights
        assert r["loss"] == pytest.approx(WEIGHTS["imu-text"] * r["loss/imu-text"]
                                          + WEIGHTS["caption"] * r["loss/caption"], rel=1e-5)
    assert {"eval/imu/zeroshot_acc", "eval/imu2/caption_loss"} <= set(result.metrics)

    saved = load_file(tmp_path / "run/adapters/imu/anyalign_adapter.safetensors")
    assert any(k.startswith("embed_head.") for k in saved) and any(k.startswith("llm_head.") for k in saved)
    assert any(not torch.equal(saved[f"encoder.{k}"], v) for k, v in encoder0.items())  # trained by both losses

    x = [np.load(tmp_path / "data" / f"w{i}.npy") for i in range(4)]
    model.eval()
    with torch.no_grad():
        feats = model.adapters["imu"].encode(x)
        trained_emb = model.adapters["imu"].embed(feats)
        trained_tok = model.adapters["imu"].soft_tokens(feats).tokens
    loaded = ModalityAdapter.from_pretrained(tmp_path / "run/adapters/imu")  # product 1: the shared space
    assert torch.equal(loaded.embed_inputs(x), trained_emb)
    mm = MultimodalLM.from_pretrained(tmp_path / "run/mllm")  # product 2: the LLM bundle, same adapter
    with torch.no_grad():
        adapter = mm.adapters["imu"]
        assert torch.equal(adapter.soft_tokens(adapter.encode(x)).tokens, trained_tok)


def test_shipped_both_products_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/imu_text_and_llm.yaml: one IMU adapter with both heads, both tasks on the same data, weighted."""
    monkeypatch.setenv("ANYALIGN_ASSETS", "/assets")
    recipe = load_recipe(ROOT / "configs/imu_text_and_llm.yaml", check=False)
    imu = recipe.adapters["imu"]
    assert imu.embed_projector is not None and imu.llm_projector is not None and imu.train_encoder
    assert [s.task for s in recipe.data.train] == ["contrastive", "caption"]
    assert [s.task for s in recipe.data.eval] == ["contrastive", "caption"]
    assert {s.path for s in recipe.data.train} == {"/assets/imu/BasicMotions"}
    assert recipe.train.loss_weights == {"imu-text": 1.0, "caption": 0.5}
