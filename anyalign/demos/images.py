"""Fashion-MNIST photos bound to the MiniLM space (EfficientNet-Lite0 -> MLP head), with an unseen-class split.

The recipe is configs/image_text_contrastive.yaml at a small size: frozen EfficientNet-Lite0 (real ImageNet weights)
pooled 1280-d features, cached once by `anyalign extract`, an MLP head trained with InfoNCE against class captions
(the recipe's templates x each class phrase and its synonyms).

Split (`build_image_split`): a class-balanced random subset (`datasets.fashion_mnist.subset`) of the *train* fold
holding only the seen classes (every class but `UNSEEN`, Sandal and Shirt), for training; a class-balanced subset
of the *test* fold holding all ten classes, for every number. The unseen classes never reach training in any form:
not their photos (absent from the training jsonl and its features), not their names or synonyms (the training
recipe names only the seen classes' phrases), not as negatives.

Calibration: a quarter of the training photos (hash of the key) is set aside as validation data; after training,
the calibration gamma is tuned there by pseudo-unseen rotations over the seen classes and recorded in the adapter
(`anyalign.align.calibration`). The test photos and the real unseen classes play no part in choosing it.

Evaluation (`evaluate_image_adapter`), all on the held-out test photos: closed set (seen classes' photos among the
8 seen classes, chance 1/8), unseen classes (generalised zero-shot, `zeroshot.protocols.unseen_protocol`: seen /
unseen mean per-class accuracy among all ten classes and their harmonic mean, at the recorded gamma and without it),
top-1 per item among all ten (chance 0.10), new wordings of the class names (`phrasing_protocol`, the sets of
configs/data/fashion_mnist_phrasings.yaml), text -> image precision@k per class query (chance: the class's share of
the gallery), free-text queries with their top hits and image -> text.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RECIPES_DIR, load_yaml
from .fashion_mnist import CLASSES

RECIPE = "image_text_contrastive"  #: the shipped recipe this demo trains (at a small size, through overrides)
_SOURCE = load_yaml(RECIPES_DIR / f"{RECIPE}.yaml")["data"]["train"][0]
UNSEEN = tuple(c for c in CLASSES if c not in _SOURCE["classes"])  #: never trained on in any form (the recipe's)
LABEL_TEXT: dict[str, str] = _SOURCE["label_text"]  #: the class phrase of each class: what zero-shot prompts say
TEMPLATES: list[str] = _SOURCE["caption_templates"]
SYNONYMS: dict[str, list[str]] = _SOURCE["captions"]["synonyms"]  #: more phrases per class for training captions
#: other phrasings of every class, none of them a training caption (`training` is the recipe's own label_text)
_PHRASINGS_FILE = RECIPES_DIR / "data" / "fashion_mnist_phrasings.yaml"
PHRASINGS: dict[str, dict[str, str]] = {n: s for n, s in load_yaml(_PHRASINGS_FILE).items() if n != "training"}
#: free-text queries of the retrieval gallery: (query, the class a right hit belongs to)
QUERIES = [("a sandal", "Sandal"), ("a pair of running shoes", "Sneaker"), ("a pair of jeans", "Trouser"),
           ("a shirt with buttons and a collar", "Shirt")]
HITS = 4  #: photos shown per free-text query (one row of the report)
#: classes whose first test photo the image -> text gallery shows
SHOWN = ("Sandal", "Shirt", "Sneaker", "Trouser", "Bag")


@dataclass
class ImageSplit:
    """What `build_image_split` chose: the two jsonl files and the classes on each side."""

    train: Path
    test: Path
    seen: list[str]
    unseen: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        s = self.settings
        return (f"training: {s['train_per_class']} random photos of each of the {len(self.seen)} seen classes from "
                f"Fashion-MNIST's train fold ({s['train_per_class'] * len(self.seen)}); evaluation: "
                f"{s['test_per_class']} random photos of each of the {len(CLASSES)} classes from its test fold "
                f"({s['test_per_class'] * len(CLASSES)}), none of them trained on; {', '.join(self.unseen)} never "
                f"trained on in any form (photos, names, synonyms); seed {s['seed']}")


def build_image_split(root: str | os.PathLike | None = None, *, train_per_class: int, test_per_class: int,
                      unseen: Sequence[str] = UNSEEN, seed: int = 0) -> ImageSplit:
    """Class-balanced subsets of Fashion-MNIST (fetched into the asset cache `root` on first use): the train fold's
    seen classes for training, the test fold's ten classes for evaluation."""
    from ..assets import assets_root
    from .fashion_mnist import ensure_fashion_mnist, subset

    bad = [c for c in unseen if c not in CLASSES]
    if bad or not unseen or len(unseen) >= len(CLASSES):
        raise ValueError(f"unseen: expected some (not all) of {CLASSES}, got {list(unseen)}")
    fm = ensure_fashion_mnist(assets_root(root) / "image" / "fashion-mnist")
    seen = [c for c in CLASSES if c not in unseen]
    train = subset(fm, "train", train_per_class, seed=seed, classes=seen)
    test = subset(fm, "test", test_per_class, seed=seed)
    return ImageSplit(train, test, seen, list(unseen), {"train_per_class": train_per_class,
                                                        "test_per_class": test_per_class, "seed": seed})


