"""The quickstart's sound and image steps (the demos of `sounds.py` and `images.py` at the quickstart's size) and
their report sections."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


# --- sounds: the pretrained aisfx CNN -> the MiniLM space, trained on the real named sounds ---------------------
def sound_demo(paths: dict[str, Path], work: Path, *, fast: bool, steps: int) -> dict[str, Any]:
    """Train the aisfx sound adapter on perturbed copies of the named real sounds (a quarter of them held out by a
    stable hash of the name), measure both protocols with chance levels, and return the gallery to index."""
    from .sound_adapter import evaluate_sound_adapter, extract_sound_features, train_sound_adapter
    from .sounds import build_sound_corpus

    root = paths["minilm"].parents[1]
    sets = ("freedesktop", "animals") if fast else ("freedesktop", "sonic-pi", "animals")
    corpus = build_sound_corpus(work / "sounds", root=root, sets=sets, heldout_fraction=0.25,
                                train_variants=0 if fast else 1)
    feats = extract_sound_features(corpus.path, work / "sounds" / "features", root=root)
    adapter = train_sound_adapter(feats["train"].parent, work / "sound_text", steps=steps, root=root)
    numbers = evaluate_sound_adapter(adapter, feats["train"].parent, root=root)
    clean = [r for r in corpus.rows if r.get("variant") == 0 and r["fold"] in ("train", "heldout")]
    gallery = [{"audio": str(Path(r["audio"]) if Path(r["audio"]).is_absolute() else corpus.path / r["audio"]),
                "caption": r["text"], "sound": r["sound"], "heldout": r["fold"] == "heldout"} for r in clean]
    # sound -> text for a few held-out sounds: their captions ranked among every sound's caption
    from ..embedder import Embedder
    from ..encoders.spec import EncoderSpec

    captions = [g["caption"] for g in gallery]
    t = Embedder.from_encoder(EncoderSpec("text", str(paths["minilm"]))).embed(captions)
    picks = [g for g in gallery if g["heldout"]][:4]
    a = Embedder.from_adapter(adapter).embed([g["audio"] for g in picks])
    to_text = [{"sound": g["sound"], "audio": g["audio"], "truth": g["caption"],
                "rank": int((t @ a[i] > t[captions.index(g["caption"])] @ a[i]).sum()) + 1,
                "hits": [captions[j] for j in np.argsort(-(t @ a[i]))[:3]]} for i, g in enumerate(picks)]
    return {"adapter": adapter, "numbers": numbers, "gallery": gallery, "sets": list(sets), "sound_to_text": to_text,
            "seen": len(corpus.seen), "heldout": len(corpus.heldout), "steps": steps}


def sound_section(rep: Any, sd: dict[str, Any]) -> None:
    """Sound part of the report: both protocols with chance levels, the caption-only baseline, sound -> text."""
    seen, held = sd["numbers"]["seen"], sd["numbers"]["heldout"]
    rep.heading("Sounds: the pretrained aisfx CNN bound to the MiniLM space")
    rep.text(f"{sd['seen'] + sd['heldout']} real named sounds ({', '.join(sd['sets'])}); a caption per sound from its "
             f"name. {sd['heldout']} sounds (a stable hash of the name) never appear in training; the other "
             f"{sd['seen']} are trained on (with perturbed copies) and tested on differently perturbed copies. "
             f"{sd['steps']} steps.", muted=True)
    rows = []
    for name, res in (("seen sounds, new perturbations", seen), ("held-out sounds", held)):
        for d in ("text->sound", "sound->text"):
            r = res[d]
            rows.append([name, d, f"{r['R@1']:.2f}", f"{r['R@5']:.2f}", f"{r['chance_R@1']:.3f}", r["gallery"]])
        b = res["baseline_caption_only"]["text->sound (query caption vs file name)"]
        rows.append([name, "text->file name (no listening)", f"{b['R@1']:.2f}", f"{b['R@5']:.2f}",
                     f"{b['chance_R@1']:.3f}", b["gallery"]])
    rep.table(["protocol", "direction", "R@1", "R@5", "chance R@1", "gallery"], rows)
    cz = held.get("category_zeroshot")
    if cz:
        rep.text(f"category zero-shot on the held-out sounds: {cz['accuracy']:.0%} over {cz['categories']} "
                 f"categories (chance {cz['chance']:.0%}, largest class {cz['majority_class_rate']:.0%}; from the "
                 f"file name alone {cz['baseline_caption_only_accuracy']:.0%}). The file-name baseline is strong "
                 "because these captions were written from the names; on files named rec_0042.wav it is at chance, "
                 "while the adapter listens.", muted=True)
    rep.text("sound -> text: held-out sounds, their captions ranked among every sound's caption")
    rep.gallery([{"title": f"{x['sound']} (true caption rank {x['rank']})", "audio": x["audio"],
                  "lines": [f"truth: {x['truth']}", *[f"{j + 1}. {h}" for j, h in enumerate(x["hits"])]]}
                 for x in sd["sound_to_text"]])


# --- images: frozen EfficientNet-Lite0 -> the MiniLM space on Fashion-MNIST, two classes never seen ---------------
def image_demo(paths: dict[str, Path], work: Path, *, fast: bool, steps: int) -> dict[str, Any]:
    """Train the image adapter on a small class-balanced Fashion-MNIST subset of 8 classes (features extracted
    once), and measure it on held-out test photos of all 10: zero-shot, seen / unseen, phrasings, retrieval."""

    from .images import build_image_split, evaluate_image_adapter, extract_image_features, train_image_adapter

    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        seconds[name] = round(clock[-1] - clock[-2], 1)

    root = paths["minilm"].parents[1]
    split = build_image_split(root, train_per_class=8 if fast else 25, test_per_class=6 if fast else 15)
    lap("split")
    feats = extract_image_features(split, work / "images" / "features", root=root)
    lap("extract")
    adapter = train_image_adapter(feats, work / "image_text", seen=split.seen, steps=steps, root=root,
                                  calibration_folds=4 if fast else None)  # fast: 4 rotations of 2 seen classes
    lap("train")
    res = evaluate_image_adapter(adapter, feats["test"], seen=split.seen, root=root,
                                 k=split.settings["test_per_class"], thumbnails=work / "images" / "thumbs")
    lap("evaluate")
    u = res["unseen_protocol"]
    u.pop("curve", None)  # the seen-unseen curve's points (where the protocol gives them): too long for metrics.json
    numbers = {k: v for k, v in res.items() if k not in ("gallery", "image_to_text")}
    return {"adapter": str(adapter), "numbers": numbers, "gallery": res["gallery"],
            "image_to_text": res["image_to_text"], "split": split.describe(), "steps": steps,
            "n_train": split.settings["train_per_class"] * len(split.seen), "seconds": clock[-1] - clock[0],
            "phase_seconds": seconds}


def image_section(rep: Any, im: dict[str, Any]) -> None:
    """Image part of the report: the split, numbers with chance levels, text -> image and image -> text galleries."""
    n, u, u0, ph, t2i = im["numbers"], im["numbers"]["unseen_protocol"], \
        im["numbers"]["unseen_protocol_uncalibrated"], im["numbers"]["new_wordings"], im["numbers"]["text_to_image"]
    rep.heading("Images: EfficientNet-Lite0 bound to the MiniLM space (Fashion-MNIST, two classes never seen)")
    rep.text(f"Frozen EfficientNet-Lite0 (real ImageNet weights), pooled features extracted once, an MLP head trained "
             f"for {im['steps']} steps with InfoNCE against class captions (4 templates x the class name and its "
             f"synonyms). Split: {im['split']}. A quarter of the training photos is set aside as validation data: "
             f"the calibration gamma ({n['calibration']:.3f}) is tuned there by holding out seen classes in turn "
             f"(pseudo-unseen rotations), never on the test photos. Every number below is on the held-out test "
             f"photos ({n['n_test']}). The adapter never saw {', '.join(u['unseen_classes'])}; the frozen ImageNet "
             "backbone did see sandals (ImageNet has a sandal class).", muted=True)
    rep.metrics({"unseen classes: H (calibrated)": f"{u['harmonic_mean']:.2f}",
                 "unseen / seen (mean per class)": f"{u['unseen_accuracy']:.2f} / {u['seen_accuracy']:.2f}",
                 "new wordings (per item)": f"{ph['mean_top1']:.0%}", "chance (10 classes)": f"{n['chance']:.0%}",
                 "closed set (8 trained classes)": f"{n['closed_set_top1']:.0%}",
                 "chance (8 classes)": f"{n['chance_closed_set']:.1%}"})
    rows = [["closed set: seen classes' photos among the 8 seen classes (per item)", f"{n['closed_set_top1']:.2f}",
             f"{n['chance_closed_set']:.3f}"]]
    for name, g in ((f"calibrated, gamma {u['calibration']:.3f} tuned on the validation photos", u),
                    ("uncalibrated (gamma 0)", u0)):
        rows += [[f"unseen classes, {name}: seen classes, mean per-class accuracy among all 10",
                  f"{g['seen_accuracy']:.2f}", f"{g['chance_all']:.2f}"],
                 [f"unseen classes, {name}: unseen ({', '.join(g['unseen_classes'])}), mean per-class accuracy among "
                  "all 10", f"{g['unseen_accuracy']:.2f}", f"{g['chance_all']:.2f}"],
                 [f"unseen classes, {name}: harmonic mean H", f"{g['harmonic_mean']:.2f}", f"{g['chance_all']:.2f}"]]
    rows += [["unseen photos among the unseen classes only (per item)", f"{u['unseen_only_top1']:.2f}",
              f"{u['chance_unseen_only']:.2f}"],
             ["all 10 classes, calibrated (per item)", f"{n['all_classes_top1']:.2f}", f"{n['chance']:.2f}"]]
    if u.get("ausuc") is not None:
        rows.append(["area under the seen-unseen curve (AUSUC, needs no gamma)", f"{u['ausuc']:.3f}", "-"])
    rows += [[f"new wordings: {name}, all 10 classes, per item (ratio to the training wording {v['ratio']:.2f})",
              f"{v['top1']:.2f}", f"{ph['chance']:.2f}"] for name, v in ph["sets"].items()]
    rows.append([f"text -> image precision@{t2i['k']}, mean over the 10 class prompts (seen {t2i['mean_P@k_seen']:.2f}"
                 f", unseen {t2i['mean_P@k_unseen']:.2f})", f"{t2i['mean_P@k']:.2f}", f"{t2i['chance_P@k']:.2f}"])
    rep.table(["protocol", "accuracy", "chance"], rows)
    rep.text(f"Generalised zero-shot: uncalibrated, {u0['unseen_items_predicted_unseen']:.0%} of the unseen classes' "
             f"photos are given an unseen class at all when all 10 classes compete (calibrated: "
             f"{u['unseen_items_predicted_unseen']:.0%}), because the head only ever learnt to pull photos towards "
             "the 8 seen captions (the GZSL bias).", muted=True)
    rep.table(["class prompt", "seen in training", f"precision@{t2i['k']}", "chance"],
              [[c, "yes" if v["seen"] else "no", f"{v['P@k']:.2f}", f"{v['chance_P@k']:.2f}"]
               for c, v in t2i["per_class"].items()])
    for g in im["gallery"]:
        rep.text(f"text -> image: \"{g['query']}\" (right: {g['expected']}, "
                 f"{'seen' if g['expected_seen'] else 'never seen'} in training; precision {g['precision']:.0%}, "
                 f"chance {g['chance']:.0%})")
        rep.gallery([{"title": f"#{j + 1} {'correct' if h['correct'] else 'wrong'}  score {h['score']:.2f}",
                      "image": h["image"], "lines": [h["label"]]} for j, h in enumerate(g["hits"])])
    rep.text("image -> text: held-out photos, the nearest of the 10 class captions (\"a photo of a ...\" and the "
             "other templates, averaged per class; seen classes' scores lowered by the calibration gamma)")
    rep.gallery([{"title": f"{x['label']} ({'seen' if x['seen'] else 'never seen'}; true caption rank {x['rank']})",
                  "image": x["image"], "lines": [f"{j + 1}. {h['caption']} {h['score']:.2f} "
                                                 f"({'correct' if h['correct'] else 'wrong'})"
                                                 for j, h in enumerate(x["hits"])]}
                 for x in im["image_to_text"]])
