"""sentence-transformers: the `text` encoder runs a model's own sentence-transformers configuration (pooling mode,
max_seq_length), and `anyalign export st` writes a space that `SentenceTransformer(DIR).encode` reproduces, for text
and for an IMU window (cos >= 0.9999)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _retrieval_helpers import tiny_bert

from anyalign.adapter import build_adapter
from anyalign.cli.main import main
from anyalign.embedder import Embedder
from anyalign.encoders.spec import EncoderSpec

st = pytest.importorskip("sentence_transformers")

LONG = " ".join(["The quick brown fox jumps over the lazy dog near the river bank while the children play."] * 12)
TEXTS = ["a person walking", "someone playing badminton on a court", LONG]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_text_encoder_follows_minilm_sentence_transformers_config(minilm_dir: Path) -> None:
    enc = EncoderSpec("text", str(minilm_dir)).build()
    assert enc.max_length == 256 and enc.pooling == "mean"  # MiniLM's own sentence_bert_config / 1_Pooling
    assert len(enc.tokenizer(LONG)["input_ids"]) > 128  # the text the old 128-token default truncated
    ours = Embedder(enc).embed(TEXTS)
    theirs = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS)
    assert _cos(ours, theirs).min() >= 0.9999
    short = Embedder(EncoderSpec.from_cli("text", str(minilm_dir), ["max_length=128"]).build()).embed(TEXTS)
    assert _cos(short, theirs)[2] < 0.999  # an explicit option still wins


def test_text_encoder_follows_cls_pooling(tmp_path: Path) -> None:
    folder = tiny_bert(tmp_path / "cls-bert")
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                  "pooling_mode_cls_token": True}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8}))
    enc = EncoderSpec("text", str(folder)).build()
    assert enc.pooling == "cls" and enc.max_length == 8
    texts = ["a red dog", "a blue cat on a red square near a green dog"]
    theirs = st.SentenceTransformer(str(folder), device="cpu").encode(texts)
    assert _cos(Embedder(enc).embed(texts), theirs).min() >= 0.9999
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(ValueError, match="Dense.*not run"):
        EncoderSpec("text", str(folder)).build()


def test_export_st_equals_anyalign_for_text_and_imu(minilm_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    text = EncoderSpec("text", str(minilm_dir))
    adapter = build_adapter("imu", EncoderSpec("imu"), embed_dim=384, embed_projector={"name": "mlp",
                                                                                       "hidden_dim": 128},
                            train_encoder=True, space={"text": text})
    adapter.save_pretrained(tmp_path / "imu")
    try:
        main(["export", "st", str(tmp_path / "imu"), "-o", str(tmp_path / "st"), "--json"])
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["routes"] == ["imu", "text"]

    model = st.SentenceTransformer(str(tmp_path / "st"), device="cpu", trust_remote_code=True)
    assert _cos(model.encode(TEXTS), Embedder.from_encoder(text).embed(TEXTS)).min() >= 0.9999
    rng = np.random.default_rng(0)
    windows = [rng.normal(size=(6, 100)).astype(np.float32) for _ in range(5)]
    want = Embedder.from_adapter(tmp_path / "imu").embed(windows)
    got = model.encode([{"imu": w} for w in windows])
    assert got.shape == (5, 384) and _cos(got, want).min() >= 0.9999
    scores = model.similarity(model.encode(["a person walking"]), got)  # cross-modal search in one model
    assert scores.shape == (1, 5)