def _encoder_spec(root: str | os.PathLike | None) -> Any:
    from ..assets import asset_path
    from ..encoders.spec import EncoderSpec

    return EncoderSpec.from_dict({"name": "timm-image", "pretrained": str(asset_path("efficientnet-lite0", root))})


def extract_image_features(split: ImageSplit, features: str | os.PathLike, *, root: str | os.PathLike | None = None,
                           batch_size: int = 32) -> dict[str, Path]:
    """Cache EfficientNet-Lite0 features of both jsonl files under `features/<subset name>` (what `anyalign extract`
    writes; a finished folder is resumed, i.e. skipped); returns `{"train": folder, "test": folder}`."""
    from ..encoders.extract import extract

    spec = _encoder_spec(root)
    encoder = spec.build()
    out = {}
    for fold, jsonl in (("train", split.train), ("test", split.test)):
        out[fold] = Path(features) / jsonl.stem
        extract(encoder, jsonl, out[fold], batch_size=batch_size, spec=spec, progress=False)
    return out


VALIDATION = float(_SOURCE["holdout"])  #: share of the training photos set aside (hash of the key) for calibration


def image_recipe(train_features: str | os.PathLike, output: str | os.PathLike, *, seen: Sequence[str],
                 steps: int = 300, seed: int = 0, root: str | os.PathLike | None = None,
                 calibration_folds: int | None = None) -> Any:
    """The shipped recipe at the demo's size: the seen classes' photos (only their phrases and synonyms, no
    paraphrases, no eval source), the held-out quarter of them as validation data, the assets under `root`."""
    import json

    from ..align.config import load_recipe
    from ..assets import asset_path
    from ..features import read_manifest

    seen, path = list(seen), json.dumps(Path(train_features).resolve().as_posix())
    batch = min(64, int(int(read_manifest(train_features)["count"]) * (1 - VALIDATION) * 0.5))
    t = "data.train.0"  # the training photos of the seen classes; data.validation.0: their held-out quarter
    return load_recipe(RECIPE, [
        f"name={RECIPE}_quickstart", f"seed={seed}", f"output_dir={json.dumps(Path(output).as_posix())}",
        f"adapters.image.encoder={json.dumps(_encoder_spec(root).to_dict())}",
        f"anchors.text.encoder.pretrained={json.dumps(asset_path('minilm', root).as_posix())}",
        "data.eval=[]",  # the test photos play no part in training or in choosing the calibration
        f"{t}.path={path}", f"{t}.classes={json.dumps(seen)}",
        f"{t}.label_text={json.dumps({c: LABEL_TEXT[c] for c in seen})}",  # only the seen classes' names
        f"{t}.captions={json.dumps({'synonyms': {c: SYNONYMS[c] for c in seen}})}",
        f"data.validation.0.path={path}", f"train.batch_size={batch}", f"train.max_steps={steps}",
        f"train.warmup_steps={max(2, steps // 15)}", f"train.save_every={steps}",
        f"eval.calibration_folds={'null' if calibration_folds is None else int(calibration_folds)}"])


