"""Calibration as part of the adapter, measured: Fashion-MNIST photos, 8 seen classes, Sandal and Shirt never seen.

One run of the quickstart's image recipe (frozen EfficientNet-Lite0 -> MLP head -> MiniLM space, anyalign/demos/
images.py) at a chosen size: a class-balanced subset of Fashion-MNIST's train fold (seen classes only; a quarter set
aside by a hash of the key as validation data) and of its test fold (all ten classes). After training, `train()`
tunes gamma on the validation photos by pseudo-unseen rotations over the seen classes (every seen class held out in
turn, `--folds` rotations) and records it in the adapter. Printed, all on the test photos with chance levels and N:
closed set (seen photos among the seen classes), new wordings (two phrasing sets, all ten classes), unseen classes
(seen / unseen mean per-class accuracy among all ten and H) without calibration, at the recorded gamma, and at the
gamma that is best on the test photos themselves (an upper bound, not a result), plus AUSUC.

    python benchmarks/zeroshot_calibration.py [--train-per-class 100] [--test-per-class 50] [--steps 300]
        [--folds 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anyalign.assets import assets_root  # noqa: E402
from anyalign.demos.images import (  # noqa: E402
    build_image_split,
    evaluate_image_adapter,
    extract_image_features,
    train_image_adapter,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=50)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--folds", type=int, default=None, help="pseudo-unseen rotations (default: one per seen class)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = assets_root()
    t0 = time.perf_counter()
    split = build_image_split(root, train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                              seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="zs-calibration-") as tmp:
        feats = extract_image_features(split, Path(tmp) / "features", root=root)
        t1 = time.perf_counter()
        adapter = train_image_adapter(feats, Path(tmp) / "run", seen=split.seen, steps=args.steps, seed=args.seed,
                                      root=root, calibration_folds=args.folds)
        t2 = time.perf_counter()
        n = evaluate_image_adapter(adapter, feats["test"], seen=split.seen, root=root)
    u, u0, nw = n["unseen_protocol"], n["unseen_protocol_uncalibrated"], n["new_wordings"]
    src = u["calibration_source"]
    row = {"split": split.describe(), "steps": args.steps, "n_test": n["n_test"],
           "closed_set_top1": n["closed_set_top1"], "chance_closed_set": n["chance_closed_set"],
           "new_wordings": {k: v["top1"] for k, v in nw["sets"].items()}, "new_wordings_mean": nw["mean_top1"],
           "chance": n["chance"], "all_classes_top1_calibrated": n["all_classes_top1"],
           "unseen_uncalibrated": {k: u0[k] for k in ("seen_accuracy", "unseen_accuracy", "harmonic_mean")},
           "unseen_calibrated": {k: u[k] for k in ("seen_accuracy", "unseen_accuracy", "harmonic_mean",
                                                   "calibration")},
           "unseen_only_top1": u["unseen_only_top1"], "chance_unseen_only": u["chance_unseen_only"],
           "ausuc": u["ausuc"], "oracle_test_bound": u["oracle"], "calibration_source": src,
           "extract_s": round(t1 - t0, 1), "train_and_calibrate_s": round(t2 - t1, 1)}
    print(f"Fashion-MNIST, {split.describe()}; {args.steps} steps")
    print(f"closed set (seen photos among the {len(split.seen)} seen classes, per item): "
          f"{row['closed_set_top1']:.3f} (chance {row['chance_closed_set']:.3f}, N "
          f"{n['n_test'] * len(split.seen) // 10})")
    print("new wordings (all 10 classes, per item, calibrated): " + ", ".join(
        f"{k} {v:.3f}" for k, v in row["new_wordings"].items()) + f" (chance {n['chance']:.3f}, N {n['n_test']})")
    print(f"unseen classes {', '.join(u['unseen_classes'])} (mean per-class accuracy among all 10, chance "
          f"{u['chance_all']:.3f}, N {n['n_test']}):")
    for name, g in (("uncalibrated", u0), (f"gamma {u['calibration']:.4f} (rotation-tuned on validation)", u),
                    (f"gamma {u['oracle']['calibration']:.4f} (best on the test photos: a bound)", u["oracle"])):
        print(f"  {name:<48} seen {g['seen_accuracy']:.3f}  unseen {g['unseen_accuracy']:.3f}  "
              f"H {g['harmonic_mean']:.3f}")
    print(f"  AUSUC {u['ausuc']:.3f}; unseen photos among the unseen classes only {u['unseen_only_top1']:.3f} "
          f"(chance {u['chance_unseen_only']:.3f})")
    print(f"  gamma tuned on {src['tuned_on']}; rotations {src['rotations']}; mean validation H "
          f"{src['mean_harmonic_mean']:.3f} (uncalibrated {src['mean_harmonic_mean_uncalibrated']:.3f})")
    print(f"extract {row['extract_s']} s, train + {len(src['rotations'])} rotations {row['train_and_calibrate_s']} s")
    if args.json:
        args.json.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
