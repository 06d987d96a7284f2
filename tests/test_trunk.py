"""The frozen universal trunk with trainable modality tokenizers (Meta-Transformer): loading a pretrained trunk from a
folder (a tiny random BertModel and a tiny random WhisperEncoder this test saves, the real MiniLM and Whisper tiny.en
when present), what trains, what is saved, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

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


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised WhisperEncoder of the real architecture (1500 positions), saved alone."""
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    path = tmp_path_factory.mktemp("whisper")
    WhisperEncoder(cfg).save_pretrained(path)
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
    with pytest.raises(InputError, match="expected a 2-D array with 6 channels"):
        enc([np.zeros((5, 40), np.float32)])
    with pytest.raises(ValueError, match="pretrained= must name a local transformer folder"):
        create_encoder("trunk")


def test_whisper_trunk_replaces_the_mel_front_end(tiny_whisper: Path) -> None:
    """A Whisper trunk: its layers, positions and final norm come from the checkpoint, its convolutions (the mel
    front end the tokenizer replaces) are dropped; padded tokens are masked out of attention, so a window gives the
    same tokens alone or padded in a batch."""
    enc = create_encoder("trunk", str(tiny_whisper), channels=6, patch=8, frozen=False)
    saved = load_file(tiny_whisper / "model.safetensors")
    trunk = enc.trunk.state_dict()
    assert set(saved) - set(trunk) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"}
    assert all(torch.equal(trunk[k], saved[k]) for k in trunk)
    assert not any(p.requires_grad for p in enc.trunk.parameters()) and enc.max_tokens == 1500
    assert set(enc.trained_state_dict()) == {"tokenizer.proj.weight", "tokenizer.proj.bias"}
    enc.eval()
    short, long = np.random.randn(6, 30).astype(np.float32), np.random.randn(6, 64).astype(np.float32)
    with torch.no_grad():
        alone, batch = enc([short]), enc([short, long])
    assert batch.tokens.shape == (2, 8, 32) and batch.mask.sum(1).tolist() == [4, 8]
    torch.testing.assert_close(batch.tokens[0, :4], alone.tokens[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batch.pooled[0], alone.pooled[0], rtol=0, atol=1e-5)
    assert not torch.allclose(batch.pooled[0], batch.pooled[1], atol=1e-3)
    assert len(create_encoder("trunk", str(tiny_whisper), layers=1).trunk.layers) == 1


def test_trunk_on_real_whisper(assets: Path) -> None:
    """Whisper tiny.en's encoder (a WhisperForConditionalGeneration checkpoint) as the trunk."""
    path = assets / "audio-models" / "whisper-tiny.en"
    if not path.is_dir():
        pytest.skip(f"{path} missing: run `python -m anyalign.assets whisper-tiny.en`")
    enc = create_encoder("trunk", str(path), channels=12, patch=5)
    saved = load_file(path / "model.safetensors")
    layer0 = enc.trunk.layers[0].fc1.weight
    assert torch.equal(layer0, saved["model.encoder.layers.0.fc1.weight"].float())
    out = enc([np.random.randn(12, 25).astype(np.float32)])
    assert out.tokens.shape == (1, 5, 384) and torch.isfinite(out.pooled).all()
    assert len(enc.trunk.layers) == 4 and not any(p.requires_grad for p in enc.parameters())


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
@pytest.mark.parametrize("trunk", ["tiny_bert", "tiny_whisper"])
def test_trunk_trains_only_the_tokenizer_and_resumes_exactly(tmp_path: Path, trunk: str, minilm_dir: Path,
                                                             request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(trunk)
    recipe = _recipe(tmp_path, folder, minilm_dir)
    before = create_encoder("trunk", str(folder), patch=8)
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