def train_image_adapter(features: dict[str, Path], output: str | os.PathLike, *, seen: Sequence[str], steps: int = 300,
                        seed: int = 0, root: str | os.PathLike | None = None,
                        calibration_folds: int | None = None) -> Path:
    """Train the EfficientNet-Lite0 -> MiniLM head (`image_recipe`) from cached `features["train"]` on the `seen`
    classes only into `output`, the calibration gamma tuned on the training photos set aside by pseudo-unseen
    rotations over the seen classes (`calibration_folds` of them; None: every seen class alone) and recorded in the
    adapter; returns the adapter folder."""
    from ..align import train

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    recipe = image_recipe(features["train"], out, seen=seen, steps=steps, seed=seed, root=root,
                          calibration_folds=calibration_folds)
    return Path(train(recipe, output_dir=out).adapters["image"])


def _thumbnail(src: str | os.PathLike, out: Path, scale: int = 4) -> Path:
    """An upscaled copy (nearest neighbour) of a 28x28 photo, so the report shows pixels rather than a blur."""
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.is_file():
        img = Image.open(src)
        img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(out)
    return out


def evaluate_image_adapter(adapter: str | os.PathLike, test_features: str | os.PathLike, *, seen: Sequence[str],
                           root: str | os.PathLike | None = None, k: int = 10,
                           thumbnails: str | os.PathLike | None = None,
                           queries: Sequence[tuple[str, str]] = QUERIES, hits: int = HITS) -> dict[str, Any]:
    """Every number of the module docstring, with chance levels, from a trained adapter and the cached test features;
    with `thumbnails` (a folder) also the query gallery and image -> text for one photo of a few classes."""
    import torch

    from ..assets import asset_path
    from ..embedder import Embedder
    from ..features import collate_features, load_features
    from ..zeroshot.protocols import (
        phrase_class_embeddings,
        phrasing_protocol,
        recorded_zeroshot,
        top1,
        unseen_protocol,
    )

    text = Embedder.from_encoder({"name": "text", "pretrained": str(asset_path("minilm", root))})
    image = Embedder.from_adapter(adapter, load_encoder=False)  # embeds the EfficientNet-Lite0 features cached
    recs = load_features(test_features)
    emb = torch.from_numpy(image.embed_features(collate_features(recs)))  # [N, E], L2-normalised
    y = np.array([CLASSES.index(r.meta["label"]) for r in recs])

    cache: dict[str, np.ndarray] = {}

    def embed_text(texts: list[str]) -> torch.Tensor:
        """MiniLM embeddings `[T, E]`, each text encoded once (the protocols ask class by class)."""
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            cache.update(zip(missing, text.embed(missing)))
        return torch.from_numpy(np.stack([cache[t] for t in texts]))

    templates = [t.replace("{label}", "{}") for t in TEMPLATES]
    phrases = [*LABEL_TEXT.values(), *(p for s in PHRASINGS.values() for p in s.values())]
    embed_text([t.format(p) for p in phrases for t in templates] + [q for q, _ in queries])  # one pass, batched
    cls = phrase_class_embeddings(embed_text, templates, {c: [LABEL_TEXT[c]] for c in CLASSES}, CLASSES)  # [C, E]
    scores = emb @ cls.t()  # [N, C] cosine
    recorded = recorded_zeroshot(adapter) or {}
    gamma = float(recorded.get("calibration") or 0.0)  # tuned at training on held-out training photos
    seen_ids = [CLASSES.index(c) for c in seen]
    offsets = torch.tensor([gamma if c in seen else 0.0 for c in CLASSES])
    on_seen = np.isin(y, seen_ids)
    seen_only = top1(scores[torch.from_numpy(on_seen)][:, seen_ids], np.searchsorted(seen_ids, y[on_seen]))
    gzsl_raw = unseen_protocol(scores, y, CLASSES, list(seen))
    gzsl = unseen_protocol(scores, y, CLASSES, list(seen), calibration=gamma)
    gzsl["calibration_source"] = recorded.get("calibration_source")
    closed = top1(scores - offsets, y)  # all ten classes, per item, at the recorded calibration
    phrasings = phrasing_protocol(emb, y, CLASSES, embed_text, templates,
                                  {n: {c: [p] for c, p in s.items()} for n, s in PHRASINGS.items()}, closed,
                                  offsets=offsets)
    # text -> image: each class prompt ranks every test photo; precision@k against the class's share of the gallery
    order = torch.argsort(cls @ emb.t(), dim=1, descending=True).numpy()  # [C, N]
    per_class = {}
    for i, c in enumerate(CLASSES):
        right = y[order[i, :k]] == i
        per_class[c] = {"P@k": float(right.mean()), "R@1": float(right[0]), "seen": c in seen,
                        "chance_P@k": float(np.mean(y == i))}
    p_at_k = {group: float(np.mean([v["P@k"] for v in per_class.values() if v["seen"] == flag]))
              for group, flag in (("seen", True), ("unseen", False))}
    result: dict[str, Any] = {
        "n_test": len(recs), "classes": list(CLASSES), "seen": list(seen), "unseen": gzsl["unseen_classes"],
        "all_classes_top1": closed, "chance": 1.0 / len(CLASSES), "calibration": gamma,
        "closed_set_top1": seen_only, "chance_closed_set": 1.0 / len(seen),
        "unseen_protocol": gzsl, "unseen_protocol_uncalibrated": gzsl_raw, "new_wordings": phrasings,
        "text_to_image": {"k": k, "per_class": per_class, "mean_P@k": float(np.mean([v["P@k"] for v in
                                                                                     per_class.values()])),
                          "mean_P@k_seen": p_at_k["seen"], "mean_P@k_unseen": p_at_k["unseen"],
                          "chance_P@k": float(np.mean([v["chance_P@k"] for v in per_class.values()]))}}
    if thumbnails is None:
        return result
    thumbs = Path(thumbnails)

    def card(j: int) -> dict[str, Any]:
        src = recs[j].meta["source"]
        return {"image": str(_thumbnail(src, thumbs / f"{Path(src).stem}.png")), "label": CLASSES[y[j]],
                "key": recs[j].key}

    gallery = []
    q_emb = embed_text([q for q, _ in queries])  # [Q, E]
    for (q, want), qe in zip(queries, q_emb):
        s = emb @ qe
        top = torch.argsort(s, descending=True)[:hits].tolist()
        gallery.append({"query": q, "expected": want, "expected_seen": want in seen,
                        "precision": float(np.mean([CLASSES[y[j]] == want for j in top])),
                        "chance": float(np.mean(y == CLASSES.index(want))),
                        "hits": [{**card(j), "score": float(s[j]), "correct": CLASSES[y[j]] == want} for j in top]})
    to_text = []  # against the zero-shot class embeddings (each class's templates averaged), as top-1 above
    for c in SHOWN:
        j = int(np.flatnonzero(y == CLASSES.index(c))[0])  # the first test photo of the class
        s = scores[j] - offsets  # as top-1 ranks them: at the recorded calibration
        top = torch.argsort(s, descending=True)[:3].tolist()
        to_text.append({**card(j), "seen": c in seen, "rank": int((s > s[CLASSES.index(c)]).sum()) + 1,
                        "hits": [{"caption": LABEL_TEXT[CLASSES[i]], "class": CLASSES[i], "score": float(s[i]),
                                  "correct": i == CLASSES.index(c)} for i in top]})
    result["gallery"], result["image_to_text"] = gallery, to_text
    return result


__all__ = ["HITS", "LABEL_TEXT", "PHRASINGS", "QUERIES", "SHOWN", "SYNONYMS", "TEMPLATES", "UNSEEN", "ImageSplit",
           "build_image_split", "evaluate_image_adapter", "extract_image_features", "train_image_adapter"]
