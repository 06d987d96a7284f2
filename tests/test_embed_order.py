"""`anyalign embed` of sentences: batches are sorted by length (less padding) yet the shards keep input order, and
the vectors equal one-by-one embedding; failed inputs are skipped without shifting the rows after them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from _retrieval_helpers import WORDS, tiny_bert

from anyalign.retrieval import as_embedder, embed_to_folder, open_source


def test_text_embedding_is_length_sorted_and_kept_in_input_order(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 30)))) for _ in range(150)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    emb = as_embedder({"encoder": "text", "pretrained": str(tiny_bert(tmp_path / "bert"))})
    seen: list[list[int]] = []
    real = type(emb).embed_loaded

    def spy(self, loaded):  # noqa: ANN001, ANN202
        seen.append([len(t) for ws in loaded for t in ws])
        return real(self, loaded)

    monkeypatch.setattr(type(emb), "embed_loaded", spy)
    embed_to_folder([tmp_path / "in.jsonl"], tmp_path / "out", emb, batch_size=8)
    monkeypatch.undo()
    lengths = [n for batch in seen for n in batch]
    assert sorted(lengths) == sorted(len(t) for t in texts) and lengths == sorted(lengths)  # one window: sorted
    src = open_source(tmp_path / "out")
    vecs = np.concatenate([b.vectors for b in src.batches()])
    meta = [m for b in src.batches() for m in b.metadata]
    assert [m["n"] for m in meta] == list(range(len(texts))) and [m["caption"] for m in meta] == texts
    one = np.concatenate([emb.embed([t]) for t in texts])
    np.testing.assert_allclose(vecs, one, atol=1e-5)
