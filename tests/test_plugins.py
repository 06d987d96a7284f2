"""Out-of-tree plugins: the example package in examples/frames-plugin through every CLI command, and discovery
through entry points, ANYALIGN_PLUGINS and --plugin."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from anyalign.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "examples" / "frames-plugin"
CLASSES = {"sine": "a smooth sine wave", "noise": "random noise", "ramp": "a rising ramp"}


def _series(kind: str, rng: np.random.Generator) -> np.ndarray:
    t = np.linspace(0, 1, 100)
    if kind == "sine":
        x = np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6))
    elif kind == "ramp":
        x = t * rng.uniform(0.5, 2)
    else:
        x = rng.normal(size=t.shape)
    return np.stack([x + 0.05 * rng.normal(size=t.shape) for _ in range(3)]).astype(np.float32)


@pytest.fixture()
def plugin_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    import anyalign.plugins as plugins

    monkeypatch.setattr(plugins, "_loaded", set())
    yield
    sys.modules.pop("anyalign_frames", None)


def _run(capsys: pytest.CaptureFixture, *args: object) -> str:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


def test_plugin_encoder_through_every_command(tmp_path: Path, minilm_dir: Path, plugin_on_path: None,
                                              capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for label, caption in CLASSES.items():
        for i in range(20):
            np.save(data / f"{label}{i}.npy", _series(label, rng))
            rows.append({"sensor": f"{label}{i}.npy", "text": caption, "label": label, "key": f"{label}{i}"})
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    # extract with the plugin's own option (--plugin); train, embed and evaluate from the same jsonl file
    out = _run(capsys, "--plugin", "anyalign_frames", "extract", "-e", "frames", "--set", "dim=24", "--set",
               "frame=5", "-i", data / "train.jsonl", "-o", tmp_path / "feats", "--workers", "0",
               "--quiet")
    assert "60 extracted" in out
    recipe = {"name": "frames", "adapters": {"sensor": {"encoder": {"name": "frames", "options": {"dim": 24,
                                                                                                  "frame": 5}},
                                                         "embed_projector": {"name": "mlp", "hidden_dim": 64}}},
              "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm_dir)}}},
              "data": {"train": [{"kind": "jsonl", "path": str(data / "train.jsonl")}]},
              "train": {"batch_size": 30, "max_steps": 80, "lr": 3e-3, "log_every": 20, "tensorboard": False,
                        "save_every": 1000},
              "eval": {"at_start": False}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.setenv("ANYALIGN_PLUGINS", "anyalign_frames")  # from here on through the environment
    _run(capsys, "train", tmp_path / "r.yaml", "--output", tmp_path / "run")
    adapter = tmp_path / "run" / "adapters" / "sensor"
    cfg = json.loads((adapter / "anyalign_adapter.json").read_text())
    assert cfg["encoder"]["name"] == "frames" and cfg["encoder"]["options"] == {"dim": 24, "frame": 5}
    assert cfg["space"]["text"]["pretrained"] == "sentence-transformers/all-MiniLM-L6-v2"  # the asset's Hub id
    assert cfg["plugins"] == ["anyalign_frames"]  # the module that registers its encoder

    # embed the same jsonl with the adapter, index it, search by text with no --embedder, classify
    _run(capsys, "embed", data / "train.jsonl", "--adapter", adapter, "-o", tmp_path / "emb")
    _run(capsys, "index", "build", tmp_path / "emb", "-o", tmp_path / "idx")
    hits = json.loads(_run(capsys, "search", tmp_path / "idx", "--text", "a smooth sine wave", "-k", "10",
                           "--json"))
    assert sum(h["label"] == "sine" for h in hits) >= 7, [h["label"] for h in hits]
    files = [data / f"{label}{i}.npy" for label in CLASSES for i in range(15, 20)]
    preds = json.loads(_run(capsys, "classify", "--adapter", adapter, "--labels", ",".join(CLASSES.values()),
                            "--json", *files))["results"]
    truth = [CLASSES[f.stem.rstrip("0123456789")] for f in files]
    acc = np.mean([p["predictions"][0]["label"] == t for p, t in zip(preds, truth)])
    assert acc >= 0.8, acc  # chance 1/3 (training items: this checks the plumbing, not generalisation)
    out = _run(capsys, "eval", "zeroshot", data / "train.jsonl", "--adapter", adapter, "-o", tmp_path / "report",
               "--json")  # the same jsonl file: labels are the class names here
    assert json.loads((tmp_path / "report" / "zeroshot_report.json").read_text())["metrics"]["n"] == 60
    out = _run(capsys, "encoders")
    assert "frames" in out and "frame" in out


def test_entry_point_discovery(monkeypatch: pytest.MonkeyPatch, plugin_on_path: None) -> None:
    import importlib.metadata as md

    import anyalign.plugins as plugins

    ep = md.EntryPoint(name="frames", value="anyalign_frames", group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep] if group == plugins.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(plugins, "_scanned", False)
    from anyalign.encoders import registry

    sys.modules.pop("anyalign_frames", None)
    for table in (registry.ENCODERS._items, registry.ENCODER_INFO, registry.ENCODER_OPTIONS):
        table.pop("frames", None)  # as in a fresh process
    assert "frames" in registry.list_encoders()


def test_missing_plugin_is_one_line_error(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--plugin", "no_such_plugin_module", "encoders"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: plugin 'no_such_plugin_module' (from --plugin)") and \
        err.count("\n") == 1
