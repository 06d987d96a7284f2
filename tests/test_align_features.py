"""Training from cached feature shards (`anyalign extract` layout) matches training with the encoder run live."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anyalign.align import Trainer, load_recipe
from anyalign.encoders import create_encoder
from anyalign.features import FeatureWriter, write_manifest
from anyalign.io import save_weights

ACTS = ["walking", "running", "standing", "jumping"]
IMU = {"dim": 32, "depth": 1, "heads": 2, "dropout": 0.0}


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Raw windows + a jsonl manifest, a frozen IMU encoder's weights, and its features as shards."""
    rng = np.random.default_rng(0)
    root = tmp_path / "raw"
    root.mkdir()
    rows, windows = [], []
    for i in range(16):
        x = (rng.normal(size=(6, 40)) + i % 4).astype(np.float32)
        np.save(root / f"w{i:02d}.npy", x)
        windows.append(x)
        act = ACTS[i % 4]
        rows.append({"key": f"w{i:02d}", "imu": f"w{i:02d}.npy", "label": act, "caption": f"a person {act}"})
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(3)
    enc = create_encoder("imu", **IMU)  # frozen: stands for a pretrained encoder
    save_weights(tmp_path / "imu.safetensors", enc.state_dict())
    feats = tmp_path / "features"
    feats.mkdir()
    with FeatureWriter(feats / "features-r00-00000.tar") as w:
        out = enc(windows)
        w.add_batch([r["key"] for r in rows], out, [{"source": r["imu"], "label": r["label"], "caption": r["caption"]}
                                                   for r in rows])
    write_manifest(feats, {"encoder": "imu", "pretrained": str(tmp_path / "imu.safetensors"), "modality": "imu",
                           "token_dim": enc.token_dim, "pooled_dim": enc.pooled_dim, "dtype": "float16",
                           "shards": [{"name": "features-r00-00000.tar", "count": len(rows)}], "failures": []})
    return root / "data.jsonl", tmp_path / "imu.safetensors", feats


def _recipe(tmp_path: Path, name: str, source: dict, weights: Path, minilm: Path) -> Path:
    recipe = {"adapters": {"imu": {"encoder": {"name": "imu", "pretrained": str(weights), "options": IMU},
                                   "embed_projector": {"name": "mlp", "hidden_dim": 32}}},
              "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm)}}},
              "data": {"train": [source]},
              "train": {"batch_size": 8, "max_steps": 6, "log_every": 1, "tensorboard": False},
              "eval": {"at_start": False}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_cached_features_train_like_the_live_encoder(tmp_path: Path, minilm_dir: Path) -> None:
    manifest, weights, feats = _setup(tmp_path)
    live = Trainer(load_recipe(_recipe(tmp_path, "live", {"kind": "jsonl", "path": str(manifest)}, weights,
                                       minilm_dir)), output_dir=tmp_path / "live")
    cached = Trainer(load_recipe(_recipe(tmp_path, "cached", {"kind": "features", "path": str(feats)}, weights,
                                         minilm_dir)), output_dir=tmp_path / "cached")
    assert live.unwrapped.has_encoder("imu") and not cached.unwrapped.has_encoder("imu")  # never built
    assert [k for _, r in cached.data.train_set.records for k in [r["key"]]] == [f"w{i:02d}" for i in range(16)]
    live.fit()
    cached.fit()
    curves = [[r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for d in (tmp_path / "live", tmp_path / "cached")]
    assert len(curves[0]) == 6
    assert curves[1] == pytest.approx(curves[0], rel=2e-3)  # same data order; tokens stored as float16
