"""IMU encoder and UEA reader on the real BasicMotions smartwatch data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anyalign.datasets import load_uea
from anyalign.encoders import InputError, create_encoder
from anyalign.encoders.imu import resample, window_stream
from anyalign.io import save_weights


def test_basicmotions_reader(assets: Path) -> None:
    train = load_uea(assets / "imu" / "BasicMotions", "train")
    test = load_uea(assets / "imu" / "BasicMotions", "test")
    assert train.x.shape == (40, 6, 100) and test.x.shape == (40, 6, 100) and train.x.dtype == np.float32
    assert train.classes == ["Badminton", "Running", "Standing", "Walking"] and train.sample_rate == 10.0
    assert sorted(np.bincount(train.targets).tolist()) == [10, 10, 10, 10]
    # running moves the wrist far more than standing: a sanity check that channels are parsed, not garbled
    std = {c: train.x[train.targets == i].std() for i, c in enumerate(train.classes)}
    assert std["Running"] > 3 * std["Standing"]


def test_uea_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no \\*_TRAIN.arff"):
        load_uea(tmp_path)
    (tmp_path / "X_TRAIN.arff").write_text("@attribute a {A,B}\n@data\n'1,2\\n3,4',A\n'1,2,3\\n4,5,6',B\n")
    with pytest.raises(ValueError, match="X_TRAIN.arff: series have different shapes"):
        load_uea(tmp_path)


def test_imu_encoder_shapes_masks_frozen(tmp_path: Path) -> None:
    enc = create_encoder("imu", dim=32, depth=1, heads=2)
    out = enc([np.random.randn(6, 100), np.random.randn(40, 6)])  # [C, T] and [T, C]
    assert out.tokens.shape == (2, 25, 32) and out.pooled.shape == (2, 32)
    assert out.mask[0].all() and out.mask[1].sum() == 10
    enc.train()
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    # padding does not leak into the shorter sample
    alone = enc([np.random.randn(6, 40)])
    x = np.random.randn(6, 40)
    assert torch.allclose(enc([x]).pooled, enc([x, np.random.randn(6, 100)]).pooled[0:1], atol=1e-5)
    assert alone.tokens.shape[1] == 10
    np.save(tmp_path / "w.npy", np.random.randn(6, 50).astype(np.float32))
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    assert enc([tmp_path / "w.npy"]).tokens.shape[1] == 13
    with pytest.raises(InputError, match="bad.npy: cannot read IMU data"):
        enc([tmp_path / "bad.npy"])
    with pytest.raises(InputError, match="expected a 2-D array with 6 channels"):
        enc([np.zeros((3, 50))])


def test_imu_pretrained_roundtrip_and_trainable(tmp_path: Path) -> None:
    enc = create_encoder("imu", dim=32, depth=1, heads=2, frozen=False)
    assert enc.training and all(p.requires_grad for p in enc.parameters())
    enc.eval()
    save_weights(tmp_path / "imu.safetensors", enc.state_dict())
    again = create_encoder("imu", pretrained=str(tmp_path / "imu.safetensors"), dim=32, depth=1, heads=2)
    x = [np.random.randn(6, 64)]
    assert torch.allclose(enc(x).tokens.detach(), again(x).tokens, atol=1e-5)
    with pytest.raises(ValueError, match="not an imu encoder checkpoint"):
        create_encoder("imu", pretrained=str(tmp_path / "imu.safetensors"), dim=16, depth=1, heads=2)


def test_resample_and_windowing() -> None:
    t = np.arange(200) / 100.0
    x = np.stack([np.sin(2 * np.pi * 2 * t)] * 6).astype(np.float32)  # 2 Hz sine at 100 Hz
    y = resample(x, 100, 50)
    assert y.shape == (6, 100)
    assert np.allclose(y[0, 10:90], np.sin(2 * np.pi * 2 * np.arange(100) / 50.0)[10:90], atol=0.05)
    w = window_stream(x, 100, window_seconds=0.5, hop_seconds=0.25)
    assert w.shape == (7, 6, 50) and np.array_equal(w[1], x[:, 25:75])
    assert window_stream(x[:, :30], 100, 0.5).shape == (1, 6, 30)
    enc = create_encoder("imu", dim=16, depth=1, heads=2, sample_rate=100, target_rate=50)
    assert enc.load(x).shape == (6, 100)
