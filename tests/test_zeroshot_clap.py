"""CLAP zero-shot audio classification wired end to end on a tiny random CLAP (the real transformers classes,
saved with save_pretrained and loaded back through `pretrained=`), real freedesktop sounds, and an ESC-50
miniature evaluated through the CLI (report json + confusion-matrix PNG)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from helpers_clap import make_tiny_clap
from PIL import Image
from test_zeroshot_data import ESC_CLASSES, make_esc50

from anyalign.cli.main import main
from anyalign.zeroshot import ZeroShotClassifier
from anyalign.zeroshot.prompts import default_templates

LABELS = ["dog barking", "rain", "siren", "a bell ringing"]
TEMPLATES = ["the sound of {}.", "{}"]


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clap(tmp_path_factory.mktemp("clap"))


@pytest.fixture(scope="module")
def sounds(assets: Path) -> list[Path]:
    files = sorted((assets / "audio" / "freedesktop").glob("*.oga"))
    if len(files) < 5:
        pytest.skip("freedesktop sounds missing")
    return files[:5]


@pytest.fixture()
def clf(clap_dir: Path, tmp_path: Path) -> ZeroShotClassifier:
    return ZeroShotClassifier.from_clap(LABELS, TEMPLATES, pretrained=str(clap_dir), cache_dir=tmp_path / "cache",
                                        progress=False)


def test_class_embeddings_are_clap_text_features(clf: ZeroShotClassifier, clap_dir: Path) -> None:
    """The classifier equals CLAP's own text features, prompt-ensembled (open_clip recipe)."""
    from transformers import AutoTokenizer, ClapModel

    model = ClapModel.from_pretrained(clap_dir).eval()
    tok = AutoTokenizer.from_pretrained(clap_dir)
    for c, label in enumerate(LABELS):
        batch = tok([t.format(label) for t in TEMPLATES], padding=True, return_tensors="pt")
        with torch.no_grad():
            feats = model.get_text_features(**batch)
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        ref = F.normalize(F.normalize(feats, dim=-1).mean(0), dim=0)
        assert torch.allclose(clf.weights[:, c], ref, atol=1e-4)
    assert clf.query.modality == "audio" and clf.text.modality == "text" and clf.query.dim == clf.text.dim


def test_classify_real_sounds_with_a_corrupt_file(clf: ZeroShotClassifier, sounds: list[Path],
                                                  tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    inputs = [str(sounds[0]), str(corrupt), *map(str, sounds[1:])]
    preds = clf.classify(inputs, top_k=3, batch_size=2)
    assert [p.ok for p in preds] == [True, False, True, True, True, True]
    assert "corrupt.wav" in preds[1].error
    parallel = clf.classify(inputs, top_k=3, batch_size=4, num_workers=2)  # decode + mel features in workers
    assert [p.labels for p in parallel] == [p.labels for p in preds] and parallel[1].error == preds[1].error
    emb = torch.from_numpy(clf.query.embed([str(s) for s in sounds]))  # [5, E], without the pipeline
    for p, e in zip([preds[0], *preds[2:]], emb):
        cos = e @ clf.weights
        assert p.labels == [LABELS[i] for i in cos.topk(3).indices.tolist()]
        assert np.allclose(p.scores, cos.topk(3).values.tolist(), atol=1e-4)


def test_long_audio_is_windowed_and_pooled(clf: ZeroShotClassifier, tmp_path: Path) -> None:
    """A clip longer than CLAP's 10 s is cut into windows whose normalised embeddings are averaged."""
    enc = clf.query.encoder
    rate, win = enc.sample_rate, enc.window_samples
    t = np.arange(int(2.6 * win)) / rate
    freq = np.where(t < win / rate, 300.0, np.where(t < 2 * win / rate, 1200.0, 5000.0))  # a new tone per window
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, wave, rate, subtype="FLOAT")
    whole = torch.from_numpy(clf.query.embed([str(path)]))[0]
    parts = torch.from_numpy(clf.query.embed([wave[:win], wave[win:2 * win], wave[2 * win:]]))  # [3, E]
    assert torch.allclose(whole, F.normalize(parts.mean(0), dim=0), atol=1e-4)
    assert not torch.allclose(parts[0], parts[2], atol=1e-3)  # the windows differ, so pooling matters
    pred = clf.classify([str(path)], top_k=2)[0]
    assert pred.ok and pred.scores[0] == pytest.approx(float((whole @ clf.weights).max()), abs=1e-4)


