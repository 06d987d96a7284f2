"""Extraction pipeline throughput vs a bare loop of the same encoder's forward on the same inputs (same process).

    python benchmarks/extract.py [--encoder timm|text] [--assets DIR] [--n 256] [--batch-size 32] [--workers 1]

timm: EfficientNet-Lite0 (real weights when the assets are there) on real video frames saved as JPEG files.
text: all-MiniLM-L6-v2 on sentences from a .jsonl manifest.
The bare loop is `encoder.run(encoder.collate([encoder.load(x) ...]))` under `inference_mode`, batch after batch;
the pipeline is `extract()` end to end (input discovery, DataLoader workers, shard writing, manifest). Runs
alternate and the median of `--repeats` is reported; the ratio pipeline/bare should be >= 0.9 (<= 10% overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from anyalign.assets import assets_root
from anyalign.encoders import create_encoder
from anyalign.encoders.extract import discover_inputs, extract

WORDS = ("a dog barks at the mailman while rain falls on the tin roof of an old house near the river and the "
         "children play a loud game of football in the muddy field behind the school").split()


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


def sentences(path: Path, n: int) -> None:
    rows = [{"text": " ".join(WORDS[(i * 7) % 20 : (i * 7) % 20 + 8 + i % 20]), "label": i % 5} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", choices=["timm", "text"], default="timm")
    ap.add_argument("--assets", type=Path, default=None)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = args.assets or assets_root()
    work = Path(tempfile.mkdtemp(prefix="anyalign-bench-extract-"))
    try:
        if args.encoder == "timm":
            weights = root / "image" / "efficientnet-lite0.pth"
            enc = create_encoder("timm-image", pretrained=str(weights) if weights.is_file() else None)
            source = work / "in"
            source.mkdir()
            frames(root / "video", source, args.n)
        else:
            enc = create_encoder("text", pretrained=str(root / "text" / "all-MiniLM-L6-v2"))
            source = work / "in.jsonl"
            sentences(source, args.n)
        values = [it.value for it in discover_inputs(source, enc)]

        def bare() -> float:
            t = time.perf_counter()
            with torch.inference_mode():
                for i in range(0, len(values), args.batch_size):
                    enc.run(enc.collate([enc.load(v) for v in values[i : i + args.batch_size]]))
            return len(values) / (time.perf_counter() - t)

        def pipeline(r: int) -> float:
            t = time.perf_counter()
            summary = extract(enc, source, work / f"out{r}", batch_size=args.batch_size, num_workers=args.workers,
                              shard_size=10_000, progress=False)
            assert summary.n_ok == len(values), summary.failures[:3]
            return summary.n_ok / (time.perf_counter() - t)

        bare()  # warm-up (allocator, kernels, file cache)
        runs = [(bare(), pipeline(r)) for r in range(args.repeats)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    b, p = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    unit = "images" if args.encoder == "timm" else "sentences"
    print(f"encoder {enc.spec.name}: {len(values)} {unit}, batch {args.batch_size}, workers {args.workers}, "
          f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}, median of {args.repeats}")
    print(f"bare loop (load + collate + forward): {b:8.1f} {unit}/s   runs: {', '.join(f'{r[0]:.1f}' for r in runs)}")
    print(f"extract pipeline (workers + shards):   {p:8.1f} {unit}/s   runs: {', '.join(f'{r[1]:.1f}' for r in runs)}")
    print(f"ratio pipeline / bare: {p / b:.3f}  (overhead {100 * (b / p - 1):+.1f}%)")


if __name__ == "__main__":
    main()
