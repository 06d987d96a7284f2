"""The quickstart's steps 3-6 (zero-shot, retrieval, LLM, report), each a thin use of the public API."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


ACTIVITY_TEXT = {"Badminton": "playing badminton", "Running": "running", "Standing": "standing still",
                 "Walking": "walking"}
TEMPLATES = ["a person {label}.", "someone is {label}.", "a recording of a person {label}.",
             "wearable sensor data of somebody {label}.", "a person who is {label}."]

def zero_shot(adapter_dir: Path, paths: dict[str, Path], work: Path) -> dict[str, Any]:
    """Zero-shot accuracy on the BasicMotions test split, a confusion matrix PNG, and a linear probe."""
    from .datasets import load_uea
    from .zeroshot import ZeroShotClassifier, classification_metrics, linear_probe, plot_confusion

    train, test = load_uea(paths["basicmotions"], "train"), load_uea(paths["basicmotions"], "test")
    phrases = [ACTIVITY_TEXT[c] for c in test.classes]
    clf = ZeroShotClassifier.from_adapter(adapter_dir, phrases, [t.replace("{label}", "{}") for t in TEMPLATES])
    emb_test = clf.embed(list(test.x), progress=False).embeddings
    emb_train = clf.embed(list(train.x), progress=False).embeddings
    m = classification_metrics(clf.scores(emb_test).numpy(), test.targets, test.classes)
    png = plot_confusion(m["confusion_matrix"], test.classes, work / "confusion.png",
                         title="BasicMotions zero-shot (IMU adapter vs MiniLM class captions)")
    emb = np.concatenate([emb_train.numpy(), emb_test.numpy()])
    folds = ["train"] * len(train) + ["test"] * len(test)
    probe = linear_probe(emb, np.concatenate([train.targets, test.targets]), folds, test_folds=["test"])
    return {"accuracy": m["top1"], "chance": m["chance"], "probe": probe["accuracy"], "metrics": m,
            "confusion_png": png}


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
                   queries: list[tuple[str, str, str]]) -> dict[str, Any]:
    """Embed a real multimodal corpus into the MiniLM space, index it with FAISS, run cross-modal queries."""
    from sklearn.datasets import load_sample_images

    from .datasets import load_uea
    from .embedder import Embedder
    from .encoders.spec import EncoderSpec
    from .retrieval import Retriever, build_index, embed_to_folder

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
    # No audio-text model is available offline, so sounds are indexed by their caption (their file name).
    (corpus / "audio" / "sounds.jsonl").write_text("".join(
        json.dumps({"text": p.stem.replace("-", " "), "caption": p.stem.replace("-", " "), "media": str(p),
                    "kind": "sound (indexed by caption)"}) + "\n"
        for p in sorted(paths["sounds"].glob("*.oga"))))

    minilm = str(paths["minilm"])
    text = Embedder.from_encoder(EncoderSpec("text", minilm))
    imu = Embedder.from_adapter(adapter_dir)  # records the MiniLM space it was aligned to
    image = Embedder.from_encoder(EncoderSpec("label-bridge", str(paths["efficientnet-lite0"]),
                                              {"text_pretrained": minilm}))
    folders = []
    for name, emb, inputs in [("image", image, [corpus / "image"]), ("imu", imu, [corpus / "imu"]),
                              ("text", text, [corpus / "text" / "texts.jsonl"]),
                              ("audio", text, [corpus / "audio" / "sounds.jsonl"])]:
        folders.append(work / "embeddings" / name)
        embed_to_folder(inputs, folders[-1], emb)
    index_dir = work / "index"
    config = build_index(folders, index_dir, factory="auto")
    retriever = Retriever(index_dir, embedders={"text": text, "imu": imu, "image": image})  # the recorded ones

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
    """The modality a hit shows as: sounds are indexed through their caption but shown as audio."""
    return "audio" if hit.get("media") else str(hit.get("modality", ""))


def _activity(query: str) -> str:

    label = query[query.index("(") + 1 : query.index(")")]
    return ACTIVITY_TEXT[label]


def llm_exchange(adapter_dir: Path, paths: dict[str, Path], gguf_file: str) -> list[dict[str, str]]:
    """Ask SmolLM2 about one held-out window of each activity through the aligned IMU adapter."""
    from .datasets import load_uea
    from .llm import MultimodalLM

    test = load_uea(paths["basicmotions"], "test")
    mlm = MultimodalLM.from_pretrained(paths["smollm2"], {"imu": adapter_dir}, gguf_file=gguf_file)
    prompt = "<imu>\nWhat is the person doing?"
    picks = [test.labels.index(c) for c in test.classes]
    answers = mlm.generate([prompt] * len(picks), inputs={"imu": [test.x[i] for i in picks]}, max_new_tokens=16,
                           do_sample=False)
    return [{"truth": test.labels[i], "prompt": prompt, "answer": a.strip()} for i, a in zip(picks, answers)]


def write_report(folder: Path, stage1: Any, zs: dict[str, Any], retrieval: dict[str, Any],
                 chat: list[dict[str, str]], metrics: dict[str, Any]) -> Path:
    """The HTML page a person reads: numbers first, then curves, confusion matrix, gallery, LLM answers."""
    from .report import Report

    rep = Report("anyalign quickstart", "An IMU adapter trained on real smartwatch data (UEA BasicMotions), "
                 "bound to the all-MiniLM-L6-v2 sentence space, searched with FAISS and plugged into SmolLM2-135M.")
    rep.metrics({"zero-shot accuracy": f"{zs['accuracy']:.1%}", "chance": f"{zs['chance']:.0%}",
                 "linear probe": f"{zs['probe']:.1%}", "time": f"{metrics['seconds']:.0f} s"})
    rep.heading("Training")
    rep.text(f"{stage1.step} steps of symmetric InfoNCE between IMU windows and activity captions.")
    if stage1.curves:
        rep.figure(stage1.curves, "training curves")
    rep.heading("Zero-shot classification of the 40 held-out windows")
    per = zs["metrics"]["per_class"]
    rep.table(["activity", "accuracy", "windows"], [[c, f"{v['accuracy']:.0%}", v["support"]] for c, v in per.items()])
    rep.figure(zs["confusion_png"], "confusion matrix (rows: true, columns: predicted)")
    rep.heading("Cross-modal retrieval")
    rep.text(f"FAISS index ({retrieval['summary']['index']}) over {retrieval['summary']['corpus_size']} items: "
             "photos and video frames (EfficientNet-Lite0 label bridge), IMU windows (the trained adapter), texts, "
             "and sounds indexed by their caption (no audio-text model is available offline).", muted=True)
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
                card["audio"] = h["media"]
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
    return rep.write(folder)
