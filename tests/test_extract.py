"""`anyalign extract`: real files end to end, failure accounting, resume after a kill, 2 processes, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_clap import make_tiny_clap

from anyalign.cli.main import main
from anyalign.datasets import load_uea
from anyalign.encoders import create_encoder
from anyalign.encoders.custom import wrap_module
from anyalign.encoders.extract import extract
from anyalign.features import load_features, read_manifest, shard_files
from anyalign.io import save_weights

ROOT = Path(__file__).resolve().parents[1]
IMU = ["--set", "dim=32", "--set", "depth=1", "--set", "heads=2"]


def _run(args: list[str]) -> None:
    try:
        main(["extract", *args])
    except SystemExit as e:
        if e.code:
            raise


@pytest.fixture()
def imu_windows(tmp_path: Path, assets: Path) -> Path:
    """14 real BasicMotions windows as .npy files plus one corrupt .npy."""
    folder = tmp_path / "windows"
    folder.mkdir()
    test = load_uea(assets / "imu" / "BasicMotions", "test")
    for i in range(0, 40, 3):
        np.save(folder / f"{test.labels[i].lower()}-{i:02d}.npy", test.x[i])
    (folder / "corrupt.npy").write_bytes(b"\x00garbage, not an array")
    return folder


@pytest.fixture()
def imu_weights(tmp_path: Path) -> Path:
    """Fixed weights, so that every run computes the same features."""
    path = tmp_path / "imu.safetensors"
    save_weights(path, create_encoder("imu", dim=32, depth=1, heads=2).state_dict())
    return path


def _same(a: list, b: list) -> bool:
    return [r.key for r in a] == [r.key for r in b] and all(
        torch.equal(x.tokens, y.tokens) and torch.equal(x.pooled, y.pooled) and x.meta == y.meta for x, y in zip(a, b))


def test_imu_extraction_counts_and_lists_failures(tmp_path: Path, imu_windows: Path, imu_weights: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "feats"
    args = ["--encoder", "imu", "--pretrained", str(imu_weights), "--input", str(imu_windows), "--output", str(out),
            "--shard-size", "4", "--workers", "1", *IMU]
    _run(args)
    printed = capsys.readouterr()
    assert "14 extracted, 1 failed, 4 shards written" in printed.out and "corrupt.npy" in printed.err
    manifest = read_manifest(out)
    assert manifest["count"] == 14 and manifest["complete"] and manifest["token_dim"] == 32
    assert manifest["dtype"] == "float16" and [s["count"] for s in manifest["shards"]] == [4, 3, 4, 3]
    assert [f["source"].endswith("corrupt.npy") for f in manifest["failures"]] == [True]
    records = load_features(out)
    assert len(records) == 14 and records[0].tokens.shape == (25, 32) and records[0].meta["source"].endswith(".npy")
    ref = create_encoder("imu", pretrained=str(imu_weights), dim=32, depth=1, heads=2)([records[0].meta["source"]])
    assert torch.allclose(records[0].pooled, ref.pooled[0], atol=1e-5)

    _run(args)  # nothing left to do
    assert "0 shards written, 4 already done" in capsys.readouterr().out
    np.save(imu_windows / "badminton-00a.npy", np.zeros((6, 100), np.float32))  # sorts first: only it is new
    _run(args)
    assert "1 shards written, 4 already done (1 new" in capsys.readouterr().out
    assert read_manifest(out)["count"] == 15 and read_manifest(out)["complete"]


def test_text_manifest_with_fields(tmp_path: Path, minilm_dir: Path) -> None:
    manifest = tmp_path / "captions.jsonl"
    rows = [{"text": "a dog barking", "label": "dog"}, {"text": "a violin playing a melody", "label": "violin"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _run(["--encoder", "text", "--pretrained", str(minilm_dir), "--input", str(manifest), "--output",
          str(tmp_path / "f"), "--workers", "0"])
    recs = load_features(tmp_path / "f")
    assert [r.meta["label"] for r in recs] == ["dog", "violin"] and recs[1].meta["text"] == rows[1]["text"]
    ref = create_encoder("text", pretrained=str(minilm_dir))([r["text"] for r in rows])
    assert torch.allclose(recs[0].pooled, ref.pooled[0], atol=1e-5)
    assert recs[1].tokens.shape == (int(ref.mask[1].sum()), 384)  # valid tokens only
    assert torch.allclose(recs[1].tokens, ref.tokens[1][ref.mask[1]], atol=1e-2)
    assert read_manifest(tmp_path / "f")["encoder"]["pretrained"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_audio_folder_and_webdataset_shards(tmp_path: Path, assets: Path, capsys: pytest.CaptureFixture) -> None:
    clap = make_tiny_clap(tmp_path / "clap")
    names = ["bell", "complete", "message", "dialog-warning"]
    folder = tmp_path / "sounds"
    folder.mkdir()
    for n in names:
        (folder / f"{n}.oga").write_bytes((assets / "audio" / "freedesktop" / f"{n}.oga").read_bytes())
    (folder / "broken.oga").write_bytes(b"OggS" + bytes(range(200)))  # right suffix, garbage content
    _run(["--encoder", "clap-audio", "--pretrained", str(clap), "--input", str(folder), "--output",
          str(tmp_path / "f"), "--batch-size", "2", "--workers", "1"])
    assert "4 extracted, 1 failed" in capsys.readouterr().out
    recs = load_features(tmp_path / "f")
    assert sorted(r.key for r in recs) == sorted(f"{n}.oga" for n in names)
    failure, = read_manifest(tmp_path / "f")["failures"]
    assert failure["key"] == "broken.oga" and "cannot read as audio" in failure["error"]

    shard = tmp_path / "shards" / "train-000.tar"  # the same files as a webdataset shard with labels
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tf:
        for n in names:
            tf.add(folder / f"{n}.oga", arcname=f"{n}.oga")
            meta = tmp_path / f"{n}.json"
            meta.write_text(json.dumps({"label": n.upper()}))
            tf.add(meta, arcname=f"{n}.json")
    _run(["--encoder", "clap-audio", "--pretrained", str(clap), "--input", str(shard.parent), "--output",
          str(tmp_path / "g"), "--batch-size", "3", "--workers", "0"])
    from_tar = {r.key: r for r in load_features(tmp_path / "g")}
    assert sorted(from_tar) == sorted(f"train-000/{n}" for n in names)
    for r in recs:
        t = from_tar[f"train-000/{r.key[:-4]}"]
        assert t.meta["label"] == r.key[:-4].upper() and t.meta["source"].endswith(f"train-000.tar:{r.key}")
        assert torch.allclose(t.pooled, r.pooled, atol=1e-5) and torch.allclose(t.tokens, r.tokens, atol=1e-2)


_KILLER = """
import os, signal, sys
from anyalign.encoders import create_encoder
from anyalign.encoders.extract import extract
enc = create_encoder("imu", pretrained=sys.argv[1], dim=32, depth=1, heads=2)
encode, calls = enc.encode, []
def encode_then_die(batch):
    calls.append(1)
    if len(calls) == 3:  # two shards are finished, the third one is half written
        os.kill(os.getpid(), signal.SIGKILL)
    return encode(batch)
