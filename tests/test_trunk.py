"""The frozen universal trunk with trainable modality tokenizers (Meta-Transformer): loading a pretrained trunk from a
folder (a tiny random BertModel this test saves, and the real MiniLM when present), what trains, what is saved, and
exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from anyalign.adapter import ModalityAdapter
from anyalign.align import load_recipe, train
from anyalign.align.build import build_model
from anyalign.align.checkpoint import list_checkpoints
from anyalign.encoders import create_encoder
from anyalign.encoders.base import InputError

CLASSES = ["walking", "running", "standing", "jumping"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised BertModel of the real architecture, saved as a pretrained folder."""
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=64, vocab_size=30)
    path = tmp_path_factory.mktemp("bert")
    BertModel(cfg).save_pretrained(path)
    return path


def test_trunk_loads_saved_checkpoint_and_tokenizes(tiny_bert: Path) -> None:
    enc = create_encoder("trunk", str(tiny_bert), channels=6, patch=8, frozen=False)
    saved = load_file(tiny_bert / "model.safetensors")
    trunk = enc.trunk.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in saved.items() if k in trunk)  # the checkpoint's weights
    assert not any(p.requires_grad for p in enc.trunk.parameters())
    assert all(p.requires_grad for p in enc.tokenizer.parameters())
    out = enc([np.random.randn(6, 50).astype(np.float32), np.random.randn(30, 6).astype(np.float32)])
    assert out.tokens.shape == (2, 7, 32) and out.mask.sum(1).tolist() == [7, 4] and out.pooled.shape == (2, 32)
    assert set(enc.trained_state_dict()) == {"tokenizer.proj.weight", "tokenizer.proj.bias"}
    enc.train()
    assert not enc.trunk.training and enc.tokenizer.training

    img = create_encoder("trunk", str(tiny_bert), tokenizer="patch2d", channels=1, patch=4, layers=1)
    assert len(img.trunk.encoder.layer) == 1
    out = img([np.random.randn(16, 12).astype(np.float32), np.random.randn(16, 8).astype(np.float32)])
    assert out.tokens.shape == (2, 12, 32) and out.mask.sum(1).tolist() == [12, 8]
    with pytest.raises(InputError, match="expected \\[C, T\\] or \\[T, C\\] with 6 channels"):
        enc([np.zeros((5, 40), np.float32)])
    with pytest.raises(ValueError, match="pretrained= must name a local transformer folder"):
        create_encoder("trunk")


def test_trunk_on_real_minilm(minilm_dir: Path) -> None:
    enc = create_encoder("trunk", str(minilm_dir), channels=6, patch=10)
    out = enc([np.random.randn(6, 100).astype(np.float32)])
    assert out.tokens.shape == (1, 10, 384) and torch.isfinite(out.pooled).all()
    assert len(enc.trunk.encoder.layer) == 6 and not any(p.requires_grad for p in enc.parameters())


def _recipe(tmp_path: Path, trunk: Path, minilm: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.linspace(0, 4 * np.pi, 40, dtype=np.float32)
    lines = []
    for i in range(16):
        c = i % 4
        np.save(root / f"w{i:02d}.npy", (np.stack([np.sin(t * (c + 1) + k) for k in range(6)])
                                         + rng.normal(0, 0.1, (6, 40))).astype(np.float32))
        lines.append(json.dumps({"imu": f"w{i:02d}.npy", "label": CLASSES[c], "caption": f"a person {CLASSES[c]}"}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    recipe = {
        "name": "trunk",
        "adapters": {"imu": {"encoder": {"name": "trunk", "pretrained": str(trunk), "options": {"patch": 8}},
                             "train_encoder": True, "embed_projector": {"name": "mlp", "hidden_dim": 32}}},
        "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm)}}},
        "data": {"train": [{"kind": "jsonl", "path": str(root / "data.jsonl")}]},
        "train": {"batch_size": 8, "max_steps": 6, "lr": 1e-2, "save_every": 3, "log_every": 3, "tensorboard": False},
        "eval": {"at_start": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


class _StopAt:
    def on_step_end(self, trainer: object, step: int, logs: dict[str, float]) -> None:
        if step == 4:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_trunk_trains_only_the_tokenizer_and_resumes_exactly(tmp_path: Path, tiny_bert: Path,
                                                             minilm_dir: Path) -> None:
    recipe = _recipe(tmp_path, tiny_bert, minilm_dir)
    before = create_encoder("trunk", str(tiny_bert), patch=8)
    init = build_model(load_recipe(recipe)).adapters["imu"].encoder.tokenizer.proj.weight.detach().clone()
    full = train(load_recipe(recipe), output_dir=tmp_path / "full")
    saved = load_file(full.output_dir / "adapters/imu/anyalign_adapter.safetensors")
    enc_keys = {k for k in saved if k.startswith("encoder.")}
    assert enc_keys == {"encoder.tokenizer.proj.weight", "encoder.tokenizer.proj.bias"}  # the trunk is not saved
    assert not torch.equal(saved["encoder.tokenizer.proj.weight"], init)  # the tokenizer trained

    loaded = ModalityAdapter.from_pretrained(full.output_dir / "adapters/imu")
    trunk_now, trunk_then = loaded.encoder.trunk.state_dict(), before.trunk.state_dict()
    assert all(torch.equal(trunk_now[k], trunk_then[k]) for k in trunk_then)  # rebuilt from `pretrained`, unchanged
    ckpt = load_file(list_checkpoints(full.output_dir)[-1] / "model.safetensors")
    trunk_ckpt = {k.split(".encoder.trunk.", 1)[1]: v for k, v in ckpt.items() if ".encoder.trunk." in k}
    assert trunk_ckpt and all(torch.equal(v, trunk_then[k]) for k, v in trunk_ckpt.items())  # unchanged in training

    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(recipe), output_dir=tmp_path / "cut", callbacks=[_StopAt()])
    resumed = train(load_recipe(recipe), output_dir=tmp_path / "cut", resume=True)
    again = load_file(resumed.output_dir / "adapters/imu/anyalign_adapter.safetensors")
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