def test_cli_label_and_modality_errors(clap_dir: Path, sounds: list[Path], tmp_path: Path, capsys,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYALIGN_CACHE", str(tmp_path / "cache"))
    base = ["classify", "--clap", str(clap_dir)]
    for argv, msg in [(["--labels", ""], "empty label"), (["--labels", "rain,siren,rain"], "duplicate label"),
                      (["--labels", "rain,"], "empty label"), ([], "no labels")]:
        with pytest.raises(SystemExit) as e:
            main([*base, *argv, str(sounds[0])])
        assert e.value.code == 2 and msg in capsys.readouterr().err, argv
    empty = tmp_path / "labels.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(SystemExit):
        main([*base, "--labels-file", str(empty), str(sounds[0])])
    assert "no labels given" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    with pytest.raises(SystemExit) as e:
        main([*base, "--labels", "rain,siren", str(sounds[0]), str(tmp_path / "photo.jpg")])
    assert e.value.code == 2 and "photo.jpg: clap-audio classifies audio files" in capsys.readouterr().err
    main([*base, "--labels", "rain,siren", "-t", "the sound of {}", "-t", "{}", str(sounds[0])])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("calibration:") and out[1] == "cosine scores, all 2 labels per file"  # no p 1.000
    assert out[2] == str(sounds[0]) and len(out) == 5 and " p " not in out[3]
    main([*base, "--labels", "rain,siren", "--temperature", "0.05", str(sounds[0])])  # a calibrated temperature
    out = capsys.readouterr().out.splitlines()
    assert "softmax at temperature 0.05" in out[1] and " p " in out[3]


def test_esc50_miniature_eval_report(clap_dir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYALIGN_CACHE", str(tmp_path / "cache"))
    root = make_esc50(tmp_path / "ESC-50-master", per_fold=2, folds=3)
    (root / "audio" / "1-99999-A-0.wav").write_bytes(b"not audio")  # listed in the csv, unreadable
    meta = root / "meta" / "esc50.csv"
    meta.write_text(meta.read_text() + "1-99999-A-0.wav,1,0,dog,True,99999,A\n")
    out = tmp_path / "report"
    main(["eval", "zeroshot", str(root), "--clap", str(clap_dir), "--probe", "-o", str(out), "--json"])
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "zeroshot_report.json").read_text())
    assert report["dataset"]["layout"] == "esc50" and report["dataset"]["classes"] == list(ESC_CLASSES.values())
    preds = report["predictions"]
    assert len(preds) == 18 and report["metrics"]["n"] == 18 and report["metrics"]["n_failed"] == 1
    assert report["errors"][0]["path"].endswith("1-99999-A-0.wav")
    top1 = np.mean([p["predicted"] == p["label"] for p in preds])
    top5 = np.mean([p["label"] in [t["label"] for t in p["top"]] for p in preds])
    assert printed["metrics"]["top1"] == pytest.approx(top1) and report["metrics"]["top5"] == pytest.approx(top5)
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == 18 and np.trace(cm) == round(top1 * 18)
    for i, c in enumerate(ESC_CLASSES.values()):
        mine = [p for p in preds if p["label"] == c]
        assert report["per_class"][c]["support"] == len(mine) == cm[i].sum()
        assert report["per_class"][c]["accuracy"] == pytest.approx(np.mean([p["predicted"] == c for p in mine]))
    assert report["per_fold_top1"].keys() == {"1", "2", "3"}
    assert report["probe"]["method"] == "leave-one-fold-out over 3 folds" and len(report["probe"]["splits"]) == 3
    assert report["model"]["labels"] == list(ESC_CLASSES.values())
    assert report["model"]["templates"] == default_templates("audio")  # the audio prompt ensemble by default
    with Image.open(out / "confusion_matrix.png") as im:
        assert im.format == "PNG" and min(im.size) > 100
        im.verify()
    # one fold only: zero-shot on fold 2, the probe trains on folds 1 and 3
    main(["eval", "zeroshot", str(root), "--clap", str(clap_dir), "--fold", "2", "--probe", "-o", str(out)])
    text = capsys.readouterr().out
    report = json.loads((out / "zeroshot_report.json").read_text())
    assert report["metrics"]["n"] == 6 and {p["fold"] for p in report["predictions"]} == {"2"}
    assert report["dataset"]["folds_evaluated"] == ["2"] and "test on ['2']" in report["probe"]["method"]
    assert "top-1 accuracy" in text and "folds 2" in text
    with pytest.raises(SystemExit) as e:
        main(["eval", "zeroshot", str(root), "--clap", str(clap_dir), "--fold", "9", "-o", str(out)])
    assert e.value.code == 2 and "no fold 9" in capsys.readouterr().err
