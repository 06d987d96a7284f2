"""`accelerate launch` with 2 CPU processes (gloo) trains like 1 process, on streamed feature shards that the ranks
split between them.

On a machine without GPUs, `accelerate launch --cpu --num_processes 2` starts ONE process: accelerate sends `--cpu`
(and a `distributed_type: MULTI_CPU` config) to its simple launcher, which only goes multi-process through mpirun
(`--mpirun_hostfile`). `--multi_gpu --num_processes 2` uses torch's elastic launcher; the trainer then builds its
Accelerator with `cpu=True` (gloo) because no CUDA device exists.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anyalign.align import load_recipe, train
from tests.test_align_train import _env
from tests.test_stream import WEIGHTS, _recipe, feature_folder


def free_port() -> int:
    """A port nothing listens on now (the default 29500 may be held by another run: the store fails to bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accelerate_launch(args: list[str], nproc: int = 2, extra: list[str] | None = None, timeout: int = 300,
                      launcher: str = "--multi_gpu") -> subprocess.CompletedProcess:
    """`accelerate launch <launcher> --num_processes N -m anyalign.cli.main ARGS` on a free port."""
    exe = Path(sys.executable).parent / "accelerate"
    cmd = [str(exe), "launch", launcher, "--num_processes", str(nproc), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           *(extra or []), "-m", "anyalign.cli.main", *args]
    return subprocess.run(cmd, env={**_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=timeout)


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_accelerate_launch_two_cpu_processes_equal_one(tmp_path: Path, minilm_dir: Path) -> None:
    if not (Path(sys.executable).parent / "accelerate").is_file():
        pytest.skip("the accelerate CLI is not installed in this environment")
    folder = feature_folder(tmp_path / "f", shards=4, per_shard=16)
    recipe = _recipe(tmp_path, folder, minilm_dir, max_steps=6, save_every=100, grad_accum=1, stream_lanes=2)
    one = train(load_recipe(recipe), output_dir=tmp_path / "one")
    proc = accelerate_launch(["train", str(recipe), "--output", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert state["step"] == 6 and state["world_size"] == 2
    assert _losses(one.output_dir) == pytest.approx(_losses(tmp_path / "two"), rel=1e-5)
    a, b = load_file(one.output_dir / WEIGHTS), load_file(tmp_path / "two" / WEIGHTS)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=2e-4)
