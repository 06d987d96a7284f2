"""Index tuning says what it held out, and tunes on the queries' side (the space's text side) where it can."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from _retrieval_helpers import clustered

from anyalign.retrieval import build_index
from anyalign.retrieval.sources import ArraySource, ConcatSource
from anyalign.retrieval.tuning import describe_tuning, query_side

SPACE = {"imu": {"name": "imu"}, "text": {"name": "text"}}  # an IMU index in a space with a text side


def _cli_line(tuning: dict) -> str:
    return describe_tuning(tuning)


def test_imu_index_without_text_rows_warns_and_names_tune_queries(tmp_path, caplog) -> None:
    x = clustered(3000, 16, seed=1)
    with caplog.at_level(logging.WARNING):
        cfg = build_index(ArraySource(x, modality="imu"), tmp_path / "i", factory="IVF32,Flat", embedders=SPACE,
                          tune_queries=200)
    t = cfg.tuning
    assert t["query_modality"] == "text" and "--tune-queries" in t["warning"] and "text" in t["warning"]
    assert "--tune-queries" in caplog.text
    assert t["query_set"] == "held-out corpus sample" and t["held_out"] == t["queries"] == 200
    assert cfg.ntotal == 3000 and t["corpus_rows"] == 3000  # the held-out rows joined the index after tuning
    line = _cli_line(t)
    assert "kept out of the index while tuning, then added to it" in line and "200 held-out corpus sample" in line


def test_index_holding_text_rows_tunes_on_them(tmp_path, monkeypatch) -> None:
    import anyalign.retrieval.index_build as index_mod

    seen: list[np.ndarray] = []
    real = index_mod.ExactNeighbours

    class Spy(real):  # records the tuning queries the build uses
        def __init__(self, queries, *a, **kw) -> None:
            seen.append(np.asarray(queries))
            super().__init__(queries, *a, **kw)

    monkeypatch.setattr(index_mod, "ExactNeighbours", Spy)
    imu, text = clustered(3000, 16, seed=2), clustered(600, 16, seed=3)
    src = ConcatSource([ArraySource(imu, modality="imu", name="imu"), ArraySource(text, modality="text",
                                                                                    name="text")])
    side = query_side(src, SPACE)
    assert side is not None and side.modality == "text" and side.ranges == [(3000, 3600)]
    cfg = build_index(src, tmp_path / "i", factory="IVF32,Flat", embedders=SPACE, tune_queries=100)
    t = cfg.tuning
    assert t["query_set"] == "held-out text rows" and t["held_out"] == t["queries"] == 100
    assert "warning" not in t and cfg.ntotal == 3600  # and they joined the index after tuning
    textn = text / np.linalg.norm(text, axis=1, keepdims=True)
    best = (seen[0] @ textn.T).max(1)  # every tuning query is one of the text rows
    assert len(seen[0]) == 100 and np.allclose(best, 1.0, atol=1e-5)


def test_user_queries_are_not_called_held_out(tmp_path) -> None:
    x, q = clustered(2000, 16, seed=4), clustered(50, 16, seed=5)
    cfg = build_index(ArraySource(x), tmp_path / "i", factory="IVF16,Flat", tune_queries=q)
    t = cfg.tuning
    assert t["held_out"] == 0 and t["query_modality"] is None and "warning" not in t
    line = _cli_line(t)
    assert "nothing was held out" in line and "kept out" not in line


def test_same_modality_queries_need_no_side() -> None:
    assert query_side(ArraySource(np.zeros((4, 3), np.float32), modality="text"), SPACE) is None
    assert query_side(ArraySource(np.zeros((4, 3), np.float32), modality="imu"), {"imu": {}}) is None
    assert query_side(ArraySource(np.zeros((4, 3), np.float32)), SPACE) is None  # unknown corpus modality


@pytest.mark.parametrize("tune", [0])
def test_no_tuning_queries_reports_none_held(tmp_path, tune) -> None:
    cfg = build_index(ArraySource(clustered(500, 8, seed=6)), tmp_path / "i", factory="Flat", tune_queries=tune)
    assert cfg.tuning["held_out"] == 0
