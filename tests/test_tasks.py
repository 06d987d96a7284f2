"""Registered training tasks and tuple-keyed loss terms: open modality names (`ir-depth`), loss weights, plugins."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
import yaml

from anyalign.align import Trainer, load_recipe
from anyalign.align.build import build_model
from anyalign.align.config import TASK_REGISTRY
from anyalign.align.tasks import Task, parse_loss_weights, register_task, term_name
from anyalign.config import ConfigError

IMU = {"dim": 16, "depth": 1, "heads": 2, "dropout": 0.0}
ACTS = ["walking", "running", "standing", "jumping"]


def _data(tmp_path: Path, modality: str) -> Path:
    """16 windows `[6, 40]` as .npy files and a jsonl naming them in a `modality` field, with captions."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        np.save(tmp_path / f"w{i:02d}.npy", (rng.normal(size=(6, 40)) + i % 4).astype(np.float32))
        rows.append({"key": f"w{i:02d}", modality: f"w{i:02d}.npy", "label": ACTS[i % 4],
                     "caption": f"a person {ACTS[i % 4]}"})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _recipe(tmp_path: Path, minilm: Path, modality: str, *, projector: dict | None = None, task: str = "contrastive",
            loss_weights: dict | None = None) -> Path:
    recipe = {"adapters": {modality: {"encoder": {"name": "imu", "options": IMU}, "train_encoder": True,
                                      "embed_projector": projector or {"name": "mlp", "hidden_dim": 32}}},
              "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm)}}},
              "data": {"train": [{"kind": "jsonl", "path": str(_data(tmp_path, modality)), "task": task}]},
              "train": {"batch_size": 8, "max_steps": 3, "log_every": 1, "tensorboard": False,
                        "loss_weights": loss_weights or {}},
              "eval": {"at_start": False}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_modality_named_ir_depth_trains(tmp_path: Path, minilm_dir: Path) -> None:
    recipe = load_recipe(_recipe(tmp_path, minilm_dir, "ir-depth", loss_weights={"ir-depth-text": 2.0}))
    trainer = Trainer(recipe, output_dir=tmp_path / "run")
    model = trainer.unwrapped
    assert model.loss_weights == {("contrastive", "ir-depth", "text"): 2.0}
    assert list(model.contrastive_losses()) == [("contrastive", "ir-depth", "text")]
    result = trainer.fit()
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss" in r]
    assert len(steps) == 3
    for r in steps:  # the total is the weighted term: the weight reached the loss
        assert np.isfinite(r["loss/ir-depth-text"]) and r["loss"] == pytest.approx(2.0 * r["loss/ir-depth-text"])
    assert "logit_scale/ir-depth-text" in steps[-1]
    assert (Path(result.adapters["ir-depth"]) / "anyalign_adapter.safetensors").is_file()


def test_loss_weight_keys_are_parsed_against_the_recipe(tmp_path: Path, minilm_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.loss_weights: 'ir-text' is not a loss term of this recipe; "
                                          r"known: ir-depth-text"):
        build_model(load_recipe(_recipe(tmp_path, minilm_dir, "ir-depth", loss_weights={"ir-text": 1.0})))
    terms = [("contrastive", "a-b", "c"), ("contrastive", "a", "b-c"), ("caption",)]
    assert parse_loss_weights({"caption": 0.5, "a-b/commitment": 3}, terms, ["a-b", "a"]) == {
        ("caption",): 0.5, ("aux", "a-b", "commitment"): 3.0}
    with pytest.raises(ConfigError, match="'a-b-c' is ambiguous"):
        parse_loss_weights({"a-b-c": 1.0}, terms, ["a-b", "a"])
    assert [term_name(k) for k in terms] == ["a-b-c", "a-b-c", "caption"]  # names are for logs only
    assert term_name(("aux", "ir-depth", "commitment")) == "ir-depth/commitment"


def test_misspelt_projector_option_is_one_line(tmp_path: Path, minilm_dir: Path, capsys: pytest.CaptureFixture
                                               ) -> None:
    path = _recipe(tmp_path, minilm_dir, "imu", projector={"name": "mlp", "dept": 2})
    with pytest.raises(ConfigError) as e:
        build_model(load_recipe(path))
    msg = str(e.value)
    assert msg.startswith("adapters.imu.embed_projector dept=2: projector 'mlp' has no option 'dept'; options: ")
    assert "depth (int, default 2)" in msg and "\n" not in msg
    from anyalign.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", str(path), "--output", str(tmp_path / "run")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "projector 'mlp' has no option 'dept'" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_unknown_task_in_a_recipe(tmp_path: Path, minilm_dir: Path) -> None:
    with pytest.raises(ConfigError, match="task 'contrastiv' is not a registered training task; expected one of: "
                                          "caption, contrastive, ctc, distill, instruct"):
        load_recipe(_recipe(tmp_path, minilm_dir, "imu", task="contrastiv"))


def test_a_new_task_is_one_class_plus_one_registration(tmp_path: Path, minilm_dir: Path) -> None:
    """A cosine-regression objective (pull each embedding onto its caption's anchor embedding), registered here."""

    @register_task("test-cosine")
    class CosineTask(Task):
        def __init__(self, modalities):
            super().__init__()
            self.modalities = modalities

        @classmethod
        def from_recipe(cls, recipe, *, adapters, anchors, mllm):
            return cls(list(adapters)) if "text" in anchors else None

        def terms(self):
            return [(self.name, m) for m in self.modalities]

        def training_forward(self, model, batch, feats):
            rows = self.rows(batch)
            out = {}
            for m in model.adapters:
                mb = batch.media.get(m)
                if mb is None or not rows:
                    continue
                emb, _ = model.embed(m, feats[m])
                target = model.anchor_texts("text", [batch.captions[int(r)] for r in mb.rows])
                out[(self.name, m)] = (1 - F.cosine_similarity(emb, target)).mean()
            return out

    try:
        trainer = Trainer(load_recipe(_recipe(tmp_path, minilm_dir, "ir-depth", task="test-cosine",
                                              loss_weights={"test-cosine/ir-depth": 1.0})),
                          output_dir=tmp_path / "run")
        assert list(trainer.unwrapped.tasks) == ["test-cosine"]
        trainer.fit()
        logs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss/test-cosine/ir-depth"] for r in logs if "loss" in r]
        assert len(losses) == 3 and all(0.0 < v < 2.0 for v in losses)
    finally:
        TASK_REGISTRY._items.pop("test-cosine", None)


def test_misspelt_encoder_option_in_a_recipe_names_the_field(tmp_path: Path, minilm_dir: Path) -> None:
    path = _recipe(tmp_path, minilm_dir, "imu")
    data = yaml.safe_load(path.read_text())
    data["adapters"]["imu"]["encoder"]["options"]["dimm"] = 8
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"^adapters.imu.encoder.options dimm=8: encoder 'imu' has no option 'dimm'; "
                                          r"options: channels \(int, default 6\), dim \(int, default 256\)"):
        build_model(load_recipe(path))
