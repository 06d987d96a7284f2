"""Index writers under concurrency and hostile input (issue 12): the writer lock, outputs that are not ours,
NaN/inf rows, zero queries, out-of-range k / target recall, row pairing, too few training points, truncated
files, and one tie rule shared by the trainer's eval and `eval retrieval`."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from _cli import run_captured as run
from _retrieval_helpers import clustered

from anyalign.retrieval import ArraySource, Retriever, add_to_index, build_index, combine_parts, read_config
from anyalign.retrieval.index_safety import IndexBusyError, writer_lock
from anyalign.retrieval.metadata import MetadataStore

D = 16
TRIALS = 20


def _writer(barrier, folders: list[str], batch: str, source: str) -> None:
    """One writer process: for each trial, wait for the other writer, then add the same batch file."""
    import faiss

    faiss.omp_set_num_threads(1)
    vecs = np.load(batch)
    for folder in folders:
        barrier.wait(timeout=120)
        add_to_index(folder, ArraySource(vecs, [{"source": source}] * len(vecs)))


def test_concurrent_adds_lose_no_batch(tmp_path: Path) -> None:
    """Two processes add different batches to the same index at the same moment, 20 times: nothing is lost."""
    base = clustered(40, D, seed=0)
    folders = []
    for t in range(TRIALS):
        build_index(ArraySource(base, [{"source": "base"}] * 40), tmp_path / f"idx{t}", factory="Flat")
        folders.append(str(tmp_path / f"idx{t}"))
    for name, n, seed in (("a", 6, 1), ("b", 6, 2)):
        np.save(tmp_path / f"{name}.npy", clustered(n, D, seed=seed))
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(barrier, folders, str(tmp_path / f"{s}.npy"), s)) for s in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    lost = []
    for folder in folders:
        cfg = read_config(folder)
        with MetadataStore(Path(folder) / "metadata.sqlite", readonly=True) as meta:
            sources = sorted(meta.field_values("source").values())
            count = meta.count()
        if not (cfg.ntotal == count == 52 and cfg.next_id == 52 and sources.count("a") == sources.count("b") == 6):
            lost.append((folder, cfg.ntotal, count))
        assert len(Retriever(folder)) == cfg.ntotal
    assert not lost, f"{len(lost)} of {TRIALS} trials lost a batch: {lost}"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary folders left


def test_second_writer_times_out_with_a_clear_message(tmp_path: Path) -> None:
    build_index(ArraySource(clustered(40, D)), tmp_path / "idx", factory="Flat")
    with writer_lock(tmp_path / "idx"):
        with pytest.raises(IndexBusyError, match="another process is writing this index"):
            add_to_index(tmp_path / "idx", ArraySource(clustered(3, D)), lock_timeout=0.2)
    assert add_to_index(tmp_path / "idx", ArraySource(clustered(3, D)), lock_timeout=0.2).ntotal == 43
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # the lock file goes with the writer


# --- outputs that are not ours ---------------------------------------------------------------------------------
def _user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.txt").write_text("three years of work")
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_text("1,2")
    return path


def _two_parts(tmp_path: Path) -> list[Path]:
    x = clustered(600, D, seed=5)
    build_index(ArraySource(x), tmp_path / "trained", factory="IVF8,Flat", train_only=True)
    for r in range(2):
        build_index(ArraySource(x), tmp_path / f"p{r}", trained=tmp_path / "trained", rank=r, world_size=2)
    return [tmp_path / "p0", tmp_path / "p1"]


@pytest.mark.parametrize("writer", ["build", "train", "merge", "merge-ondisk"])
@pytest.mark.parametrize("victim", ["folder", "file"])
def test_writers_never_replace_what_they_did_not_write(tmp_path, writer, victim) -> None:
    parts = _two_parts(tmp_path) if writer.startswith("merge") else []
    out = tmp_path / "out"
    if victim == "folder":
        _user_folder(out)
    else:
        out.write_text("notes")

    def write(**kw):
        if writer == "build":
            return build_index(ArraySource(clustered(100, D)), out, factory="Flat", **kw)
        if writer == "train":
            return build_index(ArraySource(clustered(100, D)), out, factory="IVF4,Flat", train_only=True, **kw)
        return combine_parts(parts, out, ondisk=writer == "merge-ondisk", **kw)

    with pytest.raises(ValueError, match="refusing to replace.*--overwrite"):
        write()
    if victim == "folder":
        assert (out / "thesis.txt").read_text() == "three years of work" and (out / "sub" / "data.csv").is_file()
    else:
        assert out.read_text() == "notes"
    write(overwrite=True)  # with --overwrite it is replaced ...
    assert (out / "anyalign_index.json").is_file() and not (out / "thesis.txt").exists()
    write()  # ... and replacing its own artifacts needs no flag
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_merge_refuses_to_write_over_a_part(tmp_path) -> None:
    parts = _two_parts(tmp_path)
    before = read_config(parts[0]).ntotal
    for ondisk in (False, True):
        with pytest.raises(ValueError, match="would delete the part"):
            combine_parts(parts, parts[0], ondisk=ondisk)
    assert read_config(parts[0]).ntotal == before and Retriever(parts[0]).ntotal == before


def test_cli_merge_refuses_a_user_folder(tmp_path, capsys) -> None:
    parts = _two_parts(tmp_path)
    _user_folder(tmp_path / "out")
    code, _, err = run(capsys, "index", "merge", *parts, "-o", tmp_path / "out")
    assert code == 2 and "refusing to replace" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "out" / "thesis.txt").is_file()
    code, out, err = run(capsys, "index", "merge", *parts, "-o", tmp_path / "out", "--overwrite")
    assert code == 0 and "600 vectors" in out, err


# --- hostile input ---------------------------------------------------------------------------------------------
def _with_bad_rows(n: int = 300, seed: int = 0) -> np.ndarray:
    x = clustered(n, D, seed=seed)
    x[[3, 50 % n]] = np.nan
    x[7, 2] = np.inf
    x[[11, 12]] = 0.0
    return x


def test_build_and_add_skip_nan_inf_and_zero_rows_with_a_count(tmp_path, capsys) -> None:
    x = _with_bad_rows()
    np.save(tmp_path / "x.npy", x)
    code, out, err = run(capsys, "index", "build", tmp_path / "x.npy", "-o", tmp_path / "idx")
    assert code == 0, err
    assert "built Flat over 295 vectors" in out and "skipped 3 rows with NaN/inf values and 2 all-zero" in out
    cfg = read_config(tmp_path / "idx")
    assert cfg.skipped == {"nonfinite": 3, "zero": 2, "ids": [3, 7, 11, 12, 50]} and cfg.next_id == 300
    r = Retriever(tmp_path / "idx")
    assert len(r) == 295 and r.search(x[4], k=1)[0].id == 4
    hits = r.search_vectors(clustered(50, D, seed=9), 300)  # k beyond the size: everything
    assert all(len(h) == 295 and np.isfinite([x.score for x in h]).all() for h in hits)
    assert not {3, 7, 11, 12, 50} & {x.id for h in hits for x in h}
    np.save(tmp_path / "more.npy", _with_bad_rows(25, seed=3))
    code, out, err = run(capsys, "index", "add", tmp_path / "idx", tmp_path / "more.npy")
    assert code == 0 and "now 315 vectors" in out and "skipped 3 rows with NaN/inf values and 2 all-zero" in out, err
    assert read_config(tmp_path / "idx").skipped["nonfinite"] == 6
    np.save(tmp_path / "nan.npy", np.full((4, D), np.nan, np.float32))
    for args in (("index", "build", tmp_path / "nan.npy", "-o", tmp_path / "nan"),
                 ("index", "add", tmp_path / "idx", tmp_path / "nan.npy")):
        code, _, err = run(capsys, *args)
        assert code == 2 and "no usable vectors" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nan").exists() and read_config(tmp_path / "idx").ntotal == 315


@pytest.fixture()
def flat(tmp_path: Path) -> Path:
    np.save(tmp_path / "x.npy", clustered(200, D))
    build_index(tmp_path / "x.npy", tmp_path / "idx", factory="Flat")
    return tmp_path / "idx"


def test_zero_and_nan_queries_are_clear_errors(flat, tmp_path, capsys) -> None:
    r = Retriever(flat)
    with pytest.raises(ValueError, match="all zeros"):
        r.search(np.zeros(D, np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        r.search(np.full(D, np.nan, np.float32))
    np.save(tmp_path / "zero.npy", np.zeros(D, np.float32))
    code, _, err = run(capsys, "search", flat, "--vector", tmp_path / "zero.npy")
    assert code == 2 and "query vector is all zeros" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("k,expect", [("2000000000", 200), ("201", 200), ("5", 5), ("0", None), ("-3", None)])
def test_search_k_is_clamped_or_refused(flat, tmp_path, capsys, k, expect) -> None:
    np.save(tmp_path / "q.npy", clustered(1, D, seed=4)[0])
    code, out, err = run(capsys, "search", flat, "--vector", tmp_path / "q.npy", "-k", k, "--json")
    if expect is None:
        assert code == 2 and "-k must be >= 1" in err and len(err.strip().splitlines()) == 1
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            Retriever(flat).search(clustered(1, D)[0], k=int(k))
    else:
        assert code == 0, err
        assert len(__import__("json").loads(out)) == expect


@pytest.mark.parametrize("target", ["0", "-0.5", "1.5", "nan"])
def test_target_recall_outside_0_1_is_refused(tmp_path, capsys, target) -> None:
    np.save(tmp_path / "x.npy", clustered(100, D))
    code, _, err = run(capsys, "index", "build", tmp_path / "x.npy", "-o", tmp_path / "idx", "--target-recall", target)
    assert code == 2 and "target recall must be in (0, 1]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "idx").exists()


def test_eval_row_match_needs_equal_counts(flat, tmp_path, capsys) -> None:
    np.save(tmp_path / "q.npy", clustered(150, D, seed=2))
    for gallery in (tmp_path / "x.npy", flat):
        code, _, err = run(capsys, "eval", "retrieval", tmp_path / "q.npy", gallery)
        assert code == 2 and "150 queries" in err and "200 items" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("factory,n,need", [("IVF1024,Flat", 500, 1024), ("IVF4,PQ4", 100, 256),
                                            ("OPQ4_16,IVF4,PQ4", 100, 256)])
def test_factory_needing_more_training_points_is_one_line(tmp_path, capsys, factory, n, need) -> None:
    np.save(tmp_path / "x.npy", clustered(n, D))
    code, _, err = run(capsys, "index", "build", tmp_path / "x.npy", "-o", tmp_path / "idx", "--factory", factory)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"needs at least {need} training vectors" in err and f"only {n} usable" in err and factory in err


@pytest.mark.parametrize("name", ["index.faiss", "metadata.sqlite", "index.ivfdata"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_index_files_are_one_line_errors(tmp_path, capsys, name, keep) -> None:
    if name == "index.ivfdata":
        parts = _two_parts(tmp_path)
        combine_parts(parts, tmp_path / "idx", ondisk=True)
    else:
        x = clustered(3000, D)
        build_index(ArraySource(x, [{"source": f"/data/{i}.png", "n": i} for i in range(3000)]), tmp_path / "idx",
                    factory="IVF16,Flat")
    path = tmp_path / "idx" / name
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    np.save(tmp_path / "q.npy", clustered(1, D, seed=8)[0])
    code, _, err = run(capsys, "search", tmp_path / "idx", "--vector", tmp_path / "q.npy", "-k", "3")
    assert code == 2 and str(path) in err and len(err.strip().splitlines()) == 1, err
    assert "truncated" in err or "corrupt" in err or "not a readable" in err or "malformed" in err


# --- ties ------------------------------------------------------------------------------------------------------
def test_ties_rank_pessimistically_in_trainer_and_eval_retrieval(tmp_path) -> None:
    """Constructed ties: query i's match ties with other items; both evaluations count those above the match."""
    import torch

    from anyalign.align.evaluate import match_ranks, recall_at_k
    from anyalign.retrieval import evaluate_retrieval

    # 4 items on 2 distinct directions: items 0,1 identical, items 2,3 identical; query i = item i
    g = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]], np.float32)
    q = g.copy()
    ranks = match_ranks(torch.from_numpy(q), torch.from_numpy(g))
    assert ranks.tolist() == [2, 2, 2, 2]  # every match ties with one other item, which counts as above it
    assert recall_at_k(torch.from_numpy(q), torch.from_numpy(g), [1, 2]) == {1: 0.0, 2: 1.0}
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "g.npy", g)
    exact = evaluate_retrieval(tmp_path / "q.npy", tmp_path / "g.npy", ks=(1, 2))
    build_index(tmp_path / "g.npy", tmp_path / "idx", factory="Flat")
    via_index = evaluate_retrieval(tmp_path / "q.npy", tmp_path / "idx", ks=(1, 2))
    for out in (exact, via_index):
        assert out["recall@1"] == 0.0 and out["recall@2"] == 1.0 and out["median_rank"] == 2.0
    # a mixed case: trainer and eval agree on recall@K and median rank
    rng = np.random.default_rng(0)
    g = np.round(rng.standard_normal((60, 4)), 0).astype(np.float32)  # coarse values: many exact ties
    g[np.abs(g).sum(1) == 0] = 1.0
    q = g.copy()
    q[::3] = np.round(q[::3] + rng.standard_normal((20, 4)), 0)
    q[np.abs(q).sum(1) == 0] = 1.0
    np.save(tmp_path / "q2.npy", q)
    np.save(tmp_path / "g2.npy", g)
    ranks = match_ranks(torch.from_numpy(q), torch.from_numpy(g)).numpy()
    out = evaluate_retrieval(tmp_path / "q2.npy", tmp_path / "g2.npy", ks=(1, 5))
    build_index(tmp_path / "g2.npy", tmp_path / "idx2", factory="Flat")
    via_index = evaluate_retrieval(tmp_path / "q2.npy", tmp_path / "idx2", ks=(1, 5))
    for k in (1, 5):
        assert out[f"recall@{k}"] == pytest.approx(np.mean(ranks <= k))
        assert via_index[f"recall@{k}"] == pytest.approx(np.mean(ranks <= k))
    assert out["median_rank"] == np.median(ranks)
