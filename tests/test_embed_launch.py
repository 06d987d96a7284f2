"""`anyalign embed` under `accelerate launch --num_processes 2` (CPU, gloo): each rank embeds a disjoint contiguous
slice of the inputs, and the folder reads like the 1-process one (same rows, same order, same vectors). Also:
`python -m anyalign.cli.main` (how launchers start the CLI) reports a usage error in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _retrieval_helpers import tiny_bert

from anyalign.cli.main import main
from anyalign.retrieval import Retriever, build_index
from anyalign.retrieval.sources import open_source
from tests.test_align_train import _env
from tests.test_launch import accelerate_launch

WORDS = "red blue green dog cat square circle photo sound video black white the a of small big".split()


def _rows(folder: Path) -> tuple[np.ndarray, list[dict]]:
    src = open_source(folder)
    batches = list(src.batches())
    return np.concatenate([b.vectors for b in batches]), [m for b in batches for m in b.metadata]


def test_embed_two_ranks_split_inputs_and_equal_one_process(tmp_path: Path) -> None:
    if not (Path(sys.executable).parent / "accelerate").is_file():
        pytest.skip("the accelerate CLI is not installed in this environment")
    bert = tiny_bert(tmp_path / "bert")
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, 5)) + f" {i}" for i in range(23)]  # odd: the ranks get 11 and 12
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    args = ["embed", str(tmp_path / "captions.txt"), "--encoder", "text", "--pretrained", str(bert),
            "--batch-size", "4", "--shard-size", "5"]
    main([*args, "-o", str(tmp_path / "one")])  # returns on success (an error exits non-zero)
    proc = accelerate_launch([*args, "-o", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stderr[-8000:]
    assert proc.stdout.count("embedded 23 text inputs") == 1, proc.stdout  # one report, from rank 0

    manifest = json.loads((tmp_path / "two" / "embeddings.json").read_text())
    assert manifest["world_size"] == 2 and manifest["count"] == 23
    by_rank: dict[str, list[str]] = {}
    for shard in manifest["shards"]:
        rank = shard["vectors"].split("-")[1]
        rows = (tmp_path / "two" / shard["metadata"]).read_text().splitlines()
        assert len(rows) == shard["count"] <= 5
        by_rank.setdefault(rank, []).extend(json.loads(r)["text"] for r in rows)
    assert sorted(by_rank) == ["r00000", "r00001"]
    assert not set(by_rank["r00000"]) & set(by_rank["r00001"])  # disjoint slices
    assert by_rank["r00000"] + by_rank["r00001"] == lines  # contiguous, in input order: rank 0 then rank 1
    assert [len(v) for v in by_rank.values()] == [11, 12]
    assert not list(tmp_path.glob(".two.*"))  # no staging folder left beside the output

    v1, m1 = _rows(tmp_path / "one")
    v2, m2 = _rows(tmp_path / "two")
    assert m1 == m2 and [m["text"] for m in m1] == lines
    np.testing.assert_allclose(v1, v2, atol=1e-5)  # batches differ between the runs (padding), vectors do not
    # the folder indexes as one corpus
    build_index(tmp_path / "two", tmp_path / "idx", factory="Flat")
    r = Retriever(tmp_path / "idx")
    assert len(r) == 23 and r.search(v1[17], k=1)[0].metadata["text"] == lines[17]


def test_module_entry_point_reports_usage_error_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "anyalign.cli.main", "embed", str(tmp_path), "-o",
                           str(tmp_path / "out")], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: give exactly one of --adapter DIR or --encoder NAME"
