"""Peak memory and time to the first step of training from cached features, streamed vs map-style, by corpus size.

    python benchmarks/train_memory.py                          # 10k, 100k, 1M records; map-style up to 100k
    python benchmarks/train_memory.py --sizes 10000 --steps 3  # the smoke test's size

Synthetic feature shards of a realistic shape (tokens [1..4, 1280] float16, pooled [1280] float32, a caption and a
label per record; ~13 KB per record on disk) in the `anyalign extract` layout, 10k records per shard. To keep the
disk and the set-up time bounded, at most `--unique` records are written, once, into a pool of full shards that
every size's folder hard-links (the reader cannot tell; the page cache may make re-read shards faster than cold
disk); with `--work` the pool and the size folders are kept there and reused by later runs. Every (size, mode)
run is a fresh process training a real MLP adapter against the real MiniLM text space with the real Trainer; it
reports its peak RSS (getrusage) and the seconds from process start to the end of step 1. Captions come from a
vocabulary of 1000 sentences, so the text-anchor cache is not what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
PER_SHARD = 10_000
CLASSES = [f"class {i}" for i in range(100)]

CHILD = """
import json, resource, sys, time
t0 = {t0!r}
import torch
torch.set_num_threads({threads})
from anyalign.align import Trainer, load_recipe

class Probe:
    first = None
    t_first = None
    def on_step_end(self, trainer, step, logs):
        if step == 1:
            Probe.t_first = time.time()
            Probe.first = Probe.t_first - t0
        Probe.t_last = time.time()

trainer = Trainer(load_recipe({recipe!r}), output_dir={out!r}, callbacks=[Probe()])
mode = trainer.data.mode
trainer.fit()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"mode": mode, "first_step_s": Probe.first, "peak_rss_mb": rss,
                  "steps_per_s": ({steps} - 1) / max(Probe.t_last - Probe.t_first, 1e-9)}}))
"""


def _pool_shard(pool: Path, s: int, seed: int) -> Path:
    """Full shard `s` of the pool (PER_SHARD records, a pure function of (seed, s)), written if not there yet."""
    path = pool / f"pool-{s:05d}.tar"
    if not path.is_file():
        _write_shard(path, f"r{s}", PER_SHARD, np.random.default_rng([seed, s]))
    return path


def _write_shard(path: Path, prefix: str, count: int, rng: np.random.Generator) -> None:
    from anyalign.features import FeatureWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    with FeatureWriter(path) as w:
        base = rng.normal(size=(count, 4, 1280)).astype(np.float16)
        for i in range(count):
            c = int(rng.integers(len(CLASSES)))
            t = 1 + (i % 4)
            w.add(f"{prefix}_{i}", base[i, :t], base[i, :t].astype(np.float32).mean(0),
                  {"label": CLASSES[c], "caption": f"a picture of {CLASSES[c]}, variant {i % 10}"})


def write_shards(folder: Path, n: int, unique: int, seed: int = 0, pool: Path | None = None) -> Path:
    """`n` records in shards of PER_SHARD plus the manifest: full shards are hard links to the first
    `unique // PER_SHARD` shards of `pool` (written once), a partial last shard is written here. A folder that
    already holds a manifest for `n` records is reused as it is."""
    from anyalign.features import read_manifest, write_manifest

    manifest = folder / "manifest.json"
    if manifest.is_file() and sum(s["count"] for s in read_manifest(folder)["shards"]) == n:
        return folder
    pool = pool if pool is not None else folder / "pool"
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    n_unique = max(1, unique // PER_SHARD)
    for s in range(-(-n // PER_SHARD)):
        count = min(PER_SHARD, n - s * PER_SHARD)
        name = f"features-r00-{s:05d}.tar"
        (folder / name).unlink(missing_ok=True)
        if count == PER_SHARD:
            os.link(_pool_shard(pool, s % n_unique, seed), folder / name)
        else:
            _write_shard(folder / name, f"p{s}", count, np.random.default_rng([seed, 2 ** 32 - 1, s]))
        shards.append({"file": name, "count": count})
    write_manifest(folder, {"encoder": "synthetic", "modality": "image", "token_dim": 1280, "pooled_dim": 1280,
                            "dtype": "float16", "shards": shards, "failures": []})
    return folder


def recipe(path: Path, feats: Path, minilm: Path, mode: str, steps: int, batch: int) -> Path:
    data = {"adapters": {"image": {"encoder": {"name": "timm-image"}, "embed_projector": {"name": "mlp",
                                                                                         "hidden_dim": 256}}},
            "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm)}}},
            "data": {"train": [{"kind": "features", "path": str(feats)}]},
            "train": {"batch_size": batch, "max_steps": steps, "save_every": 10_000, "log_every": 10_000,
                      "tensorboard": False, "stream": mode},
            "eval": {"at_start": False}}
    path.write_text(yaml.safe_dump(data))
    return path


def warm_text_cache(minilm: Path, cache: Path) -> None:
    """Encode the benchmark's 1000 captions into the text-anchor table once (not part of what is measured)."""
    from anyalign.align.config import AnchorSpec
    from anyalign.align.text_cache import table_for_anchor
    from anyalign.config import from_dict

    spec = from_dict(AnchorSpec, {"encoder": {"name": "text", "pretrained": str(minilm)}}, source="anchor")
    table = table_for_anchor(spec.encoder, spec.encoder.build(frozen=True), root=cache / "text-embeddings")
    table.add([f"a picture of {c}, variant {i}" for c in CLASSES for i in range(10)])
    table.close()


