"""anyalign.demos.images: its class tables come from the shipped recipe, and its recipe is that recipe at the demo's
size (overrides only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anyalign.align.config import load_recipe
from anyalign.demos import images
from anyalign.demos.fashion_mnist import CLASSES


def test_phrasings_and_queries_are_never_training_captions() -> None:
    assert images.UNSEEN == ("Sandal", "Shirt") and set(images.LABEL_TEXT) == set(CLASSES)
    trained = {t.format(label=p) for c in CLASSES for p in [images.LABEL_TEXT[c], *images.SYNONYMS[c]]
               for t in images.TEMPLATES}
    evaluated = {t.format(label=p) for s in images.PHRASINGS.values() for p in s.values() for t in images.TEMPLATES}
    assert set(images.PHRASINGS) == {"everyday", "descriptive"} and evaluated
    assert not trained & evaluated  # the phrasing sets are other words, never a training caption
    assert all(want in CLASSES for _, want in images.QUERIES)
    assert any(want in images.UNSEEN for _, want in images.QUERIES)  # the gallery asks for a never-seen class


def test_demo_recipe_is_the_shipped_recipe_with_overrides(assets: Path, tmp_path: Path) -> None:
    feats = tmp_path / "features" / "train-4pc"
    feats.mkdir(parents=True)
    (feats / "manifest.json").write_text(json.dumps({"count": 32}))
    seen = ["Trouser", "Bag", "Coat"]
    demo = images.image_recipe(feats, tmp_path / "run", seen=seen, steps=30, seed=3, root=assets, calibration_folds=2)
    shipped = load_recipe(images.RECIPE, check=False)
    src, val = demo.data.train[0], demo.data.validation[0]
    assert src.classes == seen and set(src.label_text) == set(seen) and set(src.captions.synonyms) == set(seen)
    assert src.captions.paraphrases is None and not demo.data.eval  # no test photos, no unseen class's words
    assert val.path == src.path == str(feats.resolve()) and val.split == "eval" and src.split == "train"
    assert val.holdout == src.holdout == shipped.data.train[0].holdout == images.VALIDATION
    assert (demo.train.max_steps, demo.train.warmup_steps, demo.train.batch_size, demo.seed) == (30, 2, 12, 3)
    assert demo.eval.calibration_folds == 2 and demo.adapters["image"].encoder.name == "timm-image"
    # everything the demo does not override is the shipped recipe's
    assert demo.adapters["image"].embed_projector == shipped.adapters["image"].embed_projector
    assert demo.anchors["text"].temperature == shipped.anchors["text"].temperature
    for key in ("lr", "weight_decay", "schedule", "clip_grad"):
        assert getattr(demo.train, key) == getattr(shipped.train, key)
    assert src.caption_templates == shipped.data.train[0].caption_templates == images.TEMPLATES


@pytest.mark.parametrize("unseen", [[], list(CLASSES), ["Sandal", "Flip-flop"]])
def test_split_refuses_bad_unseen_classes(unseen: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unseen"):
        images.build_image_split(tmp_path, train_per_class=1, test_per_class=1, unseen=unseen)