enc.encode = encode_then_die
extract(enc, sys.argv[2], sys.argv[3], batch_size=2, shard_size=2, num_workers=1, progress=False)
"""


def test_killed_run_resumes_without_redoing_shards(tmp_path: Path, imu_windows: Path, imu_weights: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(imu_weights), str(imu_windows), str(out)], cwd=ROOT,
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("features-*.tar")}
    assert sorted(finished) == ["features-r00-00000.tar", "features-r00-00001.tar"]
    assert list(out.glob(".features-r00-00002.tar.*.tmp")) and not (out / "manifest.json").exists()

    enc = create_encoder("imu", pretrained=str(imu_weights), dim=32, depth=1, heads=2)
    summary = extract(enc, imu_windows, out, batch_size=2, shard_size=2, num_workers=1, progress=False)
    assert (summary.shards_skipped, summary.shards_written, summary.n_ok, summary.n_failed) == (2, 6, 14, 1)
    before = sum(json.loads((out / n).with_suffix(".json").read_text())["n_ok"] for n in finished)
    assert summary.n_new == 14 - before and summary.throughput > 0 and len(summary.shards) == 8
    assert {n: (out / n).stat().st_mtime_ns for n in finished} == finished  # finished shards were not rewritten
    assert not list(out.glob(".*.tmp"))
    whole = tmp_path / "whole"
    extract(enc, imu_windows, whole, batch_size=2, shard_size=2, num_workers=0, progress=False)
    assert _same(load_features(out), load_features(whole))
    assert read_manifest(out)["failures"] == read_manifest(whole)["failures"]


def test_an_item_that_breaks_its_batch_costs_only_itself(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, shape in [("a", (6, 40)), ("b", (6, 40)), ("c", (3, 40)), ("e", (6, 24))]:
        np.save(tmp_path / f"{name}.npy", rng.standard_normal(shape).astype(np.float32))
    (tmp_path / "d.npy").write_bytes(b"not numpy")
    net = torch.nn.Conv1d(6, 8, 5)
    enc = wrap_module(torch.nn.Sequential(net), modality="imu", token_dim=8, extensions=[".npy"],
                      load=lambda p: torch.from_numpy(np.load(p)), collate=torch.stack).freeze()
    enc.module[0].register_forward_hook(lambda m, i, o: o.transpose(1, 2))  # [B, 8, T'] -> tokens [B, T', 8]
    summary = extract(enc, tmp_path, tmp_path.with_name(tmp_path.name + "-out"), batch_size=8, progress=False)
    assert summary.n_ok == 3 and sorted(f["key"] for f in summary.failures) == ["c.npy", "d.npy"]
    recs = {r.key: r for r in load_features(tmp_path.with_name(tmp_path.name + "-out"))}
    assert sorted(recs) == ["a.npy", "b.npy", "e.npy"] and recs["e.npy"].tokens.shape == (20, 8)
    direct = enc([str(tmp_path / "a.npy")]).tokens[0]
    assert torch.allclose(recs["a.npy"].tokens, direct, atol=1e-2)


def test_bad_arguments_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a.npy").write_bytes(b"")
    listing = tmp_path / "list.jsonl"
    listing.write_text('{"path": "x.jpg"}\n')
    cases = [(["--encoder", "nope", "--input", str(tmp_path)], "unknown encoder 'nope'; expected one of"),
             (["--encoder", "imu", "--input", str(tmp_path / "missing")], "no such file or folder"),
             (["--encoder", "timm-image", "--set", "model=resnet10t", "--input", str(tmp_path)],
              "no file this image encoder reads; expected .jpg"),
             (["--encoder", "clap-audio", "--input", str(listing)], "no listed file is one this audio encoder reads"),
             (["--encoder", "text", "--input", str(tmp_path)], "expected a .jsonl list with a 'text' field"),
             (["--encoder", "imu", "--set", "colour=red", "--input", str(tmp_path)], "colour"),
             (["--encoder", "imu", "--autocast", "fp8", "--input", str(tmp_path)], "autocast='fp8'; expected one of")]
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["extract", *args, "--output", str(tmp_path.with_name(tmp_path.name + "-o"))])  # not in the input
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.count("\n") == 1 and err.startswith("error: "), err


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_under_accelerate_launch(tmp_path: Path, imu_windows: Path, imu_weights: Path) -> None:
    common = ["extract", "--encoder", "imu", "--pretrained", str(imu_weights), *IMU, "--input", str(imu_windows),
              "--shard-size", "3", "--workers", "0", "--quiet"]
    # accelerate's `--cpu` multi-process mode needs MPI; `--multi_gpu` is its torchrun launcher, which runs
    # CPU-only processes too (anyalign then joins them with gloo)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(_free_port()), "-m", "anyalign.cli.main"]
    proc = subprocess.run([*launch, *common, "--output", str(tmp_path / "two")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0:" in proc.stdout and "rank 1:" in proc.stdout
    _run([*common[1:], "--output", str(tmp_path / "one")])
    assert {p.name.split("-")[1] for p in shard_files(tmp_path / "two")} == {"r00", "r01"}  # both ranks wrote
    two, one = load_features(tmp_path / "two"), load_features(tmp_path / "one")
    assert [r.key for r in two] == [r.key for r in one]  # manifest order = input order, whichever rank wrote it
    assert all(torch.allclose(a.tokens, b.tokens, atol=1e-2) and a.meta == b.meta for a, b in zip(two, one))
    assert read_manifest(tmp_path / "two")["count"] == 14 and len(read_manifest(tmp_path / "two")["failures"]) == 1
