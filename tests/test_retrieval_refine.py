"""Compressed indexes re-rank faiss's candidates exactly against raw vectors kept on disk: the tuned `refine` factor
reaches a recall target PQ alone cannot, covering every vector equals exact search, adds and deletes keep it
right, merged parts carry the vectors along, and a missing or truncated vector file is a one-line error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from _cli import run_captured as _cli
from _retrieval_helpers import clustered, exact_topk

from anyalign.retrieval import (
    ArraySource,
    Retriever,
    add_to_index,
    build_index,
    build_parts,
    delete_from_index,
    read_config,
)
from anyalign.retrieval.autoindex import is_compressed
from anyalign.retrieval.shards import open_parts, search_parts

N, D = 20_000, 64
FACTORY = "IVF64,PQ8x4"  # 4 bytes per vector: PQ alone reaches recall@10 ~0.35 on this mixture


def _mixture(n: int, seed: int) -> np.ndarray:
    return clustered(n, D, centres=400, noise=0.6, seed=seed)


@pytest.fixture(scope="module")
def corpus() -> np.ndarray:
    return _mixture(N, 0)


@pytest.fixture(scope="module")
def half(tmp_path_factory: pytest.TempPathFactory, corpus: np.ndarray) -> Path:
    """The default: raw vectors as float16."""
    out = tmp_path_factory.mktemp("f16") / "idx"
    build_index(ArraySource(corpus), out, factory=FACTORY, target_recall=0.95)
    return out


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, corpus: np.ndarray) -> Path:
    """Raw vectors as float32: re-ranking everything is exact search."""
    out = tmp_path_factory.mktemp("f32") / "idx"
    build_index(ArraySource(corpus), out, factory=FACTORY, target_recall=0.9, raw_vectors="float32")
    return out


def _ids(folder: Path, q: np.ndarray, k: int = 10, **params: int) -> tuple[np.ndarray, np.ndarray]:
    _, parts = open_parts(folder)
    scores, ids = search_parts(parts, q, k, params or None)
    for p in parts:
        p.meta.close()
    return scores, ids


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def _everything(q: np.ndarray, ntotal: int) -> dict[str, int]:
    return {"nprobe": 64, "refine": ntotal}  # k * refine >= ntotal: every vector is re-ranked


def test_refine_reaches_the_target_pq_alone_cannot(half, corpus) -> None:
    cfg = read_config(half)
    assert cfg.raw["dtype"] == "float16" and cfg.raw["rows"] == N and cfg.raw["segments"] == [[0, 0, N]]
    assert (half / "vectors.f16").stat().st_size == N * D * 2
    assert "on disk" in cfg.choice and "page cache" in cfg.choice and "outside the memory budget" in cfg.choice
    t = cfg.tuning
    assert cfg.search_params["refine"] > 1 and t["reached"] and t["recall_lower"] >= 0.95
    assert {"nprobe", "refine", "recall", "ms_per_query"} <= set(t["trace"][0])
    fresh = _mixture(1000, 7)
    truth = exact_topk(fresh, corpus, 10)
    r = Retriever(half)
    got = _recall(np.array([[h.id for h in row] for row in r.search_vectors(fresh, 10)]), truth)
    assert got >= 0.94 and abs(got - t["recall"]) < 0.02, (got, cfg.search_params, t["recall"])
    plain = _recall(_ids(half, fresh, nprobe=64, refine=0)[1], truth)  # every list probed, no re-ranking
    assert plain < 0.6, plain


def test_refine_over_everything_is_exact_search(full, corpus) -> None:
    q = _mixture(20, 3)
    scores, ids = _ids(full, q, **_everything(q, N))
    assert ids.tolist() == exact_topk(q, corpus, 10).tolist()
    exact = np.take_along_axis(q @ corpus.T, ids, 1)
    assert np.allclose(scores, exact, atol=1e-5)
    s0, i0 = _ids(full, q, nprobe=64, refine=0)  # refine 0: faiss's own (PQ) ranking and scores
    assert not np.allclose(s0, exact, atol=1e-3)


def test_add_extends_the_raw_vectors(tmp_path, full, corpus) -> None:
    idx = tmp_path / "idx"
    shutil.copytree(full, idx)
    new = _mixture(2000, 5)
    new[7] = np.nan  # skipped: its row holds zeros, its id is never returned
    cfg = add_to_index(idx, ArraySource(new))
    assert cfg.raw["rows"] == N + 2000 and cfg.raw["segments"] == [[0, 0, N + 2000]]
    assert (idx / "vectors.f32").stat().st_size == (N + 2000) * D * 4
    both = np.concatenate([corpus, new[:7], new[8:]])  # what is indexed: ids past N + 7 are one row further on
    q = np.concatenate([_mixture(10, 4), new[100:110]])
    scores, ids = _ids(idx, q, **_everything(q, N + 2000))
    truth = exact_topk(q, both, 10)
    assert ids.tolist() == np.where(truth >= N + 7, truth + 1, truth).tolist()
    assert ids[10:, 0].tolist() == list(range(N + 100, N + 110)) and np.allclose(scores[10:, 0], 1, atol=1e-5)
    hit = Retriever(idx).search(new[1500], k=1)[0]  # at the tuned setting, through the Retriever
    assert hit.id == N + 1500 and hit.score == pytest.approx(1, abs=1e-5)


def test_deleted_ids_stay_out(tmp_path, full, corpus) -> None:
    idx = tmp_path / "idx"
    shutil.copytree(full, idx)
    q = _mixture(10, 6)
    top = exact_topk(q, corpus, 3)
    gone = sorted(set(top.ravel().tolist()))
    _, removed = delete_from_index(idx, gone)
    assert removed == len(gone) and read_config(idx).raw["rows"] == N  # rows stay; faiss no longer returns them
    scores, ids = _ids(idx, q, **_everything(q, N))
    assert not set(ids.ravel().tolist()) & set(gone)
    kept = corpus.copy()
    kept[gone] = -corpus[gone]  # as far from every query as it gets
    assert ids.tolist() == exact_topk(q, kept, 10).tolist()
    assert not set(_ids(idx, q)[1].ravel().tolist()) & set(gone)  # the tuned setting too


@pytest.mark.parametrize("ondisk", [False, True])
def test_parts_keep_their_raw_vectors(tmp_path, corpus, ondisk) -> None:
    x = corpus[:6000]
    cfg = build_parts(ArraySource(x), tmp_path / "idx", 2, ondisk=ondisk, factory="IVF16,PQ8x4", target_recall=0.9,
                      raw_vectors="float32")
    if ondisk:  # one file: the parts' rows one after the other
        assert cfg.raw["rows"] == 6000 and cfg.raw["segments"] == [[0, 0, 3000], [3000, 3000, 3000]]
        assert cfg.search_params.get("refine", 1) > 1
    q = _mixture(10, 8)
    _, ids = _ids(tmp_path / "idx", q, nprobe=16, refine=6000)
    assert ids.tolist() == exact_topk(q, x, 10).tolist()


def test_uncompressed_or_opted_out_indexes_keep_no_raw_vectors(tmp_path, corpus) -> None:
    assert is_compressed("IVF64,PQ8") and is_compressed("OPQ8_32,IVF64,PQ8") and is_compressed("IVF64,SQ8")
    assert not is_compressed("IVF64,Flat") and not is_compressed("HNSW32,Flat") and not is_compressed("SQfp16")
    x = corpus[:3000]
    for factory, raw in (("IVF16,Flat", "float16"), ("IVF16,PQ8x4", None)):
        out = tmp_path / factory.replace(",", "_")
        cfg = build_index(ArraySource(x), out, factory=factory, target_recall=0.9, raw_vectors=raw)
        assert cfg.raw == {} and "refine" not in cfg.search_params and not list(out.glob("vectors.*"))
        assert "on disk" not in cfg.choice
        scores, ids = _ids(out, x[:5], refine=8)  # asking to re-rank without raw vectors: faiss's own results
        plain_scores, plain_ids = _ids(out, x[:5])
        assert np.array_equal(ids, plain_ids) and np.allclose(scores, plain_scores)
    with pytest.raises(ValueError, match="raw vector dtype must be float16, float32 or none"):
        build_index(ArraySource(x), tmp_path / "bad", factory="IVF16,PQ8x4", raw_vectors="int8")
    with pytest.raises(ValueError, match="refine must be an integer >= 0"):
        _ids(tmp_path / "IVF16_PQ8x4", x[:2], refine=-1)


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_raw_vector_file_is_a_one_line_error(tmp_path, capsys, full, damage) -> None:
    idx = tmp_path / "idx"
    shutil.copytree(full, idx)
    np.save(tmp_path / "q.npy", _mixture(1, 9)[0])
    code, out, err = _cli(capsys, "search", idx, "--vector", tmp_path / "q.npy", "-k", "3", "--refine", "0")
    assert code == 0 and len(out.strip().splitlines()) == 3, err
    path = idx / "vectors.f32"
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: N * D * 2])
    code, _, err = _cli(capsys, "search", idx, "--vector", tmp_path / "q.npy", "-k", "3")
    assert code == 2 and str(path) in err and damage in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ValueError, match=f"{path}: raw vectors for re-ranking {damage}"):
        add_to_index(idx, ArraySource(_mixture(10, 2)))
