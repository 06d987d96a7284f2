"""Zero-shot plumbing without a model: dataset layouts (ESC-50, UrbanSound8K, csv, class folders), labels and
templates, metrics, the linear probe and the report files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from anyalign.datasets import read_labelled
from anyalign.zeroshot import (
    check_templates,
    classification_metrics,
    linear_probe,
    parse_labels,
    plot_confusion,
    write_report,
)
from anyalign.zeroshot.prompts import class_prompts, label_phrase

ESC_CLASSES = {0: "dog", 1: "rooster", 2: "chirping_birds"}


def make_esc50(root: Path, per_fold: int = 1, folds: int = 3, rate: int = 8000) -> Path:
    """A miniature ESC-50: meta/esc50.csv (the real column set) + short wav clips in audio/."""
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, folds + 1):
        for target, cat in ESC_CLASSES.items():
            for k in range(per_fold):
                name = f"{fold}-{100 + target}{k}-A-{target}.wav"
                t = np.arange(rate // 4) / rate
                wave = 0.3 * np.sin(2 * np.pi * (200 + 300 * target) * t) + 0.01 * rng.normal(size=t.shape)
                sf.write(root / "audio" / name, wave.astype(np.float32), rate)
                rows.append(f"{name},{fold},{target},{cat},{str(target == 0)},{100 + target},A")
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


def test_esc50_layout_and_folds(tmp_path: Path) -> None:
    root = make_esc50(tmp_path / "ESC-50-master", per_fold=2)
    ds = read_labelled(root)
    assert ds.layout == "esc50" and ds.classes == ["dog", "rooster", "chirping_birds"]  # ordered by target id
    assert len(ds) == 18 and ds.folds == ["1", "2", "3"]
    assert all(p.is_file() and p.parent == root / "audio" for p in ds.paths)
    assert ds.targets[:2] == [0, 0] and sorted(set(ds.targets)) == [0, 1, 2]
    two = read_labelled(root, folds=[2])
    assert len(two) == 6 and {it.fold for it in two.items} == {"2"} and two.classes == ds.classes
    assert read_labelled(root / "meta" / "esc50.csv").classes == ds.classes  # the csv itself also works
    with pytest.raises(ValueError, match="no fold 7"):
        read_labelled(root, folds=[7])


def test_esc50_bad_metadata_names_file_and_columns(tmp_path: Path) -> None:
    root = make_esc50(tmp_path / "esc")
    (root / "meta" / "esc50.csv").write_text("filename,fold,category\na.wav,1,dog\n")
    with pytest.raises(ValueError, match=r"esc50.csv.*missing column\(s\) target"):
        read_labelled(root)
    (root / "meta" / "esc50.csv").write_text("filename,fold,target,category\na.wav,1,0,dog\nb.wav,1,0,cat\n")
    with pytest.raises(ValueError, match="class id 0 is both 'dog' and 'cat'"):
        read_labelled(root)


def test_urbansound8k_layout(tmp_path: Path) -> None:
    root = tmp_path / "UrbanSound8K"
    (root / "metadata").mkdir(parents=True)
    rows = ["slice_file_name,fsID,start,end,salience,fold,classID,class"]
    for i, (cid, cls) in enumerate([(3, "dog_bark"), (0, "air_conditioner"), (3, "dog_bark"), (8, "siren")]):
        fold = 1 + i % 2
        (root / "audio" / f"fold{fold}").mkdir(parents=True, exist_ok=True)
        sf.write(root / "audio" / f"fold{fold}" / f"{i}-{cid}-0-0.wav", np.zeros(800, np.float32), 8000)
        rows.append(f"{i}-{cid}-0-0.wav,{i},0,1,1,{fold},{cid},{cls}")
    (root / "metadata" / "UrbanSound8K.csv").write_text("\n".join(rows) + "\n")
    ds = read_labelled(root)
    assert ds.layout == "urbansound8k" and ds.classes == ["air_conditioner", "dog_bark", "siren"]
    assert all(p.is_file() for p in ds.paths) and ds.paths[1].parent.name == "fold2"
    assert [it.label for it in read_labelled(root, folds=["2"]).items] == ["air_conditioner", "siren"]


def test_csv_manifest_and_class_folders(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "list.csv").write_text("path,label,fold\na.wav,rain,1\nsub/b.wav,siren,2\n/abs/c.wav,rain,2\n")
    ds = read_labelled(tmp_path / "m" / "list.csv")
    assert ds.layout == "csv" and ds.classes == ["rain", "siren"] and ds.folds == ["1", "2"]
    assert ds.paths == [tmp_path / "m" / "a.wav", tmp_path / "m" / "sub" / "b.wav", Path("/abs/c.wav")]
    (tmp_path / "m" / "bad.csv").write_text("file_name,cls\na.wav,rain\n")
    with pytest.raises(ValueError, match="bad.csv: a csv manifest needs a header"):
        read_labelled(tmp_path / "m" / "bad.csv")
    for cls in ("cat", "dog"):
        (tmp_path / "f" / cls / "deeper").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "f" / cls / "1.png")
        Image.new("RGB", (4, 4)).save(tmp_path / "f" / cls / "deeper" / "2.PNG")
        (tmp_path / "f" / cls / "notes.txt").write_text("x")
    ds = read_labelled(tmp_path / "f", extensions=[".png"])
    assert ds.layout == "folder" and ds.classes == ["cat", "dog"] and len(ds) == 4
    assert len(ds.skipped) == 2 and ds.folds == []
    with pytest.raises(ValueError, match="has no folds"):
        ds.select_folds(["1"])
    with pytest.raises(ValueError, match="no labelled files found with suffix .wav"):
        read_labelled(tmp_path / "f", extensions=[".wav"])
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        read_labelled(tmp_path / "missing")


def test_labels_and_templates(tmp_path: Path) -> None:
    assert parse_labels(" dog barking , rain,siren") == ["dog barking", "rain", "siren"]
    f = tmp_path / "labels.txt"
    f.write_text("# my classes\ndog\n\ncat  # pets\n")
    assert parse_labels("bird", f) == ["bird", "dog", "cat"]
    for bad, msg in [("", "empty label"), ("dog,,cat", "empty label"), ("dog", "at least two labels"),
                     ("dog,rain,Dog", "duplicate label"), ("dog_bark,dog bark", "duplicate label")]:
        with pytest.raises(ValueError, match=msg):
            parse_labels(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty.txt: no labels given"):
        parse_labels(None, empty)
    assert check_templates(["a {}", "b {}", "a {}"]) == ["a {}", "b {}"]
    for bad in ["no placeholder", "{} and {}", "a {label}", "a {} }"]:
        with pytest.raises(ValueError, match="exactly one"):
            check_templates([bad])
    assert label_phrase("chirping_birds") == "chirping birds"
    assert class_prompts(["dog_bark", "rain"], ["the sound of {}.", "{}"]) == [
        ["the sound of dog bark.", "dog bark"], ["the sound of rain.", "rain"]]


def test_metrics_by_hand() -> None:
    classes = ["a", "b", "c"]
    scores = np.array([[0.9, 0.1, 0.0],   # a -> a
                       [0.2, 0.7, 0.1],   # a -> b (a second)
                       [0.1, 0.8, 0.3],   # b -> b
                       [0.5, 0.1, 0.4]])  # c -> a (c second)
    m = classification_metrics(scores, [0, 0, 1, 2], classes)
    assert m["top1"] == pytest.approx(0.5) and m["top5"] == 1.0 and m["n"] == 4
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert m["per_class"]["a"] == {"accuracy": 0.5, "support": 2} and m["per_class"]["c"]["accuracy"] == 0.0
    assert m["mean_per_class_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)


def test_linear_probe_folds_and_stratified() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 12)
    centers = rng.normal(size=(3, 16)) * 3
    x = centers[y] + rng.normal(size=(36, 16))
    folds = [str(1 + i % 3) for i in range(36)]
    assert linear_probe(x, y, folds)["method"] == "leave-one-fold-out over 3 folds"
    assert linear_probe(x, y, folds)["accuracy"] > 0.9
    one = linear_probe(x, y, folds, test_folds=["2"])
    assert len(one["splits"]) == 1 and "test on ['2']" in one["method"]
    strat = linear_probe(x, y)
    assert strat["method"] == "stratified 5-fold" and strat["accuracy"] > 0.9
    noise = linear_probe(rng.normal(size=(36, 16)), y)  # no signal -> near chance, far from the separable case
    assert noise["accuracy"] < 0.7
    with pytest.raises(ValueError, match="only 1 item"):
        linear_probe(x[:4], [0, 1, 1, 2])


def test_report_files(tmp_path: Path) -> None:
    classes = ["dog", "rain"]
    m = classification_metrics(np.array([[0.9, 0.1], [0.3, 0.6], [0.8, 0.2]]), [0, 1, 1], classes)
    report = {"dataset": {"classes": classes}, "metrics": {k: v for k, v in m.items() if k != "per_class"},
              "confusion_matrix": m["confusion_matrix"]}
    paths = write_report(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["metrics"]["top1"] == pytest.approx(2 / 3)
    with Image.open(paths["png"]) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["confusion_matrix.png", "zeroshot_report.json"]
    big = plot_confusion(np.eye(40, dtype=int), [f"class_{i}" for i in range(40)], tmp_path / "big.png")
    with Image.open(big) as im:
        im.verify()
