"""IMU encoder and UEA reader on the real BasicMotions smartwatch data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anyalign.datasets import load_uea
from anyalign.encoders import InputError, create_encoder
from anyalign.encoders.imu import channel_stats, resample, window_stream
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


def test_basicmotions_values_follow_the_file_layout(assets: Path) -> None:
    """Series 0 of the file: channel 0 is the first 100 numbers of the first data line, channel 1 the next 100."""
    path = assets / "imu" / "BasicMotions" / "BasicMotions_TRAIN.arff"
    lines = path.read_text().splitlines()
    first = lines[[ln.strip().lower() for ln in lines].index("@data") + 1]
    body, label = first.rsplit(",", 1)
    channels = [[float(v) for v in row.split(",")] for row in body.strip("'").split("\\n")]
    ds = load_uea(path.parent, "train")
    assert ds.labels[0] == label and np.allclose(ds.x[0], np.array(channels, dtype=np.float32))


def test_uea_ts_format_matches_arff(assets: Path, tmp_path: Path) -> None:
    arff = load_uea(assets / "imu" / "BasicMotions", "test")
    rows = [":".join(",".join(repr(float(v)) for v in ch) for ch in x) + f":{y}" for x, y in zip(arff.x, arff.labels)]
    header = ["# converted", "@problemName BasicMotions", "@timeStamps false", "@univariate false",
              "@classLabel true " + " ".join(arff.classes), "@data"]
    (tmp_path / "BasicMotions_TEST.ts").write_text("\n".join(header + rows) + "\n")
    ts = load_uea(tmp_path, "test")
    assert np.array_equal(ts.x, arff.x) and ts.labels == arff.labels and ts.classes == arff.classes
    assert ts.sample_rate == 10.0


def test_uea_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere: UEA data set folder not found"):
        load_uea(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no \\*_TRAIN.arff"):
        load_uea(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_uea(tmp_path, "valid")
    arff = tmp_path / "X_TRAIN.arff"
    arff.write_bytes(b"\x00\x01 not an arff file")
    with pytest.raises(ValueError, match="X_TRAIN.arff: not a readable ARFF file"):
        load_uea(tmp_path)
    header = "@relation r\n@attribute rel relational\n@attribute a numeric\n@attribute b numeric\n@end rel\n"
    arff.write_text(header + "@attribute c {A,B}\n@data\n'1,2\\n3,4',A\n'1,2\\n3,x',B\n")
    with pytest.raises(ValueError, match="X_TRAIN.arff: not a readable ARFF file.*'x'"):
        load_uea(tmp_path)
    arff.write_text(header + "@attribute c {A,B}\n@data\n'1,2\\n3,4',A\n'1,2\\n3,4',C\n")
    with pytest.raises(ValueError, match="X_TRAIN.arff.*C value not in"):
        load_uea(tmp_path)
    arff.unlink()
    ts = tmp_path / "Y_TRAIN.ts"
    ts.write_text("@classLabel true A B\n@data\n1,2:3,4:A\n1,2,3:4,5,6:B\n")
    with pytest.raises(ValueError, match="Y_TRAIN.ts: series have different shapes"):
        load_uea(tmp_path)
    ts.write_text("@classLabel true A B\n@data\n1,2:3,4:A\n1,oops:3,4:B\n")
    with pytest.raises(ValueError, match="Y_TRAIN.ts:4: malformed"):
        load_uea(tmp_path)
    ts.write_text("@classLabel true A B\n@data\n1,2:3,4:Z\n")
    with pytest.raises(ValueError, match="labels \\['Z'\\] are not among"):
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


def test_imu_encoder_windows_long_streams(assets: Path) -> None:
    """A 25 s stream at 10 Hz, 10 s windows every 5 s -> 4 windows whose tokens are concatenated."""
    x = np.concatenate(list(load_uea(assets / "imu" / "BasicMotions", "test").x[:3]), axis=1)[:, :250]  # [6, 250]
    enc = create_encoder("imu", dim=16, depth=1, heads=2, sample_rate=10, window_seconds=10, hop_seconds=5)
    plain = create_encoder("imu", dim=16, depth=1, heads=2)
    plain.load_state_dict(enc.state_dict())
    out = enc([x, x[:, :80]])
    parts = plain([x[:, s : s + 100] for s in (0, 50, 100, 150)])  # the same windows one by one
    assert out.tokens.shape == (2, 4 * 25, 16) and out.mask.sum(1).tolist() == [100, 20]
    assert torch.allclose(out.tokens[0], parts.tokens.reshape(-1, 16), atol=1e-5)
    assert torch.allclose(out.pooled[0], parts.pooled.mean(0), atol=1e-5)  # equal windows: mean of window means
    assert torch.allclose(out.pooled[1], plain([x[:, :80]]).pooled[0], atol=1e-5)  # shorter than a window: as is
    with pytest.raises(ValueError, match="window_seconds needs sample_rate"):
        create_encoder("imu", dim=16, depth=1, heads=2, window_seconds=10)
    # resampling happens before windowing: 100 Hz input, 50 Hz network, 1 s windows of 50 samples
    fast = create_encoder("imu", dim=16, depth=1, heads=2, sample_rate=100, target_rate=50, window_seconds=1)
    stream = np.random.randn(6, 400).astype(np.float32)  # 4 s at 100 Hz
    batch = fast.collate([fast.load(stream)])
    assert batch["x"].shape == (4, 6, 50) and batch["windows"].tolist() == [4]


def test_imu_per_channel_normalisation(assets: Path, tmp_path: Path) -> None:
    train = load_uea(assets / "imu" / "BasicMotions", "train")
    mean, std = channel_stats(train.x)
    assert len(mean) == len(std) == 6
    assert np.allclose(mean, train.x.transpose(1, 0, 2).reshape(6, -1).mean(1), atol=1e-5)
    x = train.x[0]
    # "window": z-score over time per channel, so per-channel gain and offset do not change the output
    win = create_encoder("imu", dim=16, depth=1, heads=2, normalize="window")
    gain, offset = np.array([2.0, 0.5, 3, 1, 4, 0.1])[:, None], np.arange(6.0)[:, None]
    assert torch.allclose(win([x]).pooled, win([x * gain + offset]).pooled, atol=1e-4)
    normed = win.collate([x])["x"][0].numpy()
    assert np.allclose(normed.mean(1), 0, atol=1e-5) and np.allclose(normed.std(1), 1, atol=1e-4)
    # "stats": fixed dataset statistics, the same as standardising the input by hand
    stats = create_encoder("imu", dim=16, depth=1, heads=2, normalize="stats", channel_mean=mean, channel_std=std)
    plain = create_encoder("imu", dim=16, depth=1, heads=2)
    plain.load_state_dict(stats.state_dict())
    by_hand = (x - np.array(mean)[:, None]) / np.array(std)[:, None]
    assert torch.allclose(stats([x]).pooled, plain([by_hand]).pooled, atol=1e-5)
    assert not torch.allclose(stats([x]).pooled, plain([x]).pooled, atol=1e-3)
    with pytest.raises(ValueError, match="channel_mean and channel_std"):
        create_encoder("imu", normalize="stats")
    with pytest.raises(ValueError, match="6 values each"):
        create_encoder("imu", normalize="stats", channel_mean=[0.0] * 3, channel_std=[1.0] * 3)
    with pytest.raises(ValueError, match="option 'normalize' expects 'none' | 'window' | 'stats'"):
        create_encoder("imu", normalize="zscore")


def test_imu_csv_files(tmp_path: Path) -> None:
    enc = create_encoder("imu", dim=16, depth=1, heads=2)
    x = np.random.randn(6, 30).astype(np.float32)
    np.savetxt(tmp_path / "plain.csv", x.T, delimiter=",")  # one row per time step
    np.savetxt(tmp_path / "header.csv", x.T, delimiter=",", header="ax,ay,az,gx,gy,gz", comments="")
    for name in ("plain.csv", "header.csv"):
        assert np.allclose(enc.load(tmp_path / name), x, atol=1e-5)
    (tmp_path / "broken.csv").write_text("ax,ay\n1,2\nthree,4\n")
    with pytest.raises(InputError, match="broken.csv: cannot read IMU data"):
        enc.load(tmp_path / "broken.csv")
    with pytest.raises(InputError, match="gone.npy: file not found"):
        enc.load(tmp_path / "gone.npy")
    with pytest.raises(InputError, match="expected a numeric array"):
        enc.load({"ax": 1})
    with pytest.raises(InputError, match="NaN"):
        enc.load(np.full((6, 10), np.nan))


def test_imu_bf16_autocast_is_close() -> None:
    enc = create_encoder("imu", dim=32, depth=1, heads=2)
    x = [np.random.randn(6, 100), np.random.randn(6, 60)]
    full = enc(x)
    enc.autocast_dtype = torch.bfloat16
    half = enc(x)
    assert half.pooled.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(full.pooled, half.pooled).min() > 0.99


def _walk(assets: Path) -> np.ndarray:
    """A real BasicMotions window `[6, 100]` (accel xyz, gyro xyz) in float64 for exact geometry checks."""
    return load_uea(assets / "imu" / "BasicMotions", "train").x[0].astype(np.float32)


def test_rotation_turns_both_triads_by_one_rotation(assets: Path) -> None:
    """The sensor frame turns as a whole: each triad keeps its per-step norm, and the angle between the
    accelerometer and gyroscope vectors at each step is kept (two different rotations would change it)."""
    from anyalign.align.augment import augment_series, random_rotation
    from anyalign.align.config import AugmentSpec

    x = _walk(assets)
    for deg in (30.0, 180.0):
        r = random_rotation(np.random.default_rng(1), deg)
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-5) and np.isclose(np.linalg.det(r), 1.0, atol=1e-5)
    y = augment_series(x, AugmentSpec(rotate=180.0), np.random.default_rng([0, 0, 3]))
    acc, gyr, acc2, gyr2 = x[:3], x[3:], y[:3], y[3:]
    assert not np.allclose(y, x, atol=1e-3)
    assert np.allclose(np.linalg.norm(acc2, axis=0), np.linalg.norm(acc, axis=0), rtol=1e-4, atol=1e-4)
    assert np.allclose(np.linalg.norm(gyr2, axis=0), np.linalg.norm(gyr, axis=0), rtol=1e-4, atol=1e-4)
    assert np.allclose((acc2 * gyr2).sum(0), (acc * gyr).sum(0), rtol=1e-3, atol=1e-3)  # same rotation for both
    small = augment_series(x, AugmentSpec(rotate=10.0), np.random.default_rng(5))
    cos = (small[:3] * acc).sum(0) / (np.linalg.norm(acc, axis=0) * np.linalg.norm(small[:3], axis=0) + 1e-9)
    assert cos.min() >= np.cos(np.deg2rad(10.0)) - 1e-4  # no vector turns by more than the limit
    with pytest.raises(ValueError, match="triads"):
        augment_series(x[:5], AugmentSpec(rotate=90.0), np.random.default_rng(0))
    turned = augment_series(x, AugmentSpec(rotate=90.0, triads=[[3, 4, 5]]), np.random.default_rng(0))
    assert np.array_equal(turned[:3], acc) and not np.allclose(turned[3:], gyr)  # only the named triad turns


def test_scale_all_and_time_warp(assets: Path) -> None:
    from anyalign.align.augment import augment_series
    from anyalign.align.config import AugmentSpec

    x = _walk(assets)
    y = augment_series(x, AugmentSpec(scale_all=0.2), np.random.default_rng(2))
    ratio = y / np.where(np.abs(x) > 1e-6, x, 1)
    factor = float(np.median(ratio[np.abs(x) > 1e-3]))
    assert abs(factor - 1) > 1e-3 and np.allclose(y, x * factor, rtol=1e-5, atol=1e-5)  # one factor for all
    w = augment_series(x, AugmentSpec(time_warp=0.3), np.random.default_rng(3))
    assert w.shape == x.shape and np.allclose(w[:, 0], x[:, 0]) and np.allclose(w[:, -1], x[:, -1])
    assert not np.allclose(w, x, atol=1e-3)
    assert w.min() >= x.min() - 1e-5 and w.max() <= x.max() + 1e-5  # resampled, never extrapolated
    again = augment_series(x, AugmentSpec(time_warp=0.3), np.random.default_rng(3))
    assert np.array_equal(w, again)  # a pure function of the generator (exact resume)
    off = AugmentSpec(crop=0.8, scale=0.1)
    assert np.array_equal(augment_series(x, off, np.random.default_rng(4)),
                          augment_series(x, AugmentSpec(crop=0.8, scale=0.1, rotate=0.0, time_warp=0.0),
                                         np.random.default_rng(4)))


def test_recipe_augmentations_reach_training_windows_only(assets: Path) -> None:
    """`augment: {rotate, scale_all, time_warp}` in a UEA source changes the raw windows the training set hands to
    the IMU encoder (the same window differs across epochs), never those of an evaluation set; bad values fail."""
    from anyalign.align.config import AugmentSpec, ConfigError, DataSource
    from anyalign.align.data import PairedDataset

    path = str(assets / "imu" / "BasicMotions")
    spec = AugmentSpec(rotate=180.0, scale_all=0.1, time_warp=0.2)
    train = PairedDataset([DataSource(kind="uea", path=path, augment=spec)], ["imu"], seed=0)
    ev = PairedDataset([DataSource(kind="uea", path=path, augment=spec)], ["imu"], seed=0, train=False)
    raw = np.asarray(ev[(0, 0)]["media"]["imu"][0])
    a, b = (np.asarray(train[(e, 0)]["media"]["imu"][0]) for e in (0, 1))
    assert a.shape == raw.shape and not np.allclose(a, raw) and not np.allclose(a, b)
    assert np.array_equal(a, np.asarray(train[(0, 0)]["media"]["imu"][0]))  # seeded by (seed, epoch, index)
    assert np.array_equal(np.asarray(ev[(1, 0)]["media"]["imu"][0]), raw)
    with pytest.raises(ConfigError, match="time_warp"):
        AugmentSpec(time_warp=-1)
