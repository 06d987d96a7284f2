"""ModalityAdapter: embedding/soft-token paths and the save_pretrained/from_pretrained round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from anyalign.adapter import CONFIG_NAME, AdapterConfig, ModalityAdapter, build_adapter
from anyalign.config import ConfigError, from_dict
from anyalign.encoders.custom import wrap_module


def _toy_encoder() -> nn.Module:
    enc = wrap_module(nn.Sequential(nn.Linear(6, 16), nn.GELU()), modality="imu", token_dim=16,
                      collate=lambda xs: torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in xs]))
    return enc.freeze()


def test_adapter_paths_and_roundtrip(tmp_path: Path) -> None:
    enc = _toy_encoder()
    adapter = build_adapter("imu", enc, embed_dim=8, embed_projector={"name": "mlp"}, llm_dim=12,
                            llm_projector={"name": "linear", "stride": 2})
    x = [torch.randn(10, 6) for _ in range(3)]
    feats = adapter.encode(x)
    emb = adapter.embed(feats)
    assert emb.shape == (3, 8) and torch.allclose(emb.norm(dim=-1), torch.ones(3))
    soft = adapter.soft_tokens(feats)
    assert soft.tokens.shape == (3, 5, 12) and soft.mask.all()

    adapter.save_pretrained(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert saved["modality"] == "imu" and saved["embed_projector"] == {"name": "mlp"}
    loaded = ModalityAdapter.from_pretrained(tmp_path / "a", load_encoder=False)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.embed(feats), emb)
    assert torch.equal(loaded.soft_tokens(feats).tokens, soft.tokens)


def test_adapter_config_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs embed_dim"):
        from_dict(AdapterConfig, {"modality": "imu", "encoder": "imu", "in_dim": 4})
    with pytest.raises(ConfigError, match="llm_projector is missing"):
        from_dict(AdapterConfig, {"modality": "imu", "encoder": "imu", "in_dim": 4, "llm_dim": 8})
    with pytest.raises(ValueError, match="identity shared-space head needs embed_dim == in_dim"):
        ModalityAdapter(AdapterConfig(modality="imu", encoder="imu", in_dim=4, embed_dim=8))
    with pytest.raises(FileNotFoundError, match="not an anyalign adapter folder"):
        ModalityAdapter.from_pretrained(tmp_path)
