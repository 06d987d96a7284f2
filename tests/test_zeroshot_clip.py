"""Zero-shot for images through a tiny random CLIP (the real open_clip classes, weights saved and reloaded):
class-embedding recipe and cache, per-file errors, modality checks, batching, windowing helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anyalign.cli.main import main
from anyalign.embedder import pool_windows
from anyalign.encoders.audio_io import split_windows
from anyalign.encoders.clip import register_model_configs
from anyalign.encoders.spec import EncoderSpec
from anyalign.io import save_weights
from anyalign.zeroshot import ZeroShotClassifier

TINY_CLIP = "anyalign-tiny-vit"
LABELS = ["red square", "blue square", "green square"]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_model_configs()
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.safetensors"
    save_weights(path, open_clip.create_model(TINY_CLIP).state_dict())
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("images")
    out = []
    for i, rgb in enumerate([(220, 10, 10), (10, 10, 220), (10, 220, 10), (200, 40, 40)]):
        out.append(root / f"{i}.png")
        Image.new("RGB", (32, 32), rgb).save(out[-1])
    return out


def _clf(clip_file: Path, tmp_path: Path, **kw) -> ZeroShotClassifier:
    labels, templates = kw.pop("labels", LABELS), kw.pop("templates", None)
    return ZeroShotClassifier.from_specs(EncoderSpec("clip-image", str(clip_file), {"model": TINY_CLIP}), labels,
                                         templates, cache_dir=tmp_path / "cache",
                                            progress=False, **kw)


def test_class_embeddings_recipe_and_cache(clip_file: Path, tmp_path: Path) -> None:
    templates = ["a photo of a {}.", "a drawing of a {}."]
    clf = _clf(clip_file, tmp_path, templates=templates)
    w = clf.weights  # [E, C]
    assert w.shape == (clf.text.dim, 3) and torch.allclose(w.norm(dim=0), torch.ones(3), atol=1e-5)
    # open_clip recipe by hand: per class, normalise each prompt embedding, average, renormalise
    tokenizer = open_clip.get_tokenizer(TINY_CLIP)
    model = clf.text.encoder.clip
    for c, label in enumerate(LABELS):
        with torch.no_grad():
            e = F.normalize(model.encode_text(tokenizer([t.format(label) for t in templates])), dim=-1)
        assert torch.allclose(w[:, c], F.normalize(e.mean(0), dim=-1), atol=1e-5)
    assert not clf.cache_hit and len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    again = _clf(clip_file, tmp_path, templates=templates)
    again.text.encoder.clip.token_embedding.weight.data.zero_()  # the cache must answer, not the text tower
    assert torch.equal(again.weights, w) and again.cache_hit
    other = _clf(clip_file, tmp_path, templates=templates[:1])  # other templates -> other key
    assert other.cache_key() != clf.cache_key() and _clf(clip_file, tmp_path, labels=LABELS[:2]).cache_key() != \
        clf.cache_key()
    random = ZeroShotClassifier.from_specs(EncoderSpec("clip-image", None, {"model": TINY_CLIP}), LABELS,
                                           cache_dir=tmp_path / "cache2")
    assert random.cache_key() is None  # random weights are never cached
    _ = random.weights
    assert not (tmp_path / "cache2").exists()


def test_classify_scores_batches_and_errors(clip_file: Path, images: list[Path], tmp_path: Path) -> None:
    clf = _clf(clip_file, tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    inputs = [str(images[0]), str(bad), str(images[1]), str(tmp_path / "missing.jpg"), str(images[2])]
    preds = clf.classify(inputs, top_k=2, batch_size=2)
    assert [p.ok for p in preds] == [True, False, True, False, True]
    assert "broken.png" in preds[1].error and "missing.jpg" in preds[3].error
    ref = torch.from_numpy(clf.query.embed([str(p) for p in images[:3]]))  # [3, E]
    for p, e in zip([preds[0], preds[2], preds[4]], ref):
        cos = e @ clf.weights
        assert p.labels == [LABELS[i] for i in cos.topk(2).indices.tolist()]
        assert np.allclose(p.scores, cos.topk(2).values.tolist(), atol=1e-5)
        assert p.probs[0] >= p.probs[1] and 0 < sum(p.probs) <= 1 + 1e-6
    alone = clf.classify([str(images[2])], top_k=3)[0]  # batch composition does not change a result
    assert alone.labels[0] == preds[4].labels[0] and alone.scores[0] == pytest.approx(preds[4].scores[0], abs=1e-5)
    arrays = clf.classify([np.asarray(Image.open(images[0]))], top_k=1)  # in-memory inputs work too
    assert arrays[0].source == "input 0" and arrays[0].labels == preds[0].labels[:1]


def test_modality_and_label_errors(clip_file: Path, images: list[Path], tmp_path: Path) -> None:
    clf = _clf(clip_file, tmp_path)
    with pytest.raises(ValueError, match=r"clip\.wav.*classifies image files"):
        clf.classify([str(images[0]), str(tmp_path / "clip.wav")])
    with pytest.raises(ValueError, match="duplicate label"):
        _clf(clip_file, tmp_path, labels=["cat", "dog", "cat"])
    with pytest.raises(ValueError, match="no labels given"):
        _clf(clip_file, tmp_path, labels=[])
    with pytest.raises(ValueError, match="must be a text encoder"):
        ZeroShotClassifier(clf.query, clf.query, LABELS)


def test_cli_classify_and_eval_images(clip_file: Path, images: list[Path], tmp_path: Path, capsys, assets: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYALIGN_CACHE", str(tmp_path / "cache"))
    model = ["--clip", str(clip_file), "--set", f"model={TINY_CLIP}"]
    main(["classify", *model, "--labels", ",".join(LABELS), "-k", "2", "--json", str(images[0]), str(images[1])])
    out = json.loads(capsys.readouterr().out)
    assert out["labels"] == LABELS and len(out["results"]) == 2
    assert [len(r["predictions"]) for r in out["results"]] == [2, 2]
    for argv, msg in [(["--labels", "a,a"], "duplicate label"), ([], "no labels"),
                      (["--labels", "a,b", "--clap", "x"], "exactly one of --encoder")]:
        with pytest.raises(SystemExit) as e:
            main(["classify", *model, *argv, str(images[0])])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    video = assets / "video" / "bikes.mp4"  # CLIP on video: the frames' image embeddings averaged
    main(["classify", *model, "--labels", "bikes,cars", "--set", "num_frames=2", "--json", str(video)])
    res = json.loads(capsys.readouterr().out)["results"][0]
    assert res["source"] == str(video) and {p["label"] for p in res["predictions"]} == {"bikes", "cars"}
    data = tmp_path / "data"
    for cls, idx in [("red", [0, 3]), ("blue", [1])]:
        (data / cls).mkdir(parents=True)
        for i in idx:
            (data / cls / images[i].name).write_bytes(images[i].read_bytes())
    (data / "red" / "README.txt").write_text("not an image: left out by suffix")
    main(["eval", "zeroshot", str(data), *model, "-o", str(tmp_path / "rep"), "--json"])
    res = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "rep" / "zeroshot_report.json").read_text())
    assert res["metrics"]["n"] == 3 and report["dataset"]["classes"] == ["blue", "red"]
    hits = [p["predicted"] == p["label"] for p in report["predictions"]]
    assert res["metrics"]["top1"] == pytest.approx(np.mean(hits))


def test_window_helpers() -> None:
    assert [len(w) for w in split_windows(np.arange(24, dtype=np.float32), 10)] == [10, 10]  # short tail dropped
    assert [len(w) for w in split_windows(np.arange(25), 10)] == [10, 10, 5]  # half a window is kept
    assert [len(w) for w in split_windows(np.arange(7), 10)] == [7]
    emb = F.normalize(torch.randn(5, 4), dim=-1)
    pooled = pool_windows(emb, [2, 1, 2])
    assert pooled.shape == (3, 4) and torch.allclose(pooled[1], emb[2])
    assert torch.allclose(pooled[0], F.normalize(emb[:2].mean(0), dim=0))
