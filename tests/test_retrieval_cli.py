"""The retrieval CLI end to end, in-process: `embed` (tiny BERT over a text file, tiny image adapter over PNGs),
`index build|info|add|delete|train|merge`, `search --text|--file|--vector`, `eval retrieval`, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _cli import run_captured as run
from _retrieval_helpers import clustered, image_corpus, tiny_bert, tiny_image_adapter

from anyalign.retrieval import Retriever

LINES = ["a red square", "a blue circle", "the dog", "a photo of the cat", "a green video", "the yellow sound",
         "a black dog", "white circle of the square"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


def test_text_corpus_embed_build_search(tmp_path, capsys, bert) -> None:
    (tmp_path / "captions.txt").write_text("\n".join(LINES) + "\n\n")
    code, out, err = run(capsys, "embed", tmp_path / "captions.txt", "--encoder", "text", "--pretrained", bert,
                         "-o", tmp_path / "emb", "--batch-size", "3", "--shard-size", "5")
    assert code == 0, err
    manifest = json.loads((tmp_path / "emb" / "embeddings.json").read_text())
    assert manifest["count"] == 8 and [s["count"] for s in manifest["shards"]] == [5, 3]
    assert manifest["embedders"]["text"] == {"encoder": {"name": "text", "pretrained": str(bert), "options": {},
                                                         "autocast": None}, "modality": "text"}

    code, out, err = run(capsys, "index", "build", tmp_path / "emb", "-o", tmp_path / "idx")
    assert code == 0 and "built Flat over 8 vectors" in out, err
    code, out, err = run(capsys, "search", tmp_path / "idx", "--text", "a black dog", "-k", "3", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert len(hits) == 3 and hits[0]["caption"] == "a black dog" and hits[0]["score"] == pytest.approx(1, abs=1e-4)
    assert hits[0]["source"].endswith("captions.txt:7") and hits[0]["modality"] == "text"
    code, out, _ = run(capsys, "search", tmp_path / "idx", "--text", "the dog", "-k", "2")
    assert code == 0 and out.splitlines()[0].split()[-2:] == ["the", "dog"]

    code, out, _ = run(capsys, "index", "info", tmp_path / "idx", "--json")
    info = json.loads(out)
    assert info["ntotal"] == 8 and info["factory"] == "Flat" and info["modality"] == "text"

    # incremental add, then delete by source and by id
    (tmp_path / "more.txt").write_text("a white cat\n")
    assert run(capsys, "embed", tmp_path / "more.txt", "--encoder", "text", "--pretrained", bert,
               "-o", tmp_path / "emb2")[0] == 0
    code, out, err = run(capsys, "index", "add", tmp_path / "idx", tmp_path / "emb2")
    assert code == 0 and "now 9 vectors" in out, err
    code, out, _ = run(capsys, "search", tmp_path / "idx", "--text", "a white cat", "-k", "1", "--json")
    assert json.loads(out)[0]["id"] == 8
    code, out, _ = run(capsys, "index", "delete", tmp_path / "idx", "--id", "8", "--source",
                       f"{(tmp_path / 'captions.txt').resolve()}:1")
    assert code == 0 and "deleted 2 vectors" in out
    code, out, _ = run(capsys, "search", tmp_path / "idx", "--text", "a white cat", "-k", "10", "--json")
    ids = [h["id"] for h in json.loads(out)]
    assert len(ids) == 7 and 8 not in ids and 0 not in ids


def test_image_corpus_and_file_queries(tmp_path, capsys, bert) -> None:
    corpus = image_corpus(tmp_path / "media")
    (tmp_path / "media" / "broken.png").write_bytes(b"not an image")
    adapter = tiny_image_adapter(tmp_path / "img")
    code, out, err = run(capsys, "embed", corpus, tmp_path / "media" / "broken.png", "--adapter", adapter,
                         "-o", tmp_path / "emb")
    assert code == 0 and "embedded 6 image inputs" in out and "1 failed" in out, err
    failures = json.loads((tmp_path / "emb" / "embeddings.json").read_text())["failures"]
    assert failures[0]["source"].endswith("broken.png")
    code, out, err = run(capsys, "index", "build", tmp_path / "emb", "-o", tmp_path / "idx",
                         "--text-encoder", "text", "--text-pretrained", bert)
    assert code == 0, err
    code, out, err = run(capsys, "search", tmp_path / "idx", "--file", tmp_path / "media" / "green.png", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert len(hits) == 6 and hits[0]["caption"] == "a green square" and hits[0]["colour"] == "green"
    code, out, err = run(capsys, "search", tmp_path / "idx", "--text", "a green square", "-k", "2", "--json")
    assert code == 0 and len(json.loads(out)) == 2, err  # text -> tiny BERT (32-d) -> same index
    np.save(tmp_path / "q.npy", np.load(tmp_path / "emb" / "embeddings-00000.npy")[4])
    code, out, _ = run(capsys, "search", tmp_path / "idx", "--vector", tmp_path / "q.npy", "-k", "1", "--json")
    assert json.loads(out)[0]["caption"] == "a black square"
    code, _, err = run(capsys, "search", tmp_path / "idx", "--file", tmp_path / "media" / "corpus.jsonl")
    assert code == 2 and "no embedder of this index reads .jsonl files" in err
    # an index of another width cannot be queried with these embedders
    np.save(tmp_path / "wide.npy", clustered(50, 48))
    run(capsys, "index", "build", tmp_path / "wide.npy", "-o", tmp_path / "wide")
    code, _, err = run(capsys, "search", tmp_path / "wide", "--text", "x", "--text-encoder", "text",
                       "--text-pretrained", bert)
    assert code == 2 and "dimension mismatch" in err


def test_sharded_cli_and_eval(tmp_path, capsys) -> None:
    x = clustered(3000, 16, seed=2)
    np.save(tmp_path / "corpus.npy", x)
    np.save(tmp_path / "captions.npy", x + 0.01 * np.random.default_rng(0).standard_normal((3000, 16)))  # row i <-> i
    assert run(capsys, "index", "train", tmp_path / "corpus.npy", "-o", tmp_path / "trained",
               "--factory", "IVF32,Flat")[0] == 0
    for r in range(2):
        code, _, err = run(capsys, "index", "build", tmp_path / "corpus.npy", "-o", tmp_path / f"p{r}",
                           "--trained", tmp_path / "trained", "--rank", r, "--world-size", 2)
        assert code == 0, err
    code, out, err = run(capsys, "index", "merge", tmp_path / "p0", tmp_path / "p1", "-o", tmp_path / "merged",
                         "--ondisk")
    assert code == 0 and "3000 vectors" in out, err
    assert run(capsys, "index", "merge", tmp_path / "p0", tmp_path / "p1", "-o", tmp_path / "set")[0] == 0
    for idx in ("merged", "set"):
        code, out, err = run(capsys, "eval", "retrieval", tmp_path / "captions.npy", tmp_path / idx, "--json")
        assert code == 0, err
        assert json.loads(out)["recall@10"] >= 0.95
    code, out, _ = run(capsys, "eval", "retrieval", tmp_path / "captions.npy", tmp_path / "corpus.npy", "-k", "1,5")
    assert code == 0 and "recall@1" in out and "mAP" in out


def test_minilm_semantic_text_search(tmp_path, capsys, minilm_dir) -> None:
    """Real sentence encoder (all-MiniLM-L6-v2): paraphrased queries find the right caption."""
    captions = ["a dog playing fetch in the park", "a bowl of hot tomato soup", "a red sports car on the highway",
                "people dancing at a rock concert", "a sailing boat on a calm lake", "a cat sleeping on a sofa"]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": c, "n": i}) + "\n" for i, c in enumerate(captions)))
    assert run(capsys, "embed", tmp_path / "c.jsonl", "--encoder", "text", "--pretrained", minilm_dir,
               "-o", tmp_path / "emb")[0] == 0
    assert run(capsys, "index", "build", tmp_path / "emb", "-o", tmp_path / "idx")[0] == 0
    retriever = Retriever(tmp_path / "idx")  # the Python API, embedder rebuilt from the index's record
    for query, want in [("a puppy chasing a ball on the grass", 0), ("fast automobile", 2),
                        ("kitten napping on the couch", 5), ("live music crowd", 3)]:
        assert retriever.search(query, k=1)[0].metadata["n"] == want, query


def test_cli_errors(tmp_path, capsys) -> None:
    np.save(tmp_path / "x.npy", clustered(100, 8))
    code, _, err = run(capsys, "index", "build", tmp_path / "x.npy", "-o", tmp_path / "idx", "--factory", "Bogus12")
    assert code == 2 and "unknown or invalid faiss factory string 'Bogus12'" in err
    assert not (tmp_path / "idx").exists()
    np.save(tmp_path / "empty.npy", np.zeros((0, 8), np.float32))
    code, _, err = run(capsys, "index", "build", tmp_path / "empty.npy", "-o", tmp_path / "idx")
    assert code == 2 and "empty corpus" in err
    assert run(capsys, "index", "build", tmp_path / "x.npy", "-o", tmp_path / "idx")[0] == 0
    code, _, err = run(capsys, "search", tmp_path / "idx")
    assert code == 2 and "exactly one of --text, --file or --vector" in err
    np.save(tmp_path / "q.npy", np.ones(5, np.float32))
    code, _, err = run(capsys, "search", tmp_path / "idx", "--vector", tmp_path / "q.npy")
    assert code == 2 and "dimension mismatch" in err
    code, _, err = run(capsys, "search", tmp_path / "idx", "--text", "hello")
    assert code == 2 and "no text embedder" in err
    (tmp_path / "idx" / "index.faiss").write_bytes(b"\x00" * 64)
    code, _, err = run(capsys, "search", tmp_path / "idx", "--vector", tmp_path / "q.npy")
    assert code == 2 and "corrupt or unreadable faiss index" in err
    code, _, err = run(capsys, "embed", tmp_path / "x.npy", "-o", tmp_path / "e")
    assert code == 2 and "--adapter DIR or --encoder NAME" in err
