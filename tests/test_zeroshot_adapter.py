"""Zero-shot through a trained adapter: a real IMU adapter trained on BasicMotions (anyalign's trainer, real
MiniLM text anchor), reloaded with `from_adapter`, classifying the 40 held-out windows against activity names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anyalign.adapter import build_adapter
from anyalign.cli.main import main
from anyalign.datasets import load_uea
from anyalign.encoders.spec import EncoderSpec
from anyalign.zeroshot import ZeroShotClassifier

ROOT = Path(__file__).resolve().parents[1]
PHRASES = {"Badminton": "playing badminton", "Running": "running", "Standing": "standing still",
           "Walking": "walking"}  # the recipe's label_text: how the captions named each activity


@pytest.fixture(scope="module")
def imu_run(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Path:
    """A short run of the shipped BasicMotions recipe (IMU encoder from scratch + MLP head, bound to MiniLM), with
    a slimmer encoder so it trains in seconds."""
    if not (assets / "imu" / "BasicMotions").is_dir():
        pytest.skip("BasicMotions missing")
    from anyalign.align import load_recipe, train

    out = tmp_path_factory.mktemp("imu-run")
    recipe = load_recipe(ROOT / "configs" / "imu_text_contrastive.yaml",
                         ["train.max_steps=30", "eval.every=0", "eval.at_start=false", "train.save_every=1000",
                          "train.tensorboard=false", "adapters.imu.encoder={name: imu, options: {dim: 128, depth: 1}}",
                          "adapters.imu.embed_projector={name: mlp, hidden_dim: 256, dropout: 0.1}"])
    result = train(recipe, output_dir=out)
    assert Path(result.adapters["imu"]).is_dir() and (out / "recipe.yaml").is_file()
    return out


@pytest.fixture(scope="module")
def test_windows(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Path:
    """The 40 test windows as .npy files in class folders named by activity phrase."""
    ds = load_uea(assets / "imu" / "BasicMotions", split="test")
    root = tmp_path_factory.mktemp("basicmotions-test")
    for i, (x, label) in enumerate(zip(ds.x, ds.labels)):
        (root / PHRASES[label]).mkdir(exist_ok=True)
        np.save(root / PHRASES[label] / f"{i:03d}.npy", x)
    return root


def test_adapter_zero_shot_beats_chance(imu_run: Path, assets: Path, minilm_dir: Path, tmp_path: Path) -> None:
    ds = load_uea(assets / "imu" / "BasicMotions", split="test")
    labels = [PHRASES[c] for c in ds.classes]
    clf = ZeroShotClassifier.from_adapter(imu_run / "adapters" / "imu", labels, cache_dir=tmp_path, progress=False)
    assert clf.text.name == "text" and clf.query.modality == "imu"  # the anchor recorded in recipe.yaml
    preds = clf.classify(list(ds.x), top_k=4)  # in-memory [C, T] windows
    acc = np.mean([p.labels[0] == PHRASES[y] for p, y in zip(preds, ds.labels)])
    assert acc >= 0.6, f"BasicMotions zero-shot accuracy {acc:.3f}: not well above chance (0.25)"
    # the same text side named explicitly, and as a saved identity text adapter (an anchor adapter folder)
    explicit = ZeroShotClassifier.from_adapter(imu_run / "adapters" / "imu", labels,
                                               text=EncoderSpec("text", str(minilm_dir)), use_cache=False)
    assert torch.allclose(explicit.weights, clf.weights, atol=1e-5)
    anchor = build_adapter("text", EncoderSpec("text", str(minilm_dir)), embed_dim=384)
    anchor.save_pretrained(tmp_path / "text-anchor")
    via_adapter = ZeroShotClassifier.from_adapter(imu_run / "adapters" / "imu", labels,
                                                  text=str(tmp_path / "text-anchor"), use_cache=False)
    assert torch.allclose(via_adapter.weights, clf.weights, atol=1e-5)
    assert [p.labels for p in via_adapter.classify(list(ds.x[:5]))] == [p.labels for p in preds[:5]]


def test_cli_eval_and_classify_npy_windows(imu_run: Path, test_windows: Path, tmp_path: Path, capsys,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYALIGN_CACHE", str(tmp_path / "cache"))
    adapter = str(imu_run / "adapters" / "imu")
    main(["eval", "zeroshot", str(test_windows), "--adapter", adapter, "--probe", "-o", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert "top-1 accuracy" in out and "linear probe accuracy" in out and "standing still" in out
    report = json.loads((tmp_path / "rep" / "zeroshot_report.json").read_text())
    preds = report["predictions"]
    assert len(preds) == 40 and report["metrics"]["n"] == 40 and report["metrics"]["chance"] == 0.25
    assert report["metrics"]["top1"] == pytest.approx(np.mean([p["predicted"] == p["label"] for p in preds]))
    assert report["metrics"]["top1"] >= 0.6
    assert sum(sum(r) for r in report["confusion_matrix"]) == 40
    assert report["probe"]["method"] == "stratified 5-fold" and report["probe"]["accuracy"] >= 0.6
    assert (tmp_path / "rep" / "confusion_matrix.png").stat().st_size > 1000
    # classify: a corrupt window and a wrongly shaped one are reported, the rest classified
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 50), np.float32))
    np.save(tmp_path / "too-long.npy", np.zeros((6, 20_000), np.float32))  # decodes, but the network refuses it
    good = sorted((test_windows / "running").glob("*.npy"))[:2]
    labels = ",".join(PHRASES.values())
    with pytest.raises(SystemExit) as e:
        main(["classify", "--adapter", adapter, "--labels", labels, "-k", "2", "--json", str(good[0]),
              str(tmp_path / "corrupt.npy"), str(tmp_path / "wrong.npy"), str(tmp_path / "too-long.npy"),
              str(good[1])])
    assert e.value.code == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)["results"]
    assert [("error" in r) for r in results] == [False, True, True, True, False]
    assert "corrupt.npy" in results[1]["error"] and "6 channels" in results[2]["error"]
    assert "too-long.npy" in results[3]["error"] and "too long" in results[3]["error"]  # a per-file decode error
    assert len(results[0]["predictions"]) == 2 and "3 of 5 file(s) could not be classified" in captured.err
    with pytest.raises(SystemExit) as e:  # a modality the adapter cannot take
        main(["classify", "--adapter", adapter, "--labels", labels, str(tmp_path / "sound.wav")])
    assert e.value.code == 2 and "classifies imu files (.npy .csv)" in capsys.readouterr().err


def test_adapter_text_side_errors(imu_run: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "lonely"  # the adapter copied away from its run: it records its space itself (format v2)
    lonely.mkdir()
    for f in (imu_run / "adapters" / "imu").iterdir():
        (lonely / f.name).write_bytes(f.read_bytes())
    in_run = ZeroShotClassifier.from_adapter(imu_run / "adapters" / "imu", ["running", "walking"], use_cache=False)
    moved = ZeroShotClassifier.from_adapter(lonely, ["running", "walking"], use_cache=False)
    assert torch.allclose(moved.weights, in_run.weights)
    cfg = json.loads((lonely / "anyalign_adapter.json").read_text())
    cfg["space"] = {}  # as an adapter without a recorded space (and no recipe beside it)
    (lonely / "anyalign_adapter.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no text anchor recorded.*--text-encoder"):
        ZeroShotClassifier.from_adapter(lonely, ["running", "walking"])
    with pytest.raises(ValueError, match="do not share a space"):  # 32-d tiny CLIP text vs the 384-d adapter
        ZeroShotClassifier.from_adapter(lonely, ["running", "walking"],
                                        text=EncoderSpec("clip-text", None, {"model": "anyalign-tiny-vit"}))
    with pytest.raises(ValueError, match="expected a text encoder"):
        ZeroShotClassifier.from_adapter(lonely, ["running", "walking"], text=str(lonely))
