"""The training loop end to end: exact resume after SIGKILL, 2 processes == 1 process, NaN stop, real data.

Small IMU windows (the real `imu` encoder, trained from scratch) bound to the real MiniLM text space.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from anyalign.adapter import ModalityAdapter
from anyalign.align import TrainingError, load_recipe, train
from anyalign.align.checkpoint import list_checkpoints
from anyalign.align.data import EpochSampler
from anyalign.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["walking", "running", "standing", "jumping"]
WEIGHTS = "adapters/imu/anyalign_adapter.safetensors"


def _windows(root: Path, n: int = 32, nan_at: int | None = None) -> Path:
    """Class-dependent 6x32 windows as .npy files plus a jsonl manifest with labels and captions."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.linspace(0, 4 * np.pi, 32, dtype=np.float32)
    lines = []
    for i in range(n):
        c = i % len(CLASSES)
        x = np.stack([np.sin(t * (c + 1) + k) * (c + 0.5) for k in range(6)]) + rng.normal(0, 0.1, (6, 32))
        if i == nan_at:
            x[:, 5] = 3e38  # a corrupt (saturated) reading: finite, but the encoder's sums overflow to inf/NaN
        np.save(root / f"w{i:03d}.npy", x.astype(np.float32))
        lines.append(json.dumps({"imu": f"w{i:03d}.npy", "label": CLASSES[c], "caption": f"a person {CLASSES[c]}"}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl"


def _recipe(tmp_path: Path, manifest: Path, minilm: Path, dropout: float = 0.1, **train_opts: object) -> Path:
    recipe = {
        "name": "t",
        "adapters": {"imu": {"encoder": {"name": "imu", "options": {"dim": 32, "depth": 1, "heads": 2,
                                                                    "dropout": dropout}}, "train_encoder": True,
                             "embed_projector": {"name": "mlp", "hidden_dim": 32}}},
        "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(minilm)}}},
        "data": {"train": [{"kind": "jsonl", "path": str(manifest), "caption_templates": ["{caption}",
                                                                                          "someone {label}"]}]},
        "train": {"batch_size": 8, "max_steps": 12, "lr": 1e-3, "warmup_steps": 2, "save_every": 4,
                  "log_every": 2, "tensorboard": False, **train_opts},
        "eval": {"at_start": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "TOKENIZERS_PARALLELISM": "false"}


KILL_SCRIPT = """
import os, signal, sys
import torch
torch.set_num_threads({threads})
from anyalign.align import load_recipe, train

class KillAt:
    def on_step_end(self, trainer, step, logs):
        if step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: like an OOM kill or a preemption

train(load_recipe({recipe!r}), output_dir={out!r}, callbacks=[KillAt()])
"""


def test_resume_after_sigkill_is_bit_exact(tmp_path: Path, minilm_dir: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = _recipe(tmp_path, _windows(tmp_path / "data"), minilm_dir,
                     grad_accum=2)  # accumulation and a mid-epoch kill: the hardest resume case
    full = train(load_recipe(recipe), output_dir=tmp_path / "full")
    killed = tmp_path / "killed"
    script = KILL_SCRIPT.format(threads=torch.get_num_threads(), kill_at=6, recipe=str(recipe), out=str(killed))
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [p.name for p in list_checkpoints(killed)] == ["step-000004"]  # killed 2 steps after the checkpoint
    assert not (killed / "adapters").exists()
    (killed / "checkpoints" / ".step-000008.tmp").mkdir()  # a half-written checkpoint must be ignored
    with pytest.raises(SystemExit) as e:
        main(["train", str(recipe), "--output", str(killed)])  # refuses to overwrite without --resume
    assert e.value.code == 2
    capsys.readouterr()
    main(["train", str(recipe), "--output", str(killed), "--resume", "--json"])
    done = json.loads(capsys.readouterr().out)  # --json: one document on stdout, progress elsewhere
    assert done["step"] == 12 and list(done["adapters"]) == ["imu"] and done["output_dir"] == str(killed)
    a, b = load_file(full.output_dir / WEIGHTS), load_file(killed / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == [2, 4, 6, 8, 10, 12]  # lines logged after the checkpoint were replaced, not duplicated
    assert (killed / "curves.png").stat().st_size > 1000 and (killed / "eval.json").is_file()


def test_two_processes_equal_one_process(tmp_path: Path, minilm_dir: Path) -> None:
    recipe = _recipe(tmp_path, _windows(tmp_path / "data"), minilm_dir, dropout=0.0,  # per-rank RNG streams
                     max_steps=6, save_every=100)
    one = train(load_recipe(recipe), output_dir=tmp_path / "one")
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
           "-m", "anyalign.cli.main", "train", str(recipe), "--output", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env={**_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert state["step"] == 6 and state["world_size"] == 2
    losses = [[r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for d in (one.output_dir, tmp_path / "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # the same global-batch InfoNCE at every step
    a, b = load_file(one.output_dir / WEIGHTS), load_file(tmp_path / "two" / WEIGHTS)
    assert a.keys() == b.keys()
    for k in a:  # float summation order differs; Adam turns that noise into tiny steps where the true
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=2e-4)  # gradient is 0 (attention key biases)
    windows = [np.load(p) for p in sorted((tmp_path / "data").glob("*.npy"))]
    emb = [ModalityAdapter.from_pretrained(d / "adapters" / "imu").embed_inputs(windows)
           for d in (one.output_dir, tmp_path / "two")]
    torch.testing.assert_close(emb[0], emb[1], rtol=0, atol=1e-4)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, minilm_dir: Path) -> None:
    order = EpochSampler(16, seed=0)
    order.set_epoch(0)
    second_batch_item = list(order)[8][1]  # the NaN window arrives in step 2, after the step-1 checkpoint
    manifest = _windows(tmp_path / "data", n=16, nan_at=second_batch_item)
    recipe = _recipe(tmp_path, manifest, minilm_dir, save_every=1, max_steps=4)
    with pytest.raises(TrainingError, match=r"non-finite loss at step 2 .*Last good checkpoint: .*step-000001"):
        train(load_recipe(recipe), output_dir=tmp_path / "run")
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-000001"]
    state = load_file(tmp_path / "run" / "checkpoints" / "step-000001" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not (tmp_path / "run" / "adapters").exists()


@pytest.mark.slow
def test_basicmotions_recipe_full(tmp_path: Path, assets: Path) -> None:
    """The shipped recipe end to end on the real data (the number reported in the notes)."""
    result = train(load_recipe(ROOT / "configs" / "imu_text_contrastive.yaml"), output_dir=tmp_path / "run")
    assert result.metrics["eval/imu/zeroshot_acc"] >= 0.75


def test_basicmotions_short_run_beats_chance(tmp_path: Path, assets: Path) -> None:
    """30 steps on the real BasicMotions windows into the real MiniLM space (a smaller IMU encoder than the
    recipe's), zero-shot on the test split."""
    if not (assets / "imu" / "BasicMotions").is_dir():
        pytest.skip("BasicMotions missing")
    recipe = load_recipe(ROOT / "configs" / "imu_text_contrastive.yaml",
                         ["train.max_steps=30", "train.warmup_steps=5", "eval.every=0", "eval.at_start=false",
                          "train.save_every=1000", "train.tensorboard=false", "adapters.imu.encoder.options.dim=64",
                          "adapters.imu.encoder.options.depth=1", "adapters.imu.embed_projector.hidden_dim=128"])
    result = train(recipe, output_dir=tmp_path / "run")
    acc = result.metrics["eval/imu/zeroshot_acc"]
    assert result.metrics["eval/imu/chance"] == 0.25
    assert acc >= 0.75, f"zero-shot accuracy {acc:.3f} is not well above chance (0.25)"
