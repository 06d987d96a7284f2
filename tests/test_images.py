"""anyalign.demos.images: the quickstart's image recipe says what configs/image_text_contrastive.yaml says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from anyalign.demos import images
from anyalign.demos.fashion_mnist import CLASSES

ROOT = Path(__file__).resolve().parents[1]


def test_captions_and_split_match_the_recipe_and_the_phrasings_file() -> None:
    recipe = yaml.safe_load((ROOT / "configs" / "image_text_contrastive.yaml").read_text())
    src = recipe["data"]["train"][0]
    assert src["label_text"] == images.LABEL_TEXT and src["caption_templates"] == images.TEMPLATES
    assert src["captions"]["synonyms"] == images.SYNONYMS
    assert src["classes"] == [c for c in CLASSES if c not in images.UNSEEN]
    phrasings = yaml.safe_load((ROOT / "configs" / "data" / "fashion_mnist_phrasings.yaml").read_text())
    assert phrasings.pop("training") == images.LABEL_TEXT
    assert phrasings == images.PHRASINGS
    trained = {t.format(label=p) for c in CLASSES for p in [images.LABEL_TEXT[c], *images.SYNONYMS[c]]
               for t in images.TEMPLATES}
    evaluated = {t.format(label=p) for s in images.PHRASINGS.values() for p in s.values() for t in images.TEMPLATES}
    assert not trained & evaluated  # the phrasing sets are other words, never a training caption
    assert all(want in CLASSES for _, want in images.QUERIES)
    assert any(want in images.UNSEEN for _, want in images.QUERIES)  # the gallery asks for a never-seen class


@pytest.mark.parametrize("unseen", [[], list(CLASSES), ["Sandal", "Flip-flop"]])
def test_split_refuses_bad_unseen_classes(unseen: list[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unseen"):
        images.build_image_split(tmp_path, train_per_class=1, test_per_class=1, unseen=unseen)
