"""Extraction pipeline throughput vs a bare loop of the same encoder's forward on the same inputs (same process).

    python benchmarks/extract.py [--assets DIR] [--n 256] [--batch-size 32] [--workers 1]

Encoder: the timm EfficientNet-Lite0 (real weights when the assets are there), on real video frames saved as JPEG.
Prints both throughputs and the ratio pipeline/bare (target: the pipeline adds at most 10%).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from anyalign.assets import assets_root
from anyalign.encoders import create_encoder
from anyalign.encoders.extract import discover_inputs, extract


def frames(videos: Path, out: Path, n: int) -> None:
    import av

    i = 0
    while i < n:
        for video in sorted(videos.glob("*.mp4")):
            with av.open(str(video)) as box:
                for frame in box.decode(video=0):
                    frame.to_image().convert("RGB").save(out / f"{i:05d}.jpg")
                    i += 1
                    if i >= n:
                        return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--assets", type=Path, default=None)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    root = args.assets or assets_root()
    weights = root / "image" / "efficientnet-lite0.pth"
    enc = create_encoder("timm-image", pretrained=str(weights) if weights.is_file() else None)
    work = Path(tempfile.mkdtemp(prefix="anyalign-bench-extract-"))
    try:
        (work / "in").mkdir()
        frames(root / "video", work / "in", args.n)
        paths = [it.value for it in discover_inputs(work / "in", enc)]
        with torch.inference_mode():  # warm-up
            enc.run(enc.collate([enc.load(p) for p in paths[: args.batch_size]]))
        t = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(paths), args.batch_size):
                enc.run(enc.collate([enc.load(p) for p in paths[i : i + args.batch_size]]))
        bare = len(paths) / (time.perf_counter() - t)
        t = time.perf_counter()
        summary = extract(enc, work / "in", work / "out", batch_size=args.batch_size, num_workers=args.workers,
                          shard_size=10_000, progress=False)
        pipe = summary.n_ok / (time.perf_counter() - t)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"inputs: {len(paths)} real video frames, batch {args.batch_size}, workers {args.workers}, "
          f"threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
    print(f"bare loop (load + collate + forward): {bare:8.1f} images/s")
    print(f"extract pipeline (+ workers, shards):  {pipe:8.1f} images/s")
    print(f"ratio pipeline / bare: {pipe / bare:.3f}  (overhead {100 * (bare / pipe - 1):+.1f}%)")


if __name__ == "__main__":
    main()
