"""Label bridging: a classifier's label distribution mapped into a text encoder's space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anyalign.encoders import create_encoder


def test_bridge_matches_hand_computation(minilm_dir: Path) -> None:
    labels = ["cat", "coffee", "rocket"]
    enc = create_encoder("label-bridge", classifier_kwargs={"model": "resnet10t", "num_classes": 3},
                         text_pretrained=str(minilm_dir), labels=labels, top_k=2, temperature=0.5)
    imgs = [np.random.randint(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    out = enc(imgs)
    assert out.pooled.shape == (2, 384) and out.tokens.shape[-1] == enc.token_dim
    inner = enc.classifier(imgs)
    probs = torch.softmax(enc.head(inner.pooled) / 0.5, -1)
    top = probs.topk(2, -1)
    probs = torch.zeros_like(probs).scatter_(1, top.indices, top.values)
    text = create_encoder("text", pretrained=str(minilm_dir))([f"a photo of a {n}." for n in labels]).pooled
    assert torch.allclose(out.pooled, F.normalize(probs @ text, dim=-1), atol=1e-5)
    with pytest.raises(ValueError, match="has 3 classes but 2 labels"):
        create_encoder("label-bridge", classifier_kwargs={"model": "resnet10t", "num_classes": 3},
                       text_pretrained=str(minilm_dir), labels=["a", "b"])


def test_real_efficientnet_bridge_retrieves_the_right_photo(assets: Path, minilm_dir: Path) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    enc = create_encoder("label-bridge", pretrained=str(assets / "image" / "efficientnet-lite0.pth"),
                         text_pretrained=str(minilm_dir))
    text = create_encoder("text", pretrained=str(minilm_dir))
    sims = enc([skimage_data.coffee(), skimage_data.chelsea(), skimage_data.rocket()]).pooled @ \
        text(["a cup of coffee", "a cat", "a rocket"]).pooled.T  # [image, query]
    assert sims.argmax(0).tolist() == [0, 1, 2]
