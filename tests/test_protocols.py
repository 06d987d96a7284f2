"""Zero-shot protocols: other phrasings (ratio to the closed set), unseen classes (seen / unseen / H), the trainer
never seeing unseen classes (checked on the batches it actually trained on) and the report fields of
`anyalign eval zeroshot --labels-file` / unseen classes read from the adapter's recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anyalign.align import load_recipe
from anyalign.align.trainer import Trainer
from anyalign.cli.main import main
from anyalign.zeroshot.protocols import (
    phrasing_protocol,
    read_phrasings,
    recorded_seen_classes,
    seen_unseen_curve,
    tune_calibration,
    unseen_protocol,
)

CLASSES = ["jumping", "running", "standing", "walking"]
SEEN = ["jumping", "running", "standing"]


def test_unseen_protocol_is_generalised_zero_shot() -> None:
    classes = ["a", "b", "c"]
    y = [0, 0, 1, 1, 2, 2]
    scores = torch.tensor([[1, 0, 0], [1, 0, 0],  # a: both right
                           [0, 1, 0], [1, 0, 0],  # b: one of two
                           [0, 0, 1], [0, 1, 0.5]], dtype=torch.float32)  # c (unseen): one right, one to b
    r = unseen_protocol(scores, y, classes, seen=["a", "b"])
    assert r["unseen_classes"] == ["c"] and r["seen_accuracy"] == pytest.approx(0.75)
    assert r["unseen_accuracy"] == pytest.approx(0.5)
    assert r["harmonic_mean"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    assert r["unseen_only_top1"] == 1.0 and r["chance_unseen_only"] == 1.0  # one unseen class: trivially right
    assert r["chance_all"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="not classes"):
        unseen_protocol(scores, y, classes, seen=["z"])
    with pytest.raises(ValueError, match="every evaluation class"):
        unseen_protocol(scores, y, classes, seen=classes)


def _brute_force_curve(scores: torch.Tensor, y: list[int], classes: list[str], seen: list[str],
                       gammas: np.ndarray) -> list[tuple[float, float]]:
    """The seen / unseen accuracies by re-running the protocol at each gamma (what the sweep must reproduce)."""
    out = []
    for g in gammas:
        r = unseen_protocol(scores, y, classes, seen, calibration=float(g))
        out.append((r["seen_accuracy"], r["unseen_accuracy"]))
    return out


def test_seen_unseen_curve_matches_calibrated_protocol() -> None:
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c", "d", "e"]
    seen = ["a", "b", "c"]
    y = rng.integers(0, 5, size=80).tolist()
    scores = torch.from_numpy(rng.normal(size=(80, 5)).astype(np.float32))
    scores[torch.arange(80), torch.tensor(y)] += 2.0  # informative scores
    scores[:, :3] += 3.0  # the usual bias: seen classes score higher
    curve = seen_unseen_curve(scores, y, classes, seen)
    g = curve["gamma"]
    assert np.isneginf(g[0]) and np.all(np.diff(g[1:]) > 0)
    assert curve["unseen"][0] == 0.0 and curve["seen"][-1] == 0.0  # the two ends: everything seen / unseen
    probes = np.concatenate([[g[1] - 1.0], (g[1:-1] + g[2:]) / 2, [g[-1] + 1.0]])  # between the breakpoints
    want = _brute_force_curve(scores, y, classes, seen, probes)
    got = list(zip(curve["seen"], curve["unseen"]))
    assert np.allclose(got, want)
    assert 0.0 < curve["ausuc"] <= 1.0
    r0 = unseen_protocol(scores, y, classes, seen)
    assert r0["unseen_accuracy"] < 0.3  # biased to seen at gamma 0
    gamma = tune_calibration(scores, y, classes, seen)
    r = unseen_protocol(scores, y, classes, seen, calibration=gamma)
    assert r["calibration"] == gamma and r["harmonic_mean"] > r0["harmonic_mean"] + 0.1
    assert r["harmonic_mean"] == pytest.approx(r["oracle"]["harmonic_mean"])  # tuned on the same data: the bound
    assert r["ausuc"] == pytest.approx(curve["ausuc"]) and len(r["curve"]["seen"]) == len(g)


def test_seen_classes_unknown_when_some_sources_are_unrestricted(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from anyalign.zeroshot import protocols

    warned: list[str] = []  # recorded on the module's logger itself (CLI tests may stop propagation to root)
    monkeypatch.setattr(protocols.logger, "warning", lambda msg, *args: warned.append(msg % args))
    run = tmp_path / "run"
    (run / "adapters" / "imu").mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump({"data": {"train": [{"kind": "uea", "classes": ["a", "b"]},
                                                                        {"kind": "jsonl"}]}}))
    assert recorded_seen_classes(run / "adapters" / "imu") is None
    assert len(warned) == 1 and "--seen-classes" in warned[0]
    (run / "recipe.yaml").write_text(yaml.safe_dump({"data": {"train": [{"kind": "uea", "classes": ["b", "a"]}]}}))
    assert recorded_seen_classes(run / "adapters" / "imu") == ["a", "b"]


def test_phrasing_file_and_ratio(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"training": {"a": "alpha", "b": "beta"},
                                    "other": {"a": ["al", "alf"], "b": "be"}}))
    sets = read_phrasings(path, ["a", "b"])
    assert sets["other"]["a"] == ["al", "alf"] and sets["training"]["b"] == ["beta"]
    table = {"x alpha": [1.0, 0.0], "x beta": [0.0, 1.0], "x al": [1.0, 0.0], "x alf": [0.9, 0.0], "x be": [1.0, -0.1]}

    def embed(texts: list[str]) -> torch.Tensor:
        return torch.tensor([table[t] for t in texts])

    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    r = phrasing_protocol(emb, [0, 1], ["a", "b"], embed, ["x {}"], sets, closed_set_top1=1.0)
    assert r["baseline"] == "training" and r["sets"]["training"]["top1"] == 1.0
    assert r["sets"]["other"]["top1"] == 0.5 and r["sets"]["other"]["ratio"] == 0.5  # "be" lands on class a
    assert r["mean_ratio"] == 0.5 and r["chance"] == 0.5
    path.write_text(yaml.safe_dump({"other": {"a": "al"}}))
    with pytest.raises(ValueError, match="no phrase for class"):
        read_phrasings(path, ["a", "b"])


def _windows(root: Path, n: int = 48) -> tuple[Path, Path]:
    """Class-dependent 6x32 windows: a jsonl manifest (training) and class folders of .npy files (evaluation)."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 4 * np.pi, 32, dtype=np.float32)
    lines = []
    for i in range(n):
        c = i % len(CLASSES)
        x = np.stack([np.sin(t * (c + 1) + k) * (c + 0.5) for k in range(6)]) + rng.normal(0, 0.1, (6, 32))
        (root / "eval" / CLASSES[c]).mkdir(parents=True, exist_ok=True)
        np.save(root / f"w{i:03d}.npy", x.astype(np.float32))
        np.save(root / "eval" / CLASSES[c] / f"w{i:03d}.npy", x.astype(np.float32))
        lines.append(json.dumps({"imu": f"w{i:03d}.npy", "label": CLASSES[c], "key": f"w{i}"}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl", root / "eval"


def test_unseen_classes_never_reach_the_trainer_and_the_report(tmp_path: Path, minilm_dir: Path) -> None:
    manifest, eval_dir = _windows(tmp_path)
    recipe = {
        "name": "t",
        "adapters": {"imu": {"encoder": {"name": "imu", "options": {"dim": 32, "depth": 1, "heads": 2}},
                             "train_encoder": True, "embed_projector": {"name": "mlp", "hidden_dim": 32}}},
        "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm_dir)}, "loss": "soft"}},
        "data": {"train": [{"kind": "jsonl", "path": str(manifest), "classes": SEEN,
                            "caption_templates": ["a person {label}.", "someone is {label}."],
                            "captions": {"synonyms": {"running": ["jogging"], "walking": ["strolling"]}}}],
                 "eval": [{"kind": "jsonl", "path": str(manifest), "caption_templates": ["a person {label}."]}]},
        "train": {"batch_size": 8, "max_steps": 10, "lr": 1e-3, "save_every": 100, "log_every": 5,
                  "tensorboard": False},
        "eval": {"at_start": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    trainer = Trainer(load_recipe(path), output_dir=tmp_path / "run")
    seen_batches: list = []
    trainer.model.register_forward_pre_hook(lambda mod, args: seen_batches.append(args[0]))
    trainer.fit()
    assert len(seen_batches) == 10
    labels = {trainer.data.train_set.labels[i] for b in seen_batches for i in b.labels.tolist()}
    keys = {k for b in seen_batches for k in b.keys}
    captions = {c for b in seen_batches for c in b.captions}
    assert labels == set(SEEN) and -1 not in {i for b in seen_batches for i in b.labels.tolist()}
    walking_keys = {f"w{i}" for i in range(48) if CLASSES[i % 4] == "walking"}
    assert not keys & walking_keys  # the unseen class's items never reached the loss
    assert not any("walk" in c or "stroll" in c for c in captions)  # nor its captions or synonyms
    assert "a person jogging." in captions or "someone is jogging." in captions  # the synonyms were used
    used = json.loads((tmp_path / "run" / "captions.json").read_text())
    assert used["train"][0]["classes"] == SEEN and "walking" not in used["train"][0]["per_class"]
    assert set(used["eval"][0]["class_prompts"]) == set(CLASSES)

    phrasings = tmp_path / "phrasings.yaml"
    phrasings.write_text(yaml.safe_dump({"other": {"jumping": "hopping", "running": "going for a run",
                                                   "standing": "staying still", "walking": "going on foot"}}))
    out = tmp_path / "report"
    main(["eval", "zeroshot", str(eval_dir), "--adapter", str(tmp_path / "run" / "adapters" / "imu"),
          "-t", "a person {}.", "--labels-file", str(phrasings), "-o", str(out)])
    report = json.loads((out / "zeroshot_report.json").read_text())
    p = report["protocols"]
    assert p["closed_set_top1"] == pytest.approx(report["metrics"]["top1"])  # the same embeddings
    other = p["phrasings"]["sets"]["other"]
    assert 0.0 <= other["top1"] <= 1.0 and other["ratio"] == pytest.approx(other["top1"] / p["closed_set_top1"])
    u = p["unseen"]  # seen classes read from the run's recipe.yaml
    assert u["seen_classes"] == SEEN and u["unseen_classes"] == ["walking"]
    assert {"seen_accuracy", "unseen_accuracy", "harmonic_mean", "unseen_only_top1", "chance_all", "ausuc",
            "oracle", "curve", "calibration"} <= set(u)
    assert (out / "protocols.png").stat().st_size > 1000
    gamma = u["oracle"]["calibration"]  # as if this were validation data: the CLI applies a given gamma
    main(["eval", "zeroshot", str(eval_dir), "--adapter", str(tmp_path / "run" / "adapters" / "imu"),
          "-t", "a person {}.", "--calibration", str(gamma), "-o", str(tmp_path / "cal")])
    cal = json.loads((tmp_path / "cal" / "zeroshot_report.json").read_text())["protocols"]["unseen"]
    assert cal["calibration"] == pytest.approx(gamma)
    assert cal["harmonic_mean"] == pytest.approx(u["oracle"]["harmonic_mean"], abs=1e-6)


PHRASES = {"jumping": "jumping up and down", "running": "running fast", "standing": "standing still"}


def test_rotated_calibration_pools_every_pseudo_unseen_rotation() -> None:
    """gamma maximises the mean H over rotations (each rotation: other seen classes), not one rotation's H."""
    from anyalign.zeroshot.protocols import tune_calibration_rotated

    classes = ["a", "b", "c"]
    y = [0, 0, 1, 1, 2, 2]
    runs = []
    for held in range(3):  # the held-out class's items score 0.2 below the best seen class: gamma 0.2 fixes it
        s = torch.zeros(6, 3)
        for i, t in enumerate(y):
            s[i, t] = 0.5
            if t == held:
                s[i, (t + 1) % 3] = 0.7
        runs.append((s, y, classes, [c for i, c in enumerate(classes) if i != held]))
    r = tune_calibration_rotated(runs)
    assert 0.0 < r["calibration"] < 0.5 and r["mean_harmonic_mean"] == pytest.approx(1.0)
    assert r["mean_harmonic_mean_uncalibrated"] == 0.0 and len(r["rotations"]) == 3
    assert [x["pseudo_unseen"] for x in r["rotations"]] == [["a"], ["b"], ["c"]]
    one = tune_calibration_rotated(runs[:1])  # one rotation alone is tuned on its own curve
    assert one["mean_harmonic_mean"] == pytest.approx(1.0)


def test_a_rotation_with_fewer_examples_than_the_batch_trains_with_a_smaller_batch(tmp_path: Path) -> None:
    """Holding a class out of a small set can leave fewer examples than train.batch_size: the rotation shrinks the
    batch to what is left (from the error's own count), and gives up below two examples."""
    from types import SimpleNamespace

    from anyalign.align.calibration import _rotation_trainer
    from anyalign.align.launch import BatchLargerThanData

    def make_trainer(recipe, output_dir):  # the real Trainer raises this from its data setup
        if recipe.train.batch_size > examples:
            raise BatchLargerThanData(recipe.train.batch_size, examples)
        return recipe.train.batch_size

    recipe = SimpleNamespace(train=SimpleNamespace(batch_size=8))
    examples = 5
    assert _rotation_trainer(recipe, tmp_path / "rot-0", make_trainer) == 5 and recipe.train.batch_size == 5
    recipe.train.batch_size, examples = 8, 1
    with pytest.raises(BatchLargerThanData, match="larger than the 1 training examples"):
        _rotation_trainer(recipe, tmp_path / "rot-1", make_trainer)


def test_seen_classes_from_a_recipe_are_named_as_its_captions_name_them(tmp_path: Path) -> None:
    """An adapter saved before it recorded its seen classes: the run's recipe.yaml, mapped through label_text."""
    from anyalign.zeroshot.protocols import recorded_zeroshot

    run = tmp_path / "run"
    (run / "adapters" / "imu").mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump({"data": {"train": [
        {"kind": "csv", "classes": ["walking_upstairs", "sitting"],
         "label_text": {"walking_upstairs": "walking upstairs", "sitting": "sitting down"}}]}}))
    rec = recorded_zeroshot(run / "adapters" / "imu")
    assert rec["seen_classes"] == ["sitting down", "walking upstairs"]
    assert recorded_seen_classes(run / "adapters" / "imu") == ["sitting down", "walking upstairs"]


@pytest.mark.slow  # four small trainings (the adapter and three rotations): ~1 min on 2 cores
def test_calibration_is_recorded_in_the_adapter_and_applied_alike_by_classify_eval_and_api(
        tmp_path: Path, minilm_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """`data.validation` (held-out training items) tunes gamma over pseudo-unseen rotations of every seen class; the
    saved adapter records seen classes as its captions named them (label_text), gamma and where it was tuned; the
    Python API, `classify` and `eval zeroshot` apply that gamma to the same items alike, without --seen-classes."""
    from anyalign.adapter import read_adapter_config
    from anyalign.align import train

    manifest, eval_dir = _windows(tmp_path, n=64)
    src = {"kind": "jsonl", "path": str(manifest), "classes": SEEN, "label_text": PHRASES,
           "caption_templates": ["a person {label}.", "someone is {label}."]}
    recipe = {
        "name": "cal", "seed": 0,
        "adapters": {"imu": {"encoder": {"name": "imu", "options": {"dim": 32, "depth": 1, "heads": 2}},
                             "train_encoder": True, "embed_projector": {"name": "mlp", "hidden_dim": 32}}},
        "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm_dir)}}},
        "data": {"train": [{**src, "holdout": 0.3, "split": "train"}],
                 "validation": [{**src, "holdout": 0.3, "split": "eval"}]},
        "train": {"batch_size": 8, "max_steps": 30, "lr": 2e-3, "save_every": 100, "log_every": 10,
                  "tensorboard": False},
        "eval": {"at_start": False, "calibration_steps": 30},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = train(load_recipe(path), output_dir=tmp_path / "run")
    adapter = Path(result.adapters["imu"])
    z = read_adapter_config(adapter).zeroshot
    assert z["seen_classes"] == sorted(PHRASES.values()) and z["label_text"] == PHRASES  # not raw class names
    src_ = z["calibration_source"]
    assert sorted(p for rot in src_["rotations"] for p in rot) == sorted(PHRASES.values())  # each held out once
    assert len(src_["per_rotation"]) == 3 and "data.validation" in src_["tuned_on"]
    gamma = z["calibration"]
    assert gamma > 0  # adapters favour the classes they were trained on: the tuned shift lowers them
    assert src_["mean_harmonic_mean"] >= src_["mean_harmonic_mean_uncalibrated"]
    _calibration_applied_alike(adapter, eval_dir, gamma, tmp_path, capsys)


def _calibration_applied_alike(adapter: Path, eval_dir: Path, gamma: float, tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    from anyalign.zeroshot import ZeroShotClassifier

    capsys.readouterr()
    out = tmp_path / "report"
    main(["eval", "zeroshot", str(eval_dir), "--adapter", str(adapter), "-t", "a person {}.", "-o", str(out)])
    printed = capsys.readouterr().out
    assert f"calibration: gamma {gamma:.4f}" in printed and "data.validation" in printed
    report = json.loads((out / "zeroshot_report.json").read_text())
    assert report["calibration"]["gamma"] == pytest.approx(gamma)
    u = report["protocols"]["unseen"]  # seen classes from the adapter, matched to the data's names via label_text
    assert u["seen_classes"] == SEEN and u["unseen_classes"] == ["walking"]
    assert u["calibration"] == pytest.approx(gamma)

    clf = ZeroShotClassifier.from_adapter(adapter, CLASSES, ["a person {}."], use_cache=False)
    files = [p["path"] for p in report["predictions"]]
    api = clf.classify(files, top_k=1)
    assert [p.labels[0] for p in api] == [p["predicted"] for p in report["predictions"]]
    emb = clf.embed(files).embeddings
    raw = clf.raw_scores(emb)
    offsets = torch.tensor([gamma if c in SEEN else 0.0 for c in CLASSES])
    y = [CLASSES.index(p["label"]) for p in report["predictions"]]
    calibrated = (raw - offsets).argmax(1)
    assert report["metrics"]["top1"] == pytest.approx(float((calibrated == torch.tensor(y)).float().mean()))
    cm = np.zeros((4, 4), dtype=int)
    for t, pr in zip(y, calibrated.tolist()):
        cm[t, pr] += 1
    assert report["confusion_matrix"] == cm.tolist()  # the confusion matrix and per-class accuracy: calibrated too
    per_class_unseen = report["per_class"]["walking"]["accuracy"]
    assert per_class_unseen == pytest.approx(u["unseen_accuracy"])  # one class unseen: its mean is its accuracy
    assert api[0].probs[0] == pytest.approx(float(torch.softmax((raw[0] - offsets) / 0.01, -1).max()), abs=1e-5)

    capsys.readouterr()
    main(["classify", *files, "--adapter", str(adapter), "-l", ",".join(CLASSES), "-t", "a person {}.",
          "-k", "1", "--json"])
    cli = json.loads(capsys.readouterr().out)
    assert cli["calibration"]["gamma"] == pytest.approx(gamma)
    assert [r["predictions"][0]["label"] for r in cli["results"]] == [p.labels[0] for p in api]

    main(["eval", "zeroshot", str(eval_dir), "--adapter", str(adapter), "-t", "a person {}.", "--no-calibration",
          "-o", str(tmp_path / "raw")])
    off = json.loads((tmp_path / "raw" / "zeroshot_report.json").read_text())
    assert off["calibration"]["gamma"] == 0 and off["protocols"]["unseen"]["calibration"] == 0
    assert [p["predicted"] for p in off["predictions"]] == [CLASSES[i] for i in raw.argmax(1).tolist()]
    capsys.readouterr()
    main(["classify", *files[:2], "--adapter", str(adapter), "-l", ",".join(CLASSES), "-t", "a person {}.",
          "--calibration", "0.5", "--json"])
    given = json.loads(capsys.readouterr().out)["calibration"]
    assert given["gamma"] == 0.5 and "given" in given["source"]["tuned_on"]  # an override, not the recorded tuning