def measure(feats: Path, minilm: Path, mode: str, steps: int, batch: int, work: Path, threads: int) -> dict:
    r = recipe(work / f"{feats.name}-{mode}.yaml", feats, minilm, mode, steps, batch)
    out = work / f"run-{feats.name}-{mode}"
    shutil.rmtree(out, ignore_errors=True)  # a kept --work folder holds the previous run's output
    code = CHILD.format(t0=time.time(), threads=threads, recipe=str(r), out=str(out), steps=steps)
    env = {**os.environ, "ANYALIGN_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"{mode} at {feats.name}: failed\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--map-max", type=int, default=100_000, help="largest size also run map-style")
    parser.add_argument("--unique", type=int, default=100_000, help="records actually written (rest hard links)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--assets", default=os.environ.get("ANYALIGN_ASSETS", ""))
    parser.add_argument("--work", default=None, help="folder for the shards, kept and reused (default: a "
                        "temporary folder)")
    args = parser.parse_args(argv)
    minilm = Path(args.assets) / "text" / "all-MiniLM-L6-v2"
    if not minilm.is_dir():
        raise SystemExit("set ANYALIGN_ASSETS (or --assets) to the folder holding text/all-MiniLM-L6-v2")
    results: dict = {}
    with contextlib.ExitStack() as stack:
        if args.work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        else:  # kept: the shard pool, the size folders and the text-anchor table are reused by later runs
            work = Path(args.work).expanduser()
            work.mkdir(parents=True, exist_ok=True)
        warm_text_cache(minilm, work / "cache")
        for n in args.sizes:
            t0 = time.perf_counter()
            feats = write_shards(work / f"n{n}", n, args.unique, pool=work / "pool")
            print(f"{n:>9,} records: shards ready in {time.perf_counter() - t0:.1f} s", flush=True)
            for mode in ["stream"] + (["map"] if n <= args.map_max else []):
                res = measure(feats, minilm, mode, args.steps, args.batch, work, args.threads)
                results[(n, mode)] = res
                print(f"  {mode:>6}: peak RSS {res['peak_rss_mb']:8.0f} MB  first step {res['first_step_s']:6.1f} s  "
                      f"{res['steps_per_s']:6.1f} steps/s", flush=True)
    small, big = min(args.sizes), max(args.sizes)
    if small != big:
        s, b = results[(small, "stream")], results[(big, "stream")]
        print(f"streamed RSS at {big:,} / at {small:,}: {b['peak_rss_mb'] / s['peak_rss_mb']:.2f}x (goal <= 1.5x); "
              f"first step at {big:,}: {b['first_step_s']:.1f} s (goal < 30 s)")
    for n in args.sizes:
        if (n, "map") in results:
            m, s = results[(n, "map")], results[(n, "stream")]
            print(f"{n:,}: map / stream peak RSS {m['peak_rss_mb'] / s['peak_rss_mb']:.2f}x, first step "
                  f"{m['first_step_s'] / s['first_step_s']:.2f}x")
    print(f"load: {os.getloadavg()}")
    return results


if __name__ == "__main__":
    main()
