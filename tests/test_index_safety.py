"""Index writers under concurrency and hostile input (issue 12): the writer lock, outputs that are not ours,
NaN/inf rows, zero queries, out-of-range k / target recall, row pairing, too few training points, truncated
files, and one tie rule shared by the trainer's eval and `eval retrieval`."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
from _retrieval_helpers import clustered

from anyalign.retrieval import ArraySource, Retriever, add_to_index, build_index, read_config
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
