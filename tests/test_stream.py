"""Streamed training data (align/stream.py): disjoint shards per rank and worker, the same global batches whatever
the number of processes, bounded float16 chunks, and bit-exact resume after SIGKILL of a streamed run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from anyalign.align import load_recipe, train
from anyalign.align.checkpoint import list_checkpoints, read_state
from anyalign.align.config import DataSource
from anyalign.align.stream import FeatureStream, choose_mode
from anyalign.features import FeatureWriter, write_manifest

ACTS = ["walking", "running", "standing", "jumping"]
WEIGHTS = "adapters/imu/anyalign_adapter.safetensors"


def feature_folder(root: Path, shards: int = 8, per_shard: int = 12, dim: int = 16, seed: int = 0) -> Path:
    """Class-dependent cached features ([1..4, dim] float16 tokens) in `shards` shards plus the manifest."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    listed = []
    centres = rng.normal(size=(len(ACTS), dim)).astype(np.float32)
    for s in range(shards):
        name = f"features-r00-{s:05d}.tar"
        with FeatureWriter(root / name) as w:
            for i in range(per_shard):
                n = s * per_shard + i
                c = n % len(ACTS)
                tokens = centres[c] + rng.normal(0, 0.3, size=(1 + n % 4, dim)).astype(np.float32)
                w.add(f"s{n:04d}", tokens, tokens.mean(0), {"label": ACTS[c], "caption": f"a person {ACTS[c]}"})
        listed.append({"file": name, "count": per_shard})
    write_manifest(root, {"encoder": "imu", "modality": "imu", "token_dim": dim, "pooled_dim": dim,
                          "dtype": "float16", "shards": listed, "failures": []})
    return root


def _stream(folder: Path, **kw: object) -> FeatureStream:
    opts = {"batch_size": 8, "lanes": 4, "buffer": 16, "seed": 3, **kw}
    return FeatureStream([DataSource(kind="features", path=str(folder), caption_templates=["{caption}",
                                                                                        "someone {label}"])], **opts)


def _keys(stream: FeatureStream, epoch: int = 0, start: int = 0, workers: bool = False) -> list[list[str]]:
    stream.set_position(epoch, start)
    return [b.keys for b in stream.batches(stream.loader() if workers else None)]


