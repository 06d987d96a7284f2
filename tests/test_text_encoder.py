"""The Hugging Face text encoder on the real MiniLM, plus its pretrained save/load round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from anyalign.encoders import create_encoder


def test_minilm_real_similarities_and_bf16(minilm_dir: Path) -> None:
    enc = create_encoder("text", pretrained=str(minilm_dir))
    out = enc(["a dog barking", "a puppy yelping loudly", "a violin playing a melody"])
    assert out.tokens.shape[0] == 3 and out.tokens.shape[-1] == 384 and out.pooled.shape == (3, 384)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    sim = out.pooled @ out.pooled.T
    assert abs(sim[0, 1].item() - 0.51) < 0.02 and abs(sim[0, 2].item() - 0.22) < 0.02
    bf16 = create_encoder("text", pretrained=str(minilm_dir), autocast="bf16")
    cos = (bf16(["a dog barking", "a violin"]).pooled * enc(["a dog barking", "a violin"]).pooled).sum(-1)
    assert cos.min() > 0.99  # accuracy cost of bf16 autocast on the real model


def _tiny_bert(folder: Path, minilm_dir: Path) -> BertModel:
    """A tiny random BERT with MiniLM's real tokenizer, saved as a pretrained folder."""
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def test_text_encoder_pretrained_roundtrip(tmp_path: Path, minilm_dir: Path) -> None:
    model = _tiny_bert(tmp_path, minilm_dir)
    enc = create_encoder("text", pretrained=str(tmp_path))
    out = enc(["hello", "a longer sentence here"])
    assert out.tokens.shape[-1] == 32 and out.mask[0].sum() < out.mask[1].sum()
    ref = model.eval()(**enc.collate(["hello", "a longer sentence here"])).last_hidden_state
    assert torch.allclose(out.tokens, ref, atol=1e-5)


def test_embedder_batches_sentences_by_length_in_input_order(tmp_path: Path, minilm_dir: Path) -> None:
    from anyalign.embedder import Embedder
    from anyalign.encoders.spec import EncoderSpec

    _tiny_bert(tmp_path, minilm_dir)
    emb = Embedder.from_encoder(EncoderSpec("text", str(tmp_path)))
    texts = ["a " * n + "dog" for n in (9, 1, 30, 4, 2, 17, 0, 25)]
    batches: list[list[str]] = []
    collate = emb.collate
    emb.collate = lambda windows: (batches.append(list(windows)), collate(windows))[1]  # type: ignore[method-assign]
    got = emb.embed(texts, batch_size=3)
    assert [len(t) for b in batches for t in b] == sorted(len(t) for t in texts)  # each batch of similar lengths
    one_by_one = [emb.embed([t])[0] for t in texts]
    assert torch.allclose(torch.from_numpy(got), torch.tensor(np.stack(one_by_one)), atol=1e-5)  # input order
