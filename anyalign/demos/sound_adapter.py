"""The sound adapter on the corpus of `sounds.py`: aisfx features cached once, the shipped recipe
(configs/sound_text_contrastive.yaml) at the demo's size, and its evaluation (what the quickstart and
benchmarks/sound_eval.py call)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .sounds import CATEGORIES

RECIPE = "sound_text_contrastive"  #: the shipped recipe the sound demo trains (through overrides)


def extract_sound_features(corpus: str | os.PathLike, features: str | os.PathLike, *,
                           folds: Sequence[str] = ("train", "test", "heldout"), root: str | os.PathLike | None = None,
                           batch_size: int = 32) -> dict[str, Path]:
    """Cache aisfx features of each fold's jsonl under `features/<fold>` (what `anyalign extract` writes; a
    finished fold is resumed, i.e. skipped); returns the folders."""
    from ..assets import asset_path
    from ..encoders.extract import extract
    from ..encoders.spec import EncoderSpec

    spec = EncoderSpec.from_dict({"name": "aisfx", "pretrained": str(asset_path("aisfx", root))})
    encoder = spec.build()
    out = {}
    for fold in folds:
        out[fold] = Path(features) / fold
        extract(encoder, Path(corpus) / f"{fold}.jsonl", out[fold], batch_size=batch_size, spec=spec, progress=False)
    return out


def sound_recipe(features: str | os.PathLike, output: str | os.PathLike, *, steps: int = 300, seed: int = 0,
                 root: str | os.PathLike | None = None) -> Any:
    """The shipped recipe on `features/{train,test}` at `steps`, the assets under `root`; batches of 64 (fewer on a
    small corpus)."""
    import json

    from ..align.config import load_recipe
    from ..assets import asset_path
    from ..features import read_manifest

    feats = Path(features).resolve()
    return load_recipe(RECIPE, [
        f"seed={seed}", f"output_dir={json.dumps(Path(output).as_posix())}",
        f"adapters.audio.encoder.pretrained={json.dumps(asset_path('aisfx', root).as_posix())}",
        f"anchors.text.encoder.pretrained={json.dumps(asset_path('minilm', root).as_posix())}",
        f"data.train.0.path={json.dumps((feats / 'train').as_posix())}",
        f"data.eval.0.path={json.dumps((feats / 'test').as_posix())}",
        f"train.batch_size={min(64, int(read_manifest(feats / 'train')['count']))}", f"train.max_steps={steps}",
        f"train.warmup_steps={max(2, steps // 15)}", f"train.save_every={steps}", f"eval.every={steps}"])


def train_sound_adapter(features: str | os.PathLike, output: str | os.PathLike, *, steps: int = 300, seed: int = 0,
                        root: str | os.PathLike | None = None) -> Path:
    """Train the aisfx -> MiniLM head (`sound_recipe`) from `features/{train,test}` into `output`; returns the saved
    adapter folder."""
    from ..align import train

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    recipe = sound_recipe(features, out, steps=steps, seed=seed, root=root)
    return Path(train(recipe, output_dir=out).adapters["audio"])


def name_text(sound: str) -> str:
    """What a caption-only index knows of a sound: its file name as words (`drum_cowbell` -> "drum cowbell"), the
    way the quickstart indexed sounds before it could listen."""
    return re.sub(r"[-_]+", " ", sound.split("/")[-1])


def _ranks(sim: np.ndarray, right: list[set[int]]) -> np.ndarray:
    """1-based rank of the best right column of each row of `sim`."""
    order = np.argsort(-sim, axis=1)
    return np.array([1 + min(int(np.where(order[i] == j)[0][0]) for j in right[i]) for i in range(len(sim))])


def _retrieval(sim: np.ndarray, right: list[set[int]], n_gallery: int) -> dict[str, float]:
    r = _ranks(sim, right)
    return {"R@1": float(np.mean(r <= 1)), "R@5": float(np.mean(r <= 5)), "MRR": float(np.mean(1.0 / r)),
            "queries": len(r), "gallery": n_gallery, "chance_R@1": 1.0 / n_gallery,
            "chance_R@5": min(1.0, 5.0 / n_gallery)}


def evaluate_sound_adapter(adapter: str | os.PathLike, features: str | os.PathLike, *,
                           root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Both protocols with their chance levels, plus the caption-only (file-name) baseline and a supervised aisfx
    1-NN reference, from cached features `features/{train,test,heldout}` and a trained adapter folder.

    (a) `seen`: the test copies of the seen sounds vs the captions of all seen sounds, both directions.
    (b) `heldout`: the clean held-out sounds: category zero-shot ("the sound of {category}") and caption retrieval
    among the held-out sounds, both directions."""
    import torch.nn.functional as F

    from ..assets import asset_path
    from ..embedder import Embedder
    from ..features import collate_features, load_features

    text = Embedder.from_encoder({"name": "text", "pretrained": str(asset_path("minilm", root))})
    audio = Embedder.from_adapter(adapter, load_encoder=False)
    feats = {f: load_features(Path(features) / f) for f in ("train", "test", "heldout")}

    def sounds_of(recs: list[Any]) -> tuple[list[str], list[str]]:
        sounds = sorted({r.meta["sound"] for r in recs})
        caps = {r.meta["sound"]: r.meta["text"] for r in recs}
        return sounds, [caps[s] for s in sounds]

    result: dict[str, Any] = {}
    for fold, protocol in (("test", "seen"), ("heldout", "heldout")):
        recs = feats[fold]
        sounds, caps = sounds_of(recs)
        col = {s: i for i, s in enumerate(sounds)}
        a = audio.embed_features(collate_features(recs))  # [Q, E], one row per copy
        t = text.embed(caps)  # [N, E]
        names = text.embed([name_text(s) for s in sounds])
        own = [col[r.meta["sound"]] for r in recs]
        copies = [{q for q, o in enumerate(own) if o == j} for j in range(len(sounds))]
        res = {"sounds": len(sounds),
               "sound->text": _retrieval(a @ t.T, [{o} for o in own], len(sounds)),
               "text->sound": _retrieval(t @ a.T, copies, len(sounds)),
               "baseline_caption_only": {"text->sound (query caption vs file name)":
                                         _retrieval(t @ names.T, [{j} for j in range(len(sounds))], len(sounds))}}
        if protocol == "heldout":
            cats = sorted(CATEGORIES)
            prompts = text.embed([f"the sound of {CATEGORIES[c]}" for c in cats])
            truth = np.array([cats.index(r.meta["category"]) for r in recs])
            pred = (a @ prompts.T).argmax(1)
            name_pred = (names @ prompts.T).argmax(1)[own]
            counts = np.bincount(truth, minlength=len(cats))
            train = feats["train"]
            tr = F.normalize(collate_features(train).pooled, dim=-1).numpy()
            te = F.normalize(collate_features(recs).pooled, dim=-1).numpy()
            nn_pred = np.array([cats.index(train[j].meta["category"]) for j in (te @ tr.T).argmax(1)])
            res["category_zeroshot"] = {
                "accuracy": float(np.mean(pred == truth)), "categories": len(cats), "chance": 1.0 / len(cats),
                "majority_class_rate": float(counts.max() / counts.sum()),
                "baseline_caption_only_accuracy": float(np.mean(name_pred == truth)),
                "reference_aisfx_1nn_on_training_sounds": float(np.mean(nn_pred == truth))}
        result[protocol] = res
    return result


__all__ = ["RECIPE", "evaluate_sound_adapter", "extract_sound_features", "name_text", "sound_recipe",
           "train_sound_adapter"]