def test_ranks_and_workers_read_disjoint_shards_and_form_the_same_global_batches(tmp_path: Path) -> None:
    folder = feature_folder(tmp_path / "f")
    one = _stream(folder)
    assert one.steps_in_epoch(0) == 12  # 4 lanes x 24 samples, 2 per lane per batch
    batches = _keys(one)
    flat = [k for b in batches for k in b]
    assert len(flat) == len(set(flat)) == 96  # every sample once per epoch
    ranks = [_stream(folder, rank=r, world=2) for r in range(2)]
    per_rank = [_keys(s) for s in ranks]
    for n, b in enumerate(batches):  # the global batch is the same set of samples with 1 or 2 processes
        assert sorted(per_rank[0][n] + per_rank[1][n]) == sorted(b)
    shard_of = {f"s{n:04d}": n // 12 for n in range(96)}
    read = [{shard_of[k] for b in keys for k in b} for keys in per_rank]
    assert read[0] and read[1] and not read[0] & read[1]  # split_by_node: disjoint shards
    workers = _stream(folder, num_workers=2)
    assert workers.num_workers == 2 and _keys(workers, workers=True) == batches  # split_by_worker, same order
    for n, b in enumerate(batches):  # lane k gives samples 2k, 2k+1 of each batch, only from its own shards
        for k in range(4):
            own = {int(p.path.name[-9:-4]) for p in one.lane_shards(0, k)}
            assert {shard_of[x] for x in b[2 * k:2 * k + 2]} <= own
    assert _keys(one, epoch=1) != batches  # a new shard order and shuffle each epoch
    assert _keys(one, epoch=0, start=5) == batches[5:]  # resuming mid-epoch replays to the same position


def test_batches_hold_float16_until_joined_and_labels_agree(tmp_path: Path) -> None:
    folder = feature_folder(tmp_path / "f")
    s = _stream(folder)
    s.set_position(0, 0)
    chunk = next(iter(s))
    assert chunk["media"]["imu"]["tokens"].dtype == torch.float16  # stored dtype inside the pipeline
    batch = next(s.batches())
    feats = batch.media["imu"].features
    assert feats.tokens.dtype == torch.float32 and feats.tokens.shape[0] == 8 and feats.mask.any(1).all()
    assert (feats.mask.sum(1) <= 4).all() and feats.tokens[~feats.mask].abs().sum() == 0
    label_of = {c: i for c, i in zip(batch.captions, batch.labels.tolist()) if c.startswith("a person")}
    for cap, lab in zip(batch.captions, batch.labels.tolist()):
        act = cap.split()[-1]
        assert label_of.get(f"a person {act}", lab) == lab  # the same class -> the same id on every worker


def test_choose_mode_and_clear_errors(tmp_path: Path) -> None:
    folder = feature_folder(tmp_path / "f", shards=2)
    src = DataSource(kind="features", path=str(folder))
    assert choose_mode("auto", [src]) == "map"  # small: map-style (global shuffle)
    assert choose_mode("stream", [src]) == "stream"
    with pytest.raises(ValueError, match="only feature sources"):
        choose_mode("stream", [DataSource(kind="jsonl", path="x.jsonl")])
    with pytest.raises(ValueError, match="at least 4 shards"):
        _stream(folder)
    with pytest.raises(ValueError, match="divisible by train.stream_lanes"):
        _stream(folder, lanes=2, batch_size=7)


def _recipe(tmp_path: Path, folder: Path, minilm: Path, **train_opts: object) -> Path:
    recipe = {
        "name": "s",
        "adapters": {"imu": {"encoder": {"name": "imu"}, "embed_projector": {"name": "mlp", "hidden_dim": 32}}},
        "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm)}}},
        "data": {"train": [{"kind": "features", "path": str(folder),
                            "caption_templates": ["{caption}", "someone {label}"]}]},
        "train": {"batch_size": 8, "max_steps": 16, "lr": 1e-3, "warmup_steps": 2, "save_every": 4, "log_every": 2,
                  "tensorboard": False, "stream": "stream", "stream_lanes": 2, "stream_buffer": 8, "grad_accum": 2,
                  **train_opts},
        "eval": {"at_start": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


KILL_SCRIPT = """
import os, signal
import torch
torch.set_num_threads({threads})
from anyalign.align import load_recipe, train

class KillAt:
    def on_step_end(self, trainer, step, logs):
        if step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)

train(load_recipe({recipe!r}), output_dir={out!r}, callbacks=[KillAt()])
"""


def test_streamed_resume_after_sigkill_is_bit_exact(tmp_path: Path, minilm_dir: Path) -> None:
    from tests.test_align_train import _env

    folder = feature_folder(tmp_path / "f", shards=6, per_shard=16)  # 2 lanes x 48: 12 micro-batches per epoch
    recipe = _recipe(tmp_path, folder, minilm_dir)
    full = train(load_recipe(recipe), output_dir=tmp_path / "full")  # 16 steps x 2 micro = 32: 2.7 epochs
    killed = tmp_path / "killed"
    script = KILL_SCRIPT.format(threads=torch.get_num_threads(), kill_at=10, recipe=str(recipe), out=str(killed))
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = list_checkpoints(killed)
    assert [p.name for p in ckpts] == ["step-000004", "step-000008"]
    stream = read_state(ckpts[-1])["stream"]
    assert (stream["epoch"], stream["batch"]) == divmod(8 * 2, 12) == (1, 4)  # mid-epoch, recorded
    assert stream["offset_per_lane"] == 16 and stream["lanes"] == 2 and len(stream["shard_order_sha256"]) == 64
    train(load_recipe(recipe), output_dir=killed, resume=True)
    a, b = load_file(full.output_dir / WEIGHTS), load_file(killed / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for d in (full.output_dir, killed)]
    assert losses[0] == losses[1] and len(losses[0]) == 8


#: the streamed path's peak RSS at 10x the records may exceed the small run's by at most this factor (the shards
#: are read one at a time through a fixed shuffle buffer; what grows is only per-shard bookkeeping)
RSS_BOUND_10X = 1.25


def test_streamed_peak_rss_at_10x_records_stays_bounded(assets: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """benchmarks/train_memory.py, streamed, at 10k and 100k records (each a fresh process training a real MLP
    adapter against the real MiniLM space): the peak RSS at 10x the records stays within RSS_BOUND_10X of the small
    run's (map-style would hold every record)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import train_memory
    finally:
        sys.path.pop(0)
    if not (assets / "text" / "all-MiniLM-L6-v2").is_dir():
        pytest.skip("MiniLM missing")
    results = train_memory.main(["--sizes", "10000", "100000", "--unique", "10000", "--steps", "2", "--map-max", "0",
                                 "--assets", str(assets), "--work", str(tmp_path)])
    small, big = results[(10_000, "stream")], results[(100_000, "stream")]
    assert small["mode"] == big["mode"] == "stream" and small["first_step_s"] > 0
    assert big["peak_rss_mb"] <= RSS_BOUND_10X * small["peak_rss_mb"], (small, big)
    assert "peak RSS" in capsys.readouterr().out


def test_prefetched_keeps_order_raises_in_turn_and_stops_its_thread() -> None:
    import threading

    from anyalign.align.stream import prefetched

    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ValueError("shard-00003.tar: corrupt")

    got = []
    with pytest.raises(ValueError, match="shard-00003.tar: corrupt"):
        for x in prefetched(failing()):
            got.append(x)
    assert got == [1, 2]
    endless = prefetched(iter(range(10**9)), depth=2)
    assert [next(endless) for _ in range(5)] == [0, 1, 2, 3, 4]
    endless.close()  # the consumer stops early: the filling thread ends instead of blocking on a full queue
    assert not any(t.name.startswith("anyalign-prefetch") and t.is_alive() for t in threading.enumerate())
