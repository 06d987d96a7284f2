"""Shared builders for the retrieval tests: clustered corpora, a tiny real BERT text encoder and a tiny timm
image adapter (random weights saved to disk, so every load gives the same model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anyalign.adapter import build_adapter
from anyalign.encoders.spec import EncoderSpec
from anyalign.io import save_weights

WORDS = ["a", "red", "green", "blue", "yellow", "black", "white", "square", "circle", "photo", "of", "the", "dog",
         "cat", "sound", "video"]
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (240, 220, 30),
           "black": (10, 10, 10), "white": (250, 250, 250)}


def clustered(n: int, d: int, *, centres: int = 200, noise: float = 0.35, seed: int = 0) -> np.ndarray:
    """Gaussian mixture around `centres` random centres (real embeddings cluster; isotropic noise would not)."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(1234).standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_topk(queries: np.ndarray, corpus: np.ndarray, k: int) -> np.ndarray:
    """Brute-force top-k ids by cosine similarity (numpy, independent of faiss)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    c = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    return np.argsort(-(q @ c.T), axis=1, kind="stable")[:, :k]


def tiny_bert(folder: Path) -> Path:
    """A 1-layer, 32-wide BertModel + WordPiece tokenizer saved as a Hugging Face folder (random weights)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    assert tok("a red dog")["input_ids"] == [2, vocab["a"], vocab["red"], vocab["dog"], 3]
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_image_adapter(folder: Path, embed_dim: int = 32) -> Path:
    """A saved image adapter: timm `test_efficientnet` (random weights in a file) + linear head to `embed_dim`."""
    import timm

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weights = folder / "encoder.safetensors"
    save_weights(weights, timm.create_model("test_efficientnet").state_dict())
    spec = EncoderSpec("timm-image", str(weights), {"model": "test_efficientnet"})
    adapter = build_adapter("image", spec, feature="pooled", embed_dim=embed_dim,
                            embed_projector={"name": "linear"})
    out = folder / "adapter"
    adapter.save_pretrained(out)
    return out


def image_corpus(folder: Path) -> Path:
    """Six solid-colour PNGs with captions, listed in `corpus.jsonl`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        img = Image.new("RGB", (64, 64), rgb)
        if i % 2:  # some variety in shape
            img.paste((255 - rgb[0], 255 - rgb[1], 255 - rgb[2]), (16, 16, 48, 48))
        img.save(folder / f"{name}.png")
        rows.append({"path": f"{name}.png", "caption": f"a {name} square", "colour": name})
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "corpus.jsonl"
