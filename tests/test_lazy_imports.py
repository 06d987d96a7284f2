"""Commands that need no neural network must not import torch or transformers (a fresh interpreter checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from anyalign.retrieval import build_index
from anyalign.retrieval.embed import EmbeddingWriter

HEAVY = ("torch", "transformers")

_RUN = f"""import json, sys
from anyalign.cli.main import main
try:
    main(json.loads(sys.argv[1]))
except SystemExit as e:
    assert not e.code, e.code
print("IMPORTED=" + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {set(HEAVY)!r})))
"""


def _run_cli(args: list[str], cwd: Path) -> tuple[str, list[str]]:
    proc = subprocess.run([sys.executable, "-c", _RUN, json.dumps(args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    return "\n".join(lines[:-1]), json.loads(lines[-1].removeprefix("IMPORTED="))


def test_search_vector_imports_no_torch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((40, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    (tmp_path / "emb").mkdir()
    writer = EmbeddingWriter(tmp_path / "emb", 8)
    writer.add(vecs, [{"source": f"s.txt:{i}", "modality": "text", "caption": f"caption {i}"} for i in range(40)])
    spec = {"encoder": "text", "pretrained": str(tmp_path / "no-such-model")}  # recorded, never loaded
    writer.close(modality="text", embedders={"text": spec})
    build_index(tmp_path / "emb", tmp_path / "idx", factory="Flat", embedders={"text": spec})
    np.save(tmp_path / "q.npy", vecs[7])

    out, imported = _run_cli(["search", str(tmp_path / "idx"), "--vector", str(tmp_path / "q.npy"), "-k", "3"],
                             tmp_path)
    assert imported == [], imported
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert lines[0].split()[1:] == ["1.0000", "#7", "text", "caption", "7"], lines[0]
    expected = np.argsort(-(vecs @ vecs[7]), kind="stable")[:3].tolist()
    assert [int(line.split()[2].lstrip("#")) for line in lines] == expected, out

    out, imported = _run_cli(["search", str(tmp_path / "idx"), "--vector", str(tmp_path / "q.npy"), "-k", "2",
                              "--json"], tmp_path)
    assert imported == [], imported
    hits = json.loads(out)
    assert [h["id"] for h in hits] == expected[:2] and hits[0]["caption"] == "caption 7", hits


def test_help_imports_no_torch(tmp_path: Path) -> None:
    out, imported = _run_cli(["--help"], tmp_path)
    assert imported == [], imported
    assert "search" in out
