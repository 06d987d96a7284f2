"""`anyalign extract`: real files end to end, corrupt-file accounting, resume without redoing shards, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anyalign.cli.main import main
from anyalign.datasets import load_uea
from anyalign.encoders import create_encoder
from anyalign.features import load_features, read_manifest, shard_files
from anyalign.io import save_weights


def _run(args: list[str]) -> None:
    try:
        main(["extract", *args])
    except SystemExit as e:
        if e.code:
            raise


@pytest.fixture()
def imu_windows(tmp_path: Path, assets: Path) -> Path:
    folder = tmp_path / "windows"
    folder.mkdir()
    test = load_uea(assets / "imu" / "BasicMotions", "test")
    for i in range(0, 40, 3):
        np.save(folder / f"{test.labels[i].lower()}-{i:02d}.npy", test.x[i])
    (folder / "corrupt.npy").write_bytes(b"\x00garbage, not an array")
    return folder


def test_imu_extraction_counts_failures_and_resumes(tmp_path: Path, imu_windows: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "feats"
    weights = tmp_path / "imu.safetensors"  # fixed weights, so both runs compute the same features
    save_weights(weights, create_encoder("imu", dim=32, depth=1, heads=2).state_dict())
    args = ["--encoder", "imu", "--pretrained", str(weights), "--input", str(imu_windows), "--output", str(out),
            "--shard-size", "4", "--num-workers", "1", "--set", "dim=32", "--set", "depth=1", "--set", "heads=2"]
    _run(args)
    printed = capsys.readouterr()
    assert "14 extracted, 1 failed, 4 shards written" in printed.out and "corrupt.npy" in printed.err
    manifest = read_manifest(out)
    assert manifest["count"] == 14 and manifest["complete"] and manifest["token_dim"] == 32
    assert [f["source"].endswith("corrupt.npy") for f in manifest["failures"]] == [True]
    first = {p.name: p.stat().st_mtime_ns for p in shard_files(out)}
    records = load_features(out)
    assert len(records) == 14 and records[0].tokens.shape == (25, 32) and records[0].meta["source"].endswith(".npy")

    # a killed run leaves finished shards plus maybe a temp file; the rerun redoes only what is missing
    victim = shard_files(out)[1]
    victim.unlink()
    victim.with_suffix(".json").unlink()
    (out / ".features-r00-00001.tar.abc.tmp").write_bytes(b"half")
    _run(args)
    assert "1 shards written, 3 already done" in capsys.readouterr().out
    again = {p.name: p.stat().st_mtime_ns for p in shard_files(out)}
    assert all(again[n] == t for n, t in first.items() if n != victim.name)
    resumed = load_features(out)
    assert [r.key for r in resumed] == [r.key for r in records]
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(resumed, records))


def test_text_manifest_with_fields(tmp_path: Path, minilm_dir: Path) -> None:
    manifest = tmp_path / "captions.jsonl"
    rows = [{"text": "a dog barking", "label": "dog"}, {"text": "a violin playing a melody", "label": "violin"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _run(["--encoder", "text", "--pretrained", str(minilm_dir), "--input", str(manifest), "--output",
          str(tmp_path / "f")])
    recs = load_features(tmp_path / "f")
    assert [r.meta["label"] for r in recs] == ["dog", "violin"]
    ref = create_encoder("text", pretrained=str(minilm_dir))(["a dog barking"]).pooled[0]
    assert torch.allclose(recs[0].pooled, ref, atol=1e-5)
    assert read_manifest(tmp_path / "f")["pretrained"] == str(minilm_dir)


def test_bad_arguments_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a.npy").write_bytes(b"")
    cases = [(["--encoder", "nope", "--input", str(tmp_path)], "unknown encoder 'nope'; expected one of"),
             (["--encoder", "imu", "--input", str(tmp_path / "missing")], "no such file or folder"),
             (["--encoder", "timm-image", "--set", "model=resnet10t", "--input", str(tmp_path)],
              "no file this image encoder reads; expected .jpg")]
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["extract", *args, "--output", str(tmp_path / "o")])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_two_processes_split_the_shards(tmp_path: Path, imu_windows: Path) -> None:
    import subprocess
    import sys

    weights = tmp_path / "imu.safetensors"
    save_weights(weights, create_encoder("imu", dim=32, depth=1, heads=2).state_dict())
    common = ["extract", "--encoder", "imu", "--pretrained", str(weights), "--set", "dim=32", "--set", "depth=1",
              "--set", "heads=2", "--input", str(imu_windows), "--shard-size", "3", "--num-workers", "0"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "anyalign.cli.main"]
    subprocess.run([*torchrun, *common, "--output", str(tmp_path / "two")], check=True, capture_output=True,
                   timeout=300)
    _run([*common[1:], "--output", str(tmp_path / "one")])
    two, one = load_features(tmp_path / "two"), load_features(tmp_path / "one")
    assert {p.name.split("-")[1] for p in shard_files(tmp_path / "two")} == {"r00", "r01"}  # both ranks wrote
    assert sorted(r.key for r in two) == sorted(r.key for r in one)
    by_key = {r.key: r for r in one}
    assert all(torch.allclose(r.tokens, by_key[r.key].tokens, atol=1e-2) for r in two)
    assert read_manifest(tmp_path / "two")["count"] == 14 and len(read_manifest(tmp_path / "two")["failures"]) == 1
