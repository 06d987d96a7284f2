"""Zero-shot classification throughput: the `ZeroShotClassifier.classify` pipeline against the bare encoder forward
on the same clips, in one process.

    python benchmarks/zeroshot.py [--clap DIR] [--clips 256] [--batch-size 32] [--threads 2] [--workers 2]

Clips are the real freedesktop sounds (`$ANYALIGN_ASSETS/audio/freedesktop/*.oga`), repeated to `--clips`. Without
`--clap` a tiny random CLAP (the real transformers classes, `tests/helpers_clap.py`) is used: the numbers then
measure the pipeline overhead (decode, windowing, batching, scoring) around a cheap network, not CLAP itself.
Printed: clips/s of (a) the bare audio encoder forward (decode + mel features + network, batched), (b) the network
alone on pre-computed features, (c) `classify` (cached class embeddings, top-5, softmax) with 0 and `--workers`
DataLoader workers doing decode + features; and each pipeline's speed relative to (a).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anyalign.zeroshot import ZeroShotClassifier  # noqa: E402

LABELS = ["an alarm clock", "a bell ringing", "a camera shutter", "a phone ringing", "an error beep", "a door knock",
          "a notification chime", "trash being emptied", "a dog barking", "rain"]


def _best_interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Fastest of `repeats` timed calls of each function (seconds), alternating the functions each round so that
    drifting load on a shared machine hits them alike."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clap", help="a CLAP folder / hub id (default: a tiny random CLAP)")
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the second pipeline run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    assets = Path(os.environ.get("ANYALIGN_ASSETS", "/tmp/assets"))
    sounds = sorted((assets / "audio" / "freedesktop").glob("*.oga"))
    if not sounds:
        sys.exit(f"no clips: {assets}/audio/freedesktop/*.oga not found (set ANYALIGN_ASSETS)")
    clips = [str(sounds[i % len(sounds)]) for i in range(args.clips)]
    with tempfile.TemporaryDirectory() as tmp:
        pretrained = args.clap
        if pretrained is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from helpers_clap import make_tiny_clap

            pretrained = str(make_tiny_clap(Path(tmp)))
        clf = ZeroShotClassifier.from_clap(LABELS, pretrained=pretrained, device=args.device,
                                           cache_dir=Path(tmp) / "cache", batch_size=args.batch_size, progress=False)
        enc = clf.query.encoder
        bs = args.batch_size
        _ = clf.weights  # class embeddings computed once (cached) before timing

        def bare() -> None:
            for i in range(0, len(clips), bs):
                enc(clips[i:i + bs])

        batches = [enc.collate([enc.load(c) for c in clips[i:i + bs]]) for i in range(0, len(clips), bs)]

        def network() -> None:
            with torch.no_grad():
                for b in batches:
                    enc.run(b)

        def pipeline(workers: int) -> None:
            preds = clf.classify(clips, top_k=5, num_workers=workers)
            assert all(p.ok for p in preds)

        bare(), pipeline(0)  # warm-up
        times = _best_interleaved({"bare": bare, "network": network, "pipe0": lambda: pipeline(0),
                                   "pipeN": lambda: pipeline(args.workers)}, args.repeats)
        t_bare, t_net = times["bare"], times["network"]
        t_pipe = {0: times["pipe0"], args.workers: times["pipeN"]}
    n = len(clips)
    print(f"device {args.device}, {torch.get_num_threads()} threads, {n} clips ({len(sounds)} distinct freedesktop "
          f"sounds), batch {bs}, model {'tiny random CLAP' if args.clap is None else args.clap}")
    print(f"  bare encoder forward (decode+features+network): {n / t_bare:8.1f} clips/s")
    print(f"  network only (pre-computed features):           {n / t_net:8.1f} clips/s")
    for w, t in t_pipe.items():
        print(f"  classify pipeline, {w} decode workers:             {n / t:8.1f} clips/s  "
              f"({t_bare / t:.2f}x the bare forward)")

if __name__ == "__main__":
    main()
