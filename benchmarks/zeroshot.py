"""Zero-shot classification throughput: the `ZeroShotClassifier.classify` pipeline against the bare encoder forward
on the same clips, in one process.

    python benchmarks/zeroshot.py [--clap DIR] [--clips 256] [--batch-size 32] [--threads 2]

Clips are the real freedesktop sounds (`$ANYALIGN_ASSETS/audio/freedesktop/*.oga`), repeated to `--clips`. Without
`--clap` a tiny random CLAP (the real transformers classes, `tests/helpers_clap.py`) is used: the numbers then
measure the pipeline overhead (decode, windowing, batching, scoring) around a cheap network, not CLAP itself.
Printed: clips/s of (a) the bare audio encoder forward (decode + collate + encode, batched), (b) the same encoder
on pre-decoded clips (network only), (c) classify with cached class embeddings; and the ratio (c) / (a).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anyalign.zeroshot import ZeroShotClassifier  # noqa: E402

LABELS = ["an alarm clock", "a bell ringing", "a camera shutter", "a phone ringing", "an error beep", "a door knock",
          "a notification chime", "trash being emptied", "a dog barking", "rain"]


def _best(fn, repeats: int) -> float:
    """Fastest of `repeats` timed calls (seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clap", help="a CLAP folder / hub id (default: a tiny random CLAP)")
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
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

        decoded = [enc.load(c) for c in clips]

        def network() -> None:
            with torch.no_grad():
                for i in range(0, len(decoded), bs):
                    enc.run(enc.collate(decoded[i:i + bs]))

        def pipeline() -> None:
            preds = clf.classify(clips, top_k=5)
            assert all(p.ok for p in preds)

        bare(), pipeline()  # warm-up
        t_bare, t_net, t_pipe = (_best(f, args.repeats) for f in (bare, network, pipeline))
    n = len(clips)
    print(f"device {args.device}, {torch.get_num_threads()} threads, {n} clips ({len(sounds)} distinct freedesktop "
          f"sounds), batch {bs}, model {'tiny random CLAP' if args.clap is None else args.clap}")
    print(f"  bare encoder forward (decode+encode): {n / t_bare:8.1f} clips/s")
    print(f"  encoder on pre-decoded clips:         {n / t_net:8.1f} clips/s")
    print(f"  classify pipeline:                    {n / t_pipe:8.1f} clips/s")
    print(f"  classify / bare forward:              {t_bare / t_pipe:8.3f}x")


if __name__ == "__main__":
    main()
