"""The quickstart's IMU steps (zero-shot, retrieval, LLM) and its report, each a thin use of the public API; the
sound and image steps are in `quickstart_media.py`, the speech step in `quickstart_speech.py`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RECIPES_DIR, load_yaml
from .quickstart_media import image_section, sound_section
from .quickstart_speech import speech_section

_IMU = load_yaml(RECIPES_DIR / "imu_text_contrastive.yaml")["data"]["train"][0]  # the shipped IMU recipe's captions
ACTIVITY_TEXT: dict[str, str] = _IMU["label_text"]
TEMPLATES: list[str] = _IMU["caption_templates"]
#: new wordings of the activities, never a training caption (`training` there is the recipe's own label_text)
ACTIVITY_WORDINGS = {n: s for n, s in load_yaml(RECIPES_DIR / "data" / "basicmotions_phrasings.yaml").items()
                     if n != "training"}


def zero_shot(adapter_dir: Path, paths: dict[str, Path], work: Path) -> dict[str, Any]:
    """The IMU adapter on the BasicMotions test windows: closed-set accuracy (the four trained activities, the trained
    phrases and templates), accuracy with new wordings of the activities (never trained), a confusion matrix PNG
    and a linear probe."""
    import torch

    from ..datasets import load_uea
    from ..zeroshot import ZeroShotClassifier, classification_metrics, linear_probe, plot_confusion
    from ..zeroshot.protocols import phrasing_protocol

    train, test = load_uea(paths["basicmotions"], "train"), load_uea(paths["basicmotions"], "test")
    phrases = [ACTIVITY_TEXT[c] for c in test.classes]
    templates = [t.replace("{label}", "{}") for t in TEMPLATES]
    clf = ZeroShotClassifier.from_adapter(adapter_dir, phrases, templates)
    emb_test = clf.embed(list(test.x), progress=False).embeddings
    emb_train = clf.embed(list(train.x), progress=False).embeddings
    m = classification_metrics(clf.scores(emb_test).numpy(), test.targets, test.classes)
    png = plot_confusion(m["confusion_matrix"], test.classes, work / "confusion.png",
                         title="BasicMotions closed set (IMU adapter vs the trained class captions)")
    wordings = phrasing_protocol(emb_test, test.targets, test.classes,
                                 lambda texts: torch.from_numpy(clf.text.embed(texts)), templates,
                                 {n: {c: [p] for c, p in s.items()} for n, s in ACTIVITY_WORDINGS.items()}, m["top1"])
    emb = np.concatenate([emb_train.numpy(), emb_test.numpy()])
    folds = ["train"] * len(train) + ["test"] * len(test)
    probe = linear_probe(emb, np.concatenate([train.targets, test.targets]), folds, test_folds=["test"])
    return {"accuracy": m["top1"], "chance": m["chance"], "probe": probe["accuracy"], "metrics": m,
            "confusion_png": png, "n": len(test), "new_wordings": wordings}


def _plot_imu(x: np.ndarray, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 1.9), dpi=80)
    for ch, name in zip(x, ["ax", "ay", "az", "gx", "gy", "gz"]):
        ax.plot(ch, lw=0.8, label=name)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _video_frames(videos: Path, out: Path, per_video: int = 2) -> list[Path]:
    """Save `per_video` evenly spaced frames of each video as JPEG (PyAV)."""
    import av

    frames: list[Path] = []
    for video in sorted(videos.glob("*.mp4")):
        with av.open(str(video)) as box:
            decoded = [f.to_image() for f in box.decode(video=0)]
        for j, i in enumerate(np.linspace(0, len(decoded) - 1, per_video + 2)[1:-1].astype(int)):
            path = out / f"{video.stem}-frame{j}.jpg"
            decoded[i].convert("RGB").save(path, quality=90)
            frames.append(path)
    return frames


def retrieval_demo(adapter_dir: Path, paths: dict[str, Path], work: Path, texts: list[str],
                   queries: list[tuple[str, str, str]], sounds: dict[str, Any]) -> dict[str, Any]:
    """Embed a real multimodal corpus into the MiniLM space, index it with FAISS, run cross-modal queries
    (sounds through the aisfx adapter of `sound_demo`)."""
    from sklearn.datasets import load_sample_images

    from ..datasets import load_uea
    from ..embedder import Embedder
    from ..encoders.spec import EncoderSpec
    from ..retrieval import Retriever, build_index, embed_to_folder

    corpus = work / "corpus"
    for sub in ("image", "imu", "text", "audio"):
        shutil.rmtree(corpus / sub, ignore_errors=True)
        (corpus / sub).mkdir(parents=True)
    for src in load_sample_images().filenames:
        shutil.copy(src, corpus / "image" / Path(src).name)
    _video_frames(paths["videos"], corpus / "image")
    test = load_uea(paths["basicmotions"], "test")
    for i, (x, label) in enumerate(zip(test.x, test.labels)):
        np.save(corpus / "imu" / f"{label.lower()}-{i:02d}.npy", x)
    (corpus / "text" / "texts.jsonl").write_text("".join(json.dumps({"text": t, "caption": t}) + "\n" for t in texts))
    (corpus / "audio" / "sounds.jsonl").write_text("".join(  # indexed by their sound (aisfx adapter), not by name
        json.dumps({"audio": g["audio"], "caption": g["caption"], "sound": g["sound"]}) + "\n"
        for g in sounds["gallery"]))

    minilm = str(paths["minilm"])
    text = Embedder.from_encoder(EncoderSpec("text", minilm))
    imu = Embedder.from_adapter(adapter_dir)  # records the MiniLM space it was aligned to
    image = Embedder.from_encoder(EncoderSpec("label-bridge", str(paths["efficientnet-lite0"]),
                                              {"text_pretrained": minilm}))
    sound = Embedder.from_adapter(sounds["adapter"])
    folders = []
    for name, emb, inputs in [("image", image, [corpus / "image"]), ("imu", imu, [corpus / "imu"]),
                              ("text", text, [corpus / "text" / "texts.jsonl"]),
                              ("audio", sound, [corpus / "audio" / "sounds.jsonl"])]:
        folders.append(work / "embeddings" / name)
        embed_to_folder(inputs, folders[-1], emb)
    index_dir = work / "index"
    config = build_index(folders, index_dir, factory="auto")
    retriever = Retriever(index_dir, embedders={"text": text, "imu": imu, "image": image, "audio": sound})

    def search(query: Any, want: str, k: int = 4) -> list[dict[str, Any]]:
        hits = [r.to_dict() for r in retriever.search(query, k=len(retriever))]
        return [h for h in hits if _kind(h) == want][:k]

    results = [{"from": q_mod, "to": want, "query": q, "hits": search(q, want)} for q_mod, want, q in queries]
    for i in (0, 10, 20, 30):  # IMU -> text: one window of each activity
        window = corpus / "imu" / f"{test.labels[i].lower()}-{i:02d}.npy"
        results.append({"from": "imu", "to": "text", "query": f"IMU window ({test.labels[i]})", "query_file": window,
                        "hits": search(window, "text", k=3)})
    imu_to_text_ok = sum(str(r["hits"][0].get("caption")).rstrip(".").endswith(_activity(r["query"]))
                         for r in results if r["from"] == "imu" and r["hits"])
    summary = {"corpus_size": len(retriever), "index": config.factory,
               "imu_to_text_top1_correct": f"{imu_to_text_ok}/4"}
    return {"results": results, "summary": summary, "work": corpus}


def _kind(hit: dict[str, Any]) -> str:
    """The modality of a hit (its embedder's)."""
    return str(hit.get("modality", ""))


def _activity(query: str) -> str:

    label = query[query.index("(") + 1 : query.index(")")]
    return ACTIVITY_TEXT[label]


def llm_exchange(adapter_dir: Path, paths: dict[str, Path], gguf_file: str) -> list[dict[str, str]]:
    """Ask SmolLM2 about one held-out window of each activity through the aligned IMU adapter."""
    from ..datasets import load_uea
    from ..llm import MultimodalLM

    test = load_uea(paths["basicmotions"], "test")
    mlm = MultimodalLM.from_pretrained(paths["smollm2"], {"imu": adapter_dir}, gguf_file=gguf_file)
    prompt = "<imu>\nWhat is the person doing?"
    picks = [test.labels.index(c) for c in test.classes]
    answers = mlm.generate([prompt] * len(picks), inputs={"imu": [test.x[i] for i in picks]}, max_new_tokens=16,
                           do_sample=False)
    return [{"truth": test.labels[i], "prompt": prompt, "answer": a.strip()} for i, a in zip(picks, answers)]


def write_report(folder: Path, stage1: Any, zs: dict[str, Any], retrieval: dict[str, Any],
                 chat: list[dict[str, str]], metrics: dict[str, Any], speech: dict[str, Any] | None = None,
                 sounds: dict[str, Any] | None = None, images: dict[str, Any] | None = None) -> Path:
    """The HTML page a person reads: numbers first, then curves, confusion matrix, gallery, LLM answers."""
    from .report import Report

    rep = Report("anyalign quickstart", "An IMU adapter trained on real smartwatch data (UEA BasicMotions), "
                 "bound to the all-MiniLM-L6-v2 sentence space, searched with FAISS and plugged into SmolLM2-135M.")
    headline = {}
    if images is not None:
        u = images["numbers"]["unseen_protocol"]
        headline["images, unseen classes: H (calibrated)"] = f"{u['harmonic_mean']:.2f}"
        headline["unseen / seen (mean per class)"] = f"{u['unseen_accuracy']:.2f} / {u['seen_accuracy']:.2f}"
    nw = zs["new_wordings"]
    headline.update({"IMU, new wordings (per item)": f"{nw['mean_top1']:.1%}",
                     "IMU closed set (trained classes and wordings)": f"{zs['accuracy']:.1%}",
                     "chance (IMU)": f"{zs['chance']:.0%}", "linear probe (supervised)": f"{zs['probe']:.1%}",
                     "time": f"{metrics['seconds']:.0f} s"})
    rep.metrics(headline)
    rep.text("Closed set: the classes and the wordings the adapter was trained on. New wordings: phrasings of the "
             "same classes never used in training. Unseen classes (generalised zero-shot): classes never trained on, "
             "classified among all classes; seen and unseen are mean per-class accuracies, H their harmonic mean, "
             "with the calibration gamma tuned on held-out training data. Held-out data: new recordings, sounds or "
             "voices of the kind trained on.", muted=True)
    rep.heading("Training")
    rep.text(f"{stage1.step} steps of symmetric InfoNCE between IMU windows and activity captions.")
    if stage1.curves:
        rep.figure(stage1.curves, "training curves")
    rep.heading(f"IMU: the {zs['n']} held-out test windows, closed set and new wordings")
    rep.text("Closed set: the four BasicMotions activities the adapter was trained on, with the trained phrases and "
             "templates (per-class accuracy below, per item in the headline).", muted=True)
    per = zs["metrics"]["per_class"]
    rep.table(["activity", "closed-set accuracy", "windows"],
              [[c, f"{v['accuracy']:.0%}", v["support"]] for c, v in per.items()])
    rep.figure(zs["confusion_png"], "closed-set confusion matrix (rows: true, columns: predicted)")
    rep.table(["new wording set", "phrases", "top-1 (per item)", "ratio to closed set", "chance"],
              [[name, "; ".join(p[0] for p in v["phrases"].values()), f"{v['top1']:.0%}", f"{v['ratio']:.2f}",
                f"{nw['chance']:.0%}"] for name, v in nw["sets"].items()])
    rep.heading("Cross-modal retrieval")
    rep.text(f"FAISS index ({retrieval['summary']['index']}) over {retrieval['summary']['corpus_size']} items: "
             "photos and video frames (EfficientNet-Lite0 label bridge), IMU windows (the trained adapter), texts, "
             "and sounds indexed by what they sound like (the aisfx sound adapter; their captions are only shown).",
             muted=True)
    tmp_plots = retrieval["work"] / "plots"
    tmp_plots.mkdir(exist_ok=True)
    for r in retrieval["results"]:
        rep.text(f"{r['from']} -> {r['to']}: {r['query']}")
        cards = []
        for j, h in enumerate(r["hits"]):
            src = str(h.get("source", ""))
            card: dict[str, Any] = {"title": f"#{j + 1}  score {h['score']:.2f}",
                                    "lines": [h.get("caption") or Path(src).name]}
            if _kind(h) == "image":
                card["image"] = src
            elif _kind(h) == "audio":
                card["audio"] = src
            elif _kind(h) == "imu":
                card["image"] = _plot_imu(np.load(src), tmp_plots / f"{Path(src).stem}.png", Path(src).stem)
            cards.append(card)
        rep.gallery(cards)
    rep.heading("LLM: SmolLM2-135M with the IMU adapter's soft tokens")
    for c in chat:
        rep.chat(f"{c['prompt'].replace('<imu>', '[IMU window: ' + c['truth'] + ']')}", c["answer"])
    before, after = metrics["caption_loss_before"], metrics["caption_loss_after"]
    if before is not None and after is not None:
        rep.text(f"caption loss on the held-out windows: {before:.3f} before alignment, {after:.3f} after",
                 muted=True)
    if sounds is not None:
        sound_section(rep, sounds)
    if images is not None:
        image_section(rep, images)
    if speech is not None:
        speech_section(rep, speech)
    return rep.write(folder)
