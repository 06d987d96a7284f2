"""Calibration as part of the adapter, measured on Fashion-MNIST photos and BasicMotions IMU windows.

Images (8 seen classes, Sandal and Shirt never seen): one run of the quickstart's image recipe (frozen
EfficientNet-Lite0 -> MLP head -> MiniLM space, anyalign/demos/images.py) at a chosen size: a class-balanced
subset of Fashion-MNIST's train fold (seen classes only; a quarter set
aside by a hash of the key as validation data) and of its test fold (all ten classes). After training, `train()`
tunes gamma on the validation photos by pseudo-unseen rotations over the seen classes (every seen class held out in
turn, `--folds` rotations) and records it in the adapter. Printed, all on the test photos with chance levels and N:
closed set (seen photos among the seen classes), new wordings (two phrasing sets, all ten classes), unseen classes
(seen / unseen mean per-class accuracy among all ten and H) without calibration, at the recorded gamma, and at the
gamma that is best on the test photos themselves (an upper bound, not a result), plus AUSUC.

IMU (configs/imu_text_contrastive.yaml; Badminton, Running, Standing seen, Walking never seen): BasicMotions' 40
training windows written as .npy + jsonl, a quarter set aside by a hash of the key as validation data (the archive has
no users to hold out), the adapter trained on the rest of the seen classes' windows, gamma tuned on the validation
windows by rotating each seen class out in turn; the same numbers on the 40 test windows, new wordings from
configs/data/basicmotions_phrasings.yaml.

    python benchmarks/zeroshot_calibration.py [--only image|imu] [--train-per-class 100] [--test-per-class 50]
        [--steps 300] [--imu-steps 300] [--folds 8] [--json out.json]
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

IMU_SEEN = ["Badminton", "Running", "Standing"]


def imu_run(steps: int, folds: int | None, seed: int, work: Path) -> dict:
    """The IMU recipe on the seen activities with a validation quarter of the training windows; test-split numbers."""
    import numpy as np
    import torch
    import yaml

    from anyalign.align import load_recipe, train
    from anyalign.datasets import load_uea
    from anyalign.zeroshot import ZeroShotClassifier
    from anyalign.zeroshot.protocols import phrasing_protocol, read_phrasings, top1, unseen_protocol

    bm = assets_root() / "imu" / "BasicMotions"
    tr, te = load_uea(bm, "train"), load_uea(bm, "test")
    rows = []
    for i, (x, label) in enumerate(zip(tr.x, tr.labels)):
        np.save(work / f"train-{i:02d}.npy", x)
        rows.append(json.dumps({"imu": f"train-{i:02d}.npy", "label": label, "key": f"train-{i:02d}"}))
    (work / "train.jsonl").write_text("\n".join(rows) + "\n")
    cfg = yaml.safe_load((ROOT / "configs" / "imu_text_contrastive.yaml").read_text())
    src = dict(cfg["data"]["train"][0], kind="jsonl", path=str(work / "train.jsonl"), classes=IMU_SEEN, holdout=0.25)
    src.pop("split", None)
    cfg["data"] = {"train": [dict(src, split="train")],
                   "validation": [{k: v for k, v in src.items() if k != "augment"} | {"split": "eval"}]}
    cfg["train"].update(max_steps=steps, save_every=steps, tensorboard=False)
    cfg["eval"] = {"every": 0, "at_start": False, "calibration_folds": folds}
    cfg["seed"] = seed
    (work / "recipe.yaml").write_text(yaml.safe_dump(cfg))
    adapter = Path(train(load_recipe(work / "recipe.yaml"), output_dir=work / "run").adapters["imu"])
    templates = [t.replace("{label}", "{}") for t in src["caption_templates"]]
    clf = ZeroShotClassifier.from_adapter(adapter, te.classes, templates, use_cache=False)  # label_text: recorded
    emb = torch.as_tensor(clf.embed(list(te.x), progress=False).embeddings).float()
    raw, y = clf.raw_scores(emb), list(te.targets)
    gamma = clf.calibration
    on_seen = np.isin(y, [te.classes.index(c) for c in IMU_SEEN])
    seen_ids = [te.classes.index(c) for c in IMU_SEEN]
    closed = top1(raw[torch.from_numpy(on_seen)][:, seen_ids], np.searchsorted(seen_ids, np.asarray(y)[on_seen]))
    phrasings = read_phrasings(ROOT / "configs" / "data" / "basicmotions_phrasings.yaml", te.classes)
    nw = phrasing_protocol(emb, y, te.classes, lambda t: torch.from_numpy(clf.text.embed(t)), templates,
                           {k: v for k, v in phrasings.items() if k != "training"}, top1(clf.scores(emb), y),
                           offsets=clf.offsets())
    return {"n_test": len(y), "closed_set_top1": closed, "chance_closed_set": 1 / len(IMU_SEEN),
            "n_closed": int(on_seen.sum()), "new_wordings": nw, "chance": 1 / len(te.classes),
            "unseen_protocol_uncalibrated": unseen_protocol(raw, y, te.classes, IMU_SEEN),
            "unseen_protocol": unseen_protocol(raw, y, te.classes, IMU_SEEN, calibration=gamma),
            "calibration_source": clf.calibration_source}


def report(name: str, n: dict, seen: list[str]) -> dict:
    """Print and return the summary row of one data set."""
    u, u0, nw = n["unseen_protocol"], n["unseen_protocol_uncalibrated"], n["new_wordings"]
    src = n.get("calibration_source") or u.get("calibration_source")
    row = {"dataset": name, "n_test": n["n_test"], "closed_set_top1": n["closed_set_top1"],
           "chance_closed_set": n["chance_closed_set"],
           "new_wordings": {k: v["top1"] for k, v in nw["sets"].items()}, "new_wordings_mean": nw["mean_top1"],
           "chance": n["chance"],
           "unseen_uncalibrated": {k: u0[k] for k in ("seen_accuracy", "unseen_accuracy", "harmonic_mean")},
           "unseen_calibrated": {k: u[k] for k in ("seen_accuracy", "unseen_accuracy", "harmonic_mean",
                                                   "calibration")},
           "unseen_only_top1": u["unseen_only_top1"], "chance_unseen_only": u["chance_unseen_only"],
           "ausuc": u["ausuc"], "oracle_test_bound": u["oracle"], "calibration_source": src}
    print(f"== {name}: closed set (seen items among the {len(seen)} seen classes, per item) "
          f"{row['closed_set_top1']:.3f} (chance {row['chance_closed_set']:.3f})")
    print("   new wordings (all classes, per item, calibrated): " + ", ".join(
        f"{k} {v:.3f}" for k, v in row["new_wordings"].items()) + f" (chance {n['chance']:.3f}, N {n['n_test']})")
    print(f"   unseen classes {', '.join(u['unseen_classes'])} (mean per-class accuracy among all classes, chance "
          f"{u['chance_all']:.3f}, N {n['n_test']}):")
    for label, g in (("uncalibrated", u0), (f"gamma {u['calibration']:.4f} (rotation-tuned on validation)", u),
                     (f"gamma {u['oracle']['calibration']:.4f} (best on the test items: a bound)", u["oracle"])):
        print(f"     {label:<48} seen {g['seen_accuracy']:.3f}  unseen {g['unseen_accuracy']:.3f}  "
              f"H {g['harmonic_mean']:.3f}")
    print(f"     AUSUC {u['ausuc']:.3f}; unseen items among the unseen classes only {u['unseen_only_top1']:.3f} "
          f"(chance {u['chance_unseen_only']:.3f})")
    if src:
        print(f"     gamma tuned on {src['tuned_on']}; rotations {src['rotations']}; mean validation H "
              f"{src['mean_harmonic_mean']:.3f} (uncalibrated {src['mean_harmonic_mean_uncalibrated']:.3f})")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=50)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--folds", type=int, default=None, help="pseudo-unseen rotations (default: one per seen class)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["image", "imu"])
    ap.add_argument("--imu-steps", type=int, default=300)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = assets_root()
    rows = []
    with tempfile.TemporaryDirectory(prefix="zs-calibration-") as tmp:
        if args.only in (None, "imu"):
            t0 = time.perf_counter()
            n = imu_run(args.imu_steps, args.folds, args.seed, Path(tmp))
            rows.append(report("imu", n, IMU_SEEN) | {"steps": args.imu_steps,
                                                      "seconds": round(time.perf_counter() - t0, 1)})
        if args.only in (None, "image"):
            t0 = time.perf_counter()
            split = build_image_split(root, train_per_class=args.train_per_class,
                                      test_per_class=args.test_per_class, seed=args.seed)
            feats = extract_image_features(split, Path(tmp) / "features", root=root)
            adapter = train_image_adapter(feats, Path(tmp) / "image", seen=split.seen, steps=args.steps,
                                          seed=args.seed, root=root, calibration_folds=args.folds)
            n = evaluate_image_adapter(adapter, feats["test"], seen=split.seen, root=root)
            print(f"images: {split.describe()}; {args.steps} steps")
            rows.append(report("image", n, split.seen) | {"steps": args.steps, "split": split.describe(),
                                                          "seconds": round(time.perf_counter() - t0, 1)})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
