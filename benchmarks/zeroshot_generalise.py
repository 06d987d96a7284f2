"""Does zero-shot generalise beyond the training sentences? IMU (BasicMotions) and images (Fashion-MNIST).

For each data set and each training condition (`CONDITIONS`: caption diversity off / synonyms / synonyms + LLM
rewrites unfiltered / filtered by the anchor-space filter, InfoNCE or SoftInfoNCE, and for IMU the UniMTS raw-window
augmentations, each alone and together, on top of the recipe's own crop/shift/scale/jitter), three
adapters are trained in this process: one on all classes (closed-set zero-shot accuracy on the held-out test split,
and accuracy with other phrasings of the class names, `configs/data/*_phrasings.yaml`, as a ratio to the closed
set), and one on a subset of the classes (generalised zero-shot: seen / unseen mean per-class accuracy and their
harmonic mean, plus unseen items among unseen classes only). Ratios are against the plain condition (no caption
diversity, InfoNCE) measured in the same run.

Calibrated stacking (Chao et al. 2016) against the bias to seen classes: a third adapter is trained on the seen
classes minus `validation_unseen` (pseudo-unseen classes taken from the seen ones), gamma is tuned for the best H on
validation items (images: a 20% hash split of the training fold, never trained on; IMU: the training windows, as
BasicMotions has no other), and the subset adapter is then evaluated at that gamma. The real unseen classes and the
test split play no part in choosing it. AUSUC (area under the seen-unseen curve) needs no gamma at all.

    export ANYALIGN_ASSETS=~/.cache/anyalign-assets  # BasicMotions, MiniLM, EfficientNet-Lite0, Fashion-MNIST
    python benchmarks/zeroshot_generalise.py [--only imu|image] [--imu-steps 300] [--image-steps 300] [--json out.json]

Fashion-MNIST features come first from `anyalign extract` (see configs/image_text_contrastive.yaml).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anyalign.align import load_recipe  # noqa: E402
from anyalign.align.data import Collator  # noqa: E402
from anyalign.align.trainer import Trainer  # noqa: E402
from anyalign.zeroshot.protocols import phrasing_protocol, read_phrasings, top1, tune_calibration, unseen_protocol  # noqa: E402

IMU_SYNONYMS = ("{Badminton: [hitting a shuttlecock, swinging a racket], Running: [jogging, sprinting], "
                "Standing: [standing upright, not moving], Walking: [strolling, taking a walk]}")
IMU_PARAPHRASES = ROOT / "configs/data/imu_text_contrastive.paraphrases.json"
IMU_CAPTIONS = "{synonyms: " + IMU_SYNONYMS + ", paraphrases: " + str(IMU_PARAPHRASES) + "}"
DATASETS = {
    "imu": {"recipe": ROOT / "configs/imu_text_contrastive.yaml",
            "phrasings": ROOT / "configs/data/basicmotions_phrasings.yaml",
            "captions": IMU_CAPTIONS, "seen": ["Badminton", "Running", "Standing"], "modality": "imu",
            "validation_unseen": ["Running"], "validation_holdout": None},
    "image": {"recipe": ROOT / "configs/image_text_contrastive.yaml",
              "phrasings": ROOT / "configs/data/fashion_mnist_phrasings.yaml", "captions": None, "seen": None,
              "modality": "image", "validation_unseen": ["Pullover", "Sneaker"], "validation_holdout": 0.2},
}
#: the recipe's own window augmentation (configs/imu_text_contrastive.yaml); UniMTS's are added on top of it
IMU_AUGMENT = {"crop": 0.8, "shift": 0.1, "scale": 0.1, "jitter": 0.05}
UNIMTS = {"rotate": 180.0, "scale_all": 0.2, "time_warp": 0.2}


@dataclass(frozen=True)
class Condition:
    """One training condition: `captions` off / "synonyms" (IMU) / "unfiltered" (every LLM rewrite) / True (the
    recipe's caption diversity, filtered rewrites), the loss, and IMU augmentations added to the recipe's."""

    captions: bool | str = False
    loss: str = "infonce"
    augment: tuple[str, ...] = ()
    imu_only: bool = False


CONDITIONS = {"plain": Condition(), "captions": Condition(True), "soft": Condition(loss="soft"),
              "captions+soft": Condition(True, "soft"),
              "synonyms": Condition("synonyms", imu_only=True),
              "unfiltered": Condition("unfiltered", imu_only=True),
              "rotate": Condition(augment=("rotate",), imu_only=True),
              "scale_all": Condition(augment=("scale_all",), imu_only=True),
              "time_warp": Condition(augment=("time_warp",), imu_only=True),
              "unimts": Condition(augment=tuple(UNIMTS), imu_only=True),
              "captions+unimts": Condition(True, augment=tuple(UNIMTS), imu_only=True)}
IMU_DEFAULT = ["plain", "synonyms", "unfiltered", "captions", "rotate", "scale_all", "time_warp", "unimts",
               "captions+unimts"]


def _unfiltered_file(out: Path) -> Path:
    """The IMU paraphrase file with every rewrite the LLM wrote kept (the filter's dropped ones put back)."""
    from anyalign.datasets.paraphrase import read_paraphrase_file

    doc = read_paraphrase_file(IMU_PARAPHRASES)
    for e in doc["entries"].values():
        e["kept"] = [*e["kept"], *(d["text"] for d in e.get("dropped", []))]
        e["dropped"] = []
    path = out / "imu-unfiltered.paraphrases.json"
    path.write_text(json.dumps(doc))
    return path


@torch.no_grad()
def _test_embeddings(trainer: Trainer, modality: str) -> tuple[torch.Tensor, list[int], list[str], list[str]]:
    """Shared-space embeddings of the first eval source, its label ids, class names and `{}` templates."""
    model = trainer.unwrapped.eval()
    ds = trainer.data.eval_sets[0]
    loader = DataLoader(ds, batch_size=64, collate_fn=Collator(trainer.data.collate_fns, ds.labels))
    embs, ys = [], []
    for batch in loader:
        batch = batch.to(model.device)
        embs.append(model.embed(modality, model.features(modality, batch.media[modality]))[0].float().cpu())
        ys += batch.labels.tolist()
    pool = ds.caption_pool(0)
    templates = [t.replace("{label}", "{}").replace("{caption}", "{}") for t in pool.templates]
    return F.normalize(torch.cat(embs), dim=-1), ys, list(ds.labels), templates


def _run(name: str, cfg: dict, condition: str, subset: bool, steps: int, out: Path, extra: list[str],
         *, validation: bool = False, calibration: float = 0.0) -> dict:
    """Train one adapter and evaluate it. `validation`: train on the seen classes minus the pseudo-unseen ones and
    evaluate on validation items of the seen classes (to tune gamma); `calibration`: gamma for the subset adapter."""
    cond = CONDITIONS[condition]
    diversity = cond.captions
    overrides = [f"train.max_steps={steps}", "eval.at_start=false", "eval.every=0", "train.tensorboard=false",
                 "train.save_every=100000", f"anchors.text.loss={cond.loss}"]
    if diversity == "synonyms":
        overrides.append("data.train.0.captions={synonyms: " + IMU_SYNONYMS + "}")
    elif diversity == "unfiltered":
        overrides.append("data.train.0.captions={synonyms: " + IMU_SYNONYMS + ", paraphrases: "
                         + str(_unfiltered_file(out)) + "}")
    elif cfg["captions"] is not None:
        overrides.append(f"data.train.0.captions={cfg['captions'] if diversity else 'null'}")
    elif not diversity:
        overrides.append("data.train.0.captions=null")
    if cond.augment:
        aug = {**IMU_AUGMENT, **{k: UNIMTS[k] for k in cond.augment}}
        overrides.append("data.train.0.augment=" + json.dumps(aug))
    if validation:
        train_src = load_recipe(cfg["recipe"]).data.train[0]
        seen_all = list(cfg["seen"] if cfg["seen"] is not None else train_src.classes)
        keep = [c for c in seen_all if c not in cfg["validation_unseen"]]
        overrides.append("data.train.0.classes=" + json.dumps(keep))
        overrides += [f"data.eval.0.path={train_src.path}", "data.eval.0.classes=" + json.dumps(seen_all)]
        if train_src.kind == "uea":
            overrides.append("data.eval.0.split=train")
        if cfg["validation_holdout"]:
            h = cfg["validation_holdout"]
            overrides += [f"data.train.0.holdout={h}", f"data.eval.0.holdout={h}", "data.eval.0.split=eval"]
    elif cfg["seen"] is not None:
        overrides.append("data.train.0.classes=" + json.dumps(cfg["seen"]) if subset else "data.train.0.classes=null")
    elif not subset:
        overrides.append("data.train.0.classes=null")
    recipe = load_recipe(cfg["recipe"], overrides + (extra if diversity else []))
    t0 = time.perf_counter()
    part = "validation" if validation else "subset" if subset else "all"
    trainer = Trainer(recipe, output_dir=out / f"{name}-{condition}-{part}")
    trainer.fit()
    train_s = time.perf_counter() - t0
    seen = sorted(trainer.data.train_set.labels)
    pool_phrases = {p for si in range(len(recipe.data.train)) for lab in seen
                    for p in trainer.data.train_set.caption_pool(si).phrases(lab)}
    emb, ys, classes, templates = _test_embeddings(trainer, cfg["modality"])
    model = trainer.unwrapped
    phrasings = {} if validation else read_phrasings(cfg["phrasings"], classes)  # validation: seen classes only
    training_phrases = {p for ps in phrasings.get("training", {}).values() for p in ps}
    overlap = sorted({p for k, s in phrasings.items() if k != "training" for ps in s.values() for p in ps}
                     & (pool_phrases - training_phrases))
    if overlap and diversity != "unfiltered":  # the unfiltered rewrites are measured with their leaks, reported
        raise SystemExit(f"{cfg['phrasings']}: evaluation phrases {overlap} are also training phrases")

    def embed_text(texts: list[str]) -> torch.Tensor:
        return model.anchor_texts("text", texts).cpu()

    prompts = trainer.data.eval_sets[0].class_prompts()
    cls = torch.stack([F.normalize(embed_text(ps).mean(0), dim=-1) for ps in prompts.values()])
    scores = emb @ cls.t()
    res = {"dataset": name, "condition": condition, "trained_on": seen, "train_s": round(train_s, 1),
           "n_test": len(ys), "chance": 1.0 / len(classes), "eval_phrases_in_training": overlap,
           "n_training_phrases": len(pool_phrases), "augment": dataclasses.asdict(recipe.data.train[0].augment)
           if recipe.data.train[0].augment else None}
    if validation:
        assert not set(trainer.data.train_set.labels) & set(cfg["validation_unseen"])  # pseudo-unseen never trained on
        res["calibration"] = tune_calibration(scores, ys, classes, seen)
        res["validation"] = unseen_protocol(scores, ys, classes, seen, calibration=res["calibration"])
        res["n_validation"] = len(ys)
    elif subset:
        res["unseen"] = unseen_protocol(scores, ys, classes, seen)
        res["unseen_calibrated"] = unseen_protocol(scores, ys, classes, seen, calibration=calibration)
    else:
        res["closed_set_top1"] = top1(scores, ys)
        res["phrasings"] = phrasing_protocol(emb, ys, classes, embed_text, templates, phrasings,
                                             res["closed_set_top1"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=list(DATASETS))
    ap.add_argument("--imu-steps", type=int, default=300)
    ap.add_argument("--image-steps", type=int, default=300)
    ap.add_argument("--conditions", help="comma-separated (default: IMU " + ",".join(IMU_DEFAULT) + "; image "
                    "plain,captions,soft,captions+soft)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-calibration", action="store_true", help="skip the validation adapter (gamma 0: the "
                    "calibrated columns repeat the uncalibrated ones; AUSUC needs no gamma); a third fewer trainings")
    ap.add_argument("--set", action="append", default=[], help="extra recipe override for the caption-diversity "
                    "conditions, e.g. data.train.0.captions.paraphrases=null (synonyms only)")
    args = ap.parse_args()
    if not os.environ.get("ANYALIGN_ASSETS"):
        raise SystemExit("set ANYALIGN_ASSETS to the real offline assets (../shared/fetch-assets)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))
    rows = []
    with tempfile.TemporaryDirectory(prefix="zs-generalise-") as tmp:
        for name, cfg in DATASETS.items():
            if args.only and name != args.only:
                continue
            steps = args.imu_steps if name == "imu" else args.image_steps
            conds = args.conditions.split(",") if args.conditions else \
                IMU_DEFAULT if name == "imu" else ["plain", "captions", "soft", "captions+soft"]
            unknown = [c for c in conds if c not in CONDITIONS]
            if unknown:
                raise SystemExit(f"--conditions: unknown {unknown} (known: {', '.join(CONDITIONS)})")
            for cond in conds:
                if CONDITIONS[cond].imu_only and name != "imu":
                    continue
                full = _run(name, cfg, cond, False, steps, Path(tmp), args.set)
                val = _run(name, cfg, cond, True, steps, Path(tmp), args.set, validation=True) \
                    if not args.no_calibration else {"calibration": 0.0, "validation": None, "n_validation": 0,
                                                     "train_s": 0.0}
                sub = _run(name, cfg, cond, True, steps, Path(tmp), args.set, calibration=val["calibration"])
                row = {**full, "unseen": sub["unseen"], "unseen_calibrated": sub["unseen_calibrated"],
                       "trained_on_subset": sub["trained_on"], "calibration": val["calibration"],
                       "validation": val["validation"], "n_validation": val["n_validation"],
                       "train_s": full["train_s"] + sub["train_s"] + val["train_s"]}
                rows.append(row)
                if args.json:  # every row as soon as it exists: a long run keeps what it measured
                    args.json.write_text(json.dumps(rows, indent=2))
                print(json.dumps({k: row[k] for k in ("dataset", "condition", "closed_set_top1")}
                                 | {"paraphrase_ratio": row["phrasings"]["mean_ratio"],
                                    "unseen": row["unseen"]["unseen_accuracy"], "H": row["unseen"]["harmonic_mean"],
                                    "gamma": row["calibration"], "H_cal": row["unseen_calibrated"]["harmonic_mean"],
                                    "ausuc": row["unseen"]["ausuc"]}),
                      flush=True)
    print(f"\n{'dataset':<6} {'condition':<14} {'closed':>7} {'paraphr':>7} {'ratio':>6} {'seen':>6} {'unseen':>6} "
          f"{'H':>6} {'u-only':>6} {'AUSUC':>6} {'gamma':>6} {'seen-c':>6} {'unse-c':>6} {'H-c':>6} {'chance':>14} "
          f"{'vs plain (closed/ratio/H)':>26} {'N':>4} {'leaks':>5}  train s")
    base = {r["dataset"]: r for r in rows if r["condition"] == "plain"}
    for r in rows:
        p, u, b, c = r["phrasings"], r["unseen"], base.get(r["dataset"]), r["unseen_calibrated"]

        def rel(a: float | None, c: float | None) -> str:
            return f"{a / c:.2f}" if a is not None and c else "n/a"

        vs = "" if b is None else (f"{rel(r['closed_set_top1'], b['closed_set_top1'])}/"
                                   f"{rel(p['mean_ratio'], b['phrasings']['mean_ratio'])}/"
                                   f"{rel(u['harmonic_mean'], b['unseen']['harmonic_mean'])}")
        print(f"{r['dataset']:<6} {r['condition']:<14} {r['closed_set_top1']:7.3f} {p['mean_top1']:7.3f} "
              f"{p['mean_ratio']:6.3f} {u['seen_accuracy']:6.3f} {u['unseen_accuracy']:6.3f} "
              f"{u['harmonic_mean']:6.3f} "
              f"{u['unseen_only_top1']:6.3f} {u['ausuc']:6.3f} {r['calibration']:6.3f} {c['seen_accuracy']:6.3f} "
              f"{c['unseen_accuracy']:6.3f} {c['harmonic_mean']:6.3f} "
              f"{r['chance']:.3f}/{u['chance_unseen_only']:.3f}u {vs:>26} {r['n_test']:4d} "
              f"{len(r['eval_phrases_in_training']):5d}  {r['train_s']:.0f}")
    print("\nclosed: top-1 on the test split with the training phrasing; paraphr/ratio: mean top-1 over the other "
          "phrasing sets and its ratio to closed; seen/unseen: mean per-class accuracy among all classes of the "
          "adapter trained on the subset; H: their harmonic mean; u-only: unseen items among unseen classes only; "
          "AUSUC: area under the seen-unseen curve (no gamma needed); gamma: calibration tuned on the validation "
          "adapter (pseudo-unseen classes: " + "; ".join(f"{k}: {', '.join(v['validation_unseen'])}"
                                                        for k, v in DATASETS.items()) + "); seen-c/unse-c/H-c: the "
          "subset adapter at that gamma. N: test items (all classes); leaks: evaluation phrases that are also "
          "training phrases (only the unfiltered condition may have any). "
          "Unseen classes: " + "; ".join(f"{r['dataset']}: {', '.join(r['unseen']['unseen_classes'])}"
                                         for r in rows if r["condition"] == "plain"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
