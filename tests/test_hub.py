"""The Hub, offline: adapters and indexes load by Hub id from a Hub cache laid out as huggingface_hub writes it
(models--org--name/snapshots/<rev>/..., refs/main), revisions pin; `anyalign push --stage-only` writes the upload
(adapter + model card with the run's measured numbers); the upload itself refuses under HF_HUB_OFFLINE."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import yaml
from test_portable import populate_hub_cache

from anyalign.adapter import CONFIG_NAME, WEIGHTS_NAME, ModalityAdapter, build_adapter
from anyalign.adapter.portable import model_card, push_folder
from anyalign.cli.main import main
from anyalign.embedder import Embedder
from anyalign.encoders.spec import EncoderSpec

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
OLD, NEW = "1" * 40, "2" * 40


def _imu_adapter(folder: Path, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    adapter = build_adapter("imu", EncoderSpec("imu"), embed_dim=32, embed_projector={"name": "mlp", "hidden_dim": 64},
                            train_encoder=True, space={"text": EncoderSpec("text", MINILM_ID)})
    adapter.save_pretrained(folder)
    return folder


def _run(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run the CLI in-process; its stdout (a failure shows its one-line error)."""
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


def _windows(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(6, 100)).astype(np.float32) for _ in range(n)]


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hub cache in tmp_path holding org/imu-adapter at two revisions (main = the newer)."""
    cache = tmp_path / "hub"
    populate_hub_cache(cache, "org/imu-adapter", _imu_adapter(tmp_path / "old", 0), OLD)
    populate_hub_cache(cache, "org/imu-adapter", _imu_adapter(tmp_path / "new", 1), NEW)  # refs/main -> NEW
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_from_pretrained_by_hub_id_offline(hub_cache: Path, tmp_path: Path) -> None:
    x = _windows()
    want_new = Embedder.from_adapter(tmp_path / "new").embed(x)
    want_old = Embedder.from_adapter(tmp_path / "old").embed(x)
    assert not np.allclose(want_new, want_old)
    a = ModalityAdapter.from_pretrained("org/imu-adapter")  # refs/main
    np.testing.assert_allclose(Embedder(a.encoder, a).embed(x), want_new, atol=1e-6)
    for pinned in (ModalityAdapter.from_pretrained("org/imu-adapter", revision=OLD),
                   ModalityAdapter.from_pretrained(f"org/imu-adapter@{OLD}")):
        np.testing.assert_allclose(Embedder(pinned.encoder, pinned).embed(x), want_old, atol=1e-6)
    e = Embedder.from_adapter("org/imu-adapter")
    assert e.record()["adapter"] == "org/imu-adapter"  # indexes record the Hub id, not this machine's cache path
    with pytest.raises(FileNotFoundError, match=r"org/nothing-here: no such adapter folder.*HF_HUB_OFFLINE"):
        ModalityAdapter.from_pretrained("org/nothing-here")
    with pytest.raises(FileNotFoundError, match="not available from the Hub"):
        ModalityAdapter.from_pretrained("org/imu-adapter", revision="3" * 40)


def test_cli_adapter_and_index_by_hub_id(hub_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "windows"
    data.mkdir()
    for i, w in enumerate(_windows(3)):
        np.save(data / f"w{i}.npy", w)
    _run(["embed", str(data), "--adapter", "org/imu-adapter", "-o", str(tmp_path / "emb")], capsys)
    _run(["index", "build", str(tmp_path / "emb"), "-o", str(tmp_path / "idx")], capsys)
    populate_hub_cache(hub_cache, "org/imu-index", tmp_path / "idx")
    out = _run(["search", "org/imu-index", "--file", str(data / "w1.npy"), "-k", "1", "--json"], capsys)
    assert json.loads(out)[0]["source"].endswith("w1.npy"), out


def test_push_stages_adapter_and_model_card(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    folder = _imu_adapter(run / "adapters" / "imu", 0)
    (run / "eval.json").write_text(json.dumps({"step": 60, "world_size": 1, "eval/imu/zeroshot_acc": 0.875,
                                               "eval/imu/chance": 0.25}))
    (run / "recipe.yaml").write_text(yaml.safe_dump({"name": "imu", "data": {"train": [
        {"kind": "uea", "path": "/data/BasicMotions"}]}, "train": {"max_steps": 60, "batch_size": 16, "lr": 0.001}}))
    result = json.loads(_run(["push", str(folder), "someone/imu-adapter", "--stage-only", str(tmp_path / "stage"),
                              "--json"], capsys))
    assert result["files"] == sorted(["README.md", CONFIG_NAME, WEIGHTS_NAME])
    card = (tmp_path / "stage" / "README.md").read_text()
    assert "| eval/imu/zeroshot_acc | 0.8750 |" in card and "| eval/imu/chance | 0.2500 |" in card
    assert f"- {MINILM_ID}" in card and "BasicMotions" in card and "60 steps" in card
    assert 'from_pretrained("someone/imu-adapter")' in card
    x = _windows()
    staged = ModalityAdapter.from_pretrained(tmp_path / "stage")
    np.testing.assert_allclose(Embedder(staged.encoder, staged).embed(x), Embedder.from_adapter(folder).embed(x))
    assert "No evaluation was saved" in model_card({"modality": "imu", "encoder": {"name": "imu"}})


def test_push_refuses_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        push_folder(tmp_path, "someone/x")
