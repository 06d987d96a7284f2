"""Sound adapter numbers (aisfx -> MiniLM) on the named real sounds, both protocols, each with its chance level.

    python benchmarks/sound_eval.py [--data runs/sounds] [--run runs/sound_text_contrastive] [--steps 300] [--reuse]

1. `build_sound_corpus` (anyalign.demos.sounds): freedesktop + Sonic Pi + animal sounds; 25% of the sounds held
   out by a stable hash of the name; the others clean + 2 mild copies for training, 1 stronger copy for testing.
2. aisfx features of each fold (`anyalign extract` in Python; resumed when present).
3. Training with configs/sound_text_contrastive.yaml's recipe (`train_sound_adapter`); `--reuse` evaluates an
   existing run instead.
4. `evaluate_sound_adapter`: (a) seen sounds, new perturbations: sound -> text and text -> sound among all seen
   sounds (chance 1/#seen); (b) held-out sounds: category zero-shot (chance 1/16) and caption retrieval among them;
   next to the caption-only baseline (a MiniLM index of the file names: what the quickstart did without listening)
   and a supervised aisfx 1-NN reference for the categories.
Prints one JSON document with every number, the split and the timings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from anyalign.demos.sound_adapter import evaluate_sound_adapter, extract_sound_features, train_sound_adapter
from anyalign.demos.sounds import build_sound_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("runs/sounds"))
    ap.add_argument("--run", type=Path, default=Path("runs/sound_text_contrastive"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--heldout-fraction", type=float, default=0.25)
    ap.add_argument("--reuse", action="store_true", help="evaluate the adapter already in --run")
    args = ap.parse_args()
    timings = {}
    t = time.perf_counter()
    corpus = build_sound_corpus(args.data, heldout_fraction=args.heldout_fraction)
    timings["corpus_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    extract_sound_features(corpus.path, args.data / "features")
    timings["extract_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    adapter = args.run / "adapters" / "audio"
    if not args.reuse:
        adapter = train_sound_adapter(args.data / "features", args.run, steps=args.steps)
    timings["train_s"] = round(time.perf_counter() - t, 1)
    result = evaluate_sound_adapter(adapter, args.data / "features")
    out = {"split": {"seen_sounds": len(corpus.seen), "heldout_sounds": len(corpus.heldout),
                     "how": "held-out sounds (stable hash of the name) never occur in training; seen sounds are "
                            "trained on clean + mildly perturbed copies and tested on other, stronger copies"},
           "steps": args.steps, "timings": timings, **result}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
