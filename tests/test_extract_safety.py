"""Extraction never trusts stale state: new inputs are extracted incrementally, another encoder is refused,
concurrent runs are locked out, keys stay unique, and leftovers of a killed run are cleaned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anyalign.encoders import create_encoder
from anyalign.encoders.extract import _writer_lock, extract
from anyalign.features import iter_features, read_manifest

IMU = {"dim": 16, "depth": 1, "heads": 2}


def _windows(folder: Path, names: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(len(names))
    for n in names:
        np.save(folder / n, rng.normal(size=(6, 50)).astype(np.float32))


def _keys(out: Path) -> list[str]:
    return sorted(str(r.key) for r in iter_features(out))


def test_rerun_with_new_inputs_extracts_exactly_the_new_ones(tmp_path: Path) -> None:
    enc = create_encoder("imu", **IMU)
    _windows(tmp_path / "in", [f"w{i}.npy" for i in range(5)])
    first = extract(enc, tmp_path / "in", tmp_path / "out", shard_size=2, progress=False)
    assert first.n_new == 5 and read_manifest(tmp_path / "out")["complete"]
    _windows(tmp_path / "in", ["a00.npy", "a.b.npy", "a_b.npy"])  # sorts first; two keys that sanitise alike
    second = extract(enc, tmp_path / "in", tmp_path / "out", shard_size=2, progress=False)
    assert second.n_new == 3 and second.shards_skipped == 3
    manifest = read_manifest(tmp_path / "out")
    assert manifest["complete"] and manifest["count"] == 8
    assert _keys(tmp_path / "out") == sorted(["a00.npy", "a.b.npy", "a_b.npy", *[f"w{i}.npy" for i in range(5)]])
    assert extract(enc, tmp_path / "in", tmp_path / "out", shard_size=2, progress=False).n_new == 0


def test_another_encoder_is_refused(tmp_path: Path) -> None:
    _windows(tmp_path / "in", ["a.npy", "b.npy"])
    extract(create_encoder("imu", **IMU), tmp_path / "in", tmp_path / "out", progress=False)
    other = create_encoder("imu", **{**IMU, "dim": 32})
    with pytest.raises(ValueError, match="written with encoder imu .*this run uses imu .*dim=32"):
        extract(other, tmp_path / "in", tmp_path / "out", progress=False)


def test_concurrent_runs_are_locked_out_and_leftovers_cleaned(tmp_path: Path) -> None:
    _windows(tmp_path / "in", ["a.npy", "b.npy"])
    out = tmp_path / "out"
    out.mkdir()
    (out / ".features-r00-00000.tar.123.tmp").write_bytes(b"half a shard")
    with _writer_lock(out, 0):
        with pytest.raises(ValueError, match="another `anyalign extract` is writing"):
            extract(create_encoder("imu", **IMU), tmp_path / "in", out, progress=False)
    extract(create_encoder("imu", **IMU), tmp_path / "in", out, progress=False)
    assert not list(out.glob(".features-*.tmp")) and read_manifest(out)["count"] == 2


def test_bad_windows_are_counted_failures_not_aborts(tmp_path: Path) -> None:
    _windows(tmp_path / "in", ["a.npy", "b.npy"])
    np.save(tmp_path / "in" / "empty.npy", np.zeros((6, 0), np.float32))
    np.save(tmp_path / "in" / "long.npy", np.zeros((6, 200_000), np.float32))
    summary = extract(create_encoder("imu", **IMU), tmp_path / "in", tmp_path / "out", progress=False)
    assert summary.n_ok == 2 and summary.n_failed == 2
    reasons = {Path(f["source"]).name: f["error"] for f in summary.failures}
    assert "0 time steps" in reasons["empty.npy"] and "too long" in reasons["long.npy"]
    assert all(np.isfinite(r.pooled.numpy()).all() for r in iter_features(tmp_path / "out"))


def test_more_bad_arguments_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    from anyalign.cli.main import main

    _windows(tmp_path / "in", ["a.npy"])
    (tmp_path / "file.txt").write_text("mine")
    cases = [(["extract", "-e", "imu", "-i", tmp_path / "in", "-o", tmp_path / "file.txt"], "is a file"),
             (["extract", "--batch-size", "0", "-e", "imu", "-i", tmp_path / "in", "-o", tmp_path / "o"],
              "Invalid value for '--batch-size'"),
             (["nosuchcommand"], "No such command"),
             (["embed", tmp_path / "in", "--encoder", "imu", "-o", tmp_path / "file.txt"], "refusing to replace")]
    if not torch.cuda.is_available():
        cases.append((["extract", "-e", "imu", "-i", tmp_path / "in", "-o", tmp_path / "o", "--device", "cuda"],
                      "no CUDA GPU"))
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.count("\n") == 1 and err.startswith("error: "), err
    assert (tmp_path / "file.txt").read_text() == "mine"  # nothing it did not write is touched
