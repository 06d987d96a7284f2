"""Build an index folder: train on a sample, add the corpus in batches straight from the embedding shards, tune the
search parameters on held-out queries and write the folder atomically (the rules are in `index.py`'s docstring)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from ..io import atomic_path, check_not_input
from .autoindex import choose_index, format_bytes, is_compressed, training_size
from .index import (
    IndexConfig,
    _add_rows,
    _normalized,
    _Skipped,
    fingerprint,
    gpu_count,
    invalid_rows,
    load_index,
    new_index,
    supports_remove,
    to_cpu,
    to_gpu,
    write_index_dir,
)
from .index_safety import check_k, check_output, check_target_recall, writer_lock
from .metadata import METADATA_NAME, MetadataStore
from .rawvectors import DTYPES, RawVectors, RawWriter, check_dtype
from .sources import EmbeddingSource, open_sources, rank_range
from .tuning import ExactNeighbours, _inner, ivf_of, query_side, sample_ranges, tune

logger = logging.getLogger(__name__)


def build_index(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike | EmbeddingSource | np.ndarray,
    output: str | os.PathLike,
    *,
    factory: str = "auto",
    memory: str | int | None = "4G",
    target_recall: float = 0.95,
    k: int = 10,
    tune_queries: int | str | os.PathLike | EmbeddingSource | np.ndarray = 500,
    batch_size: int = 65536,
    trained: str | os.PathLike | None = None,
    rank: int = 0,
    world_size: int = 1,
    embedders: dict[str, dict[str, Any]] | None = None,
    use_gpu: bool | None = None,
    seed: int = 0,
    train_only: bool = False,
    overwrite: bool = False,
    lock_timeout: float | None = None,
    raw_vectors: str | None = "float16",
    ef_construction: int | None = None,
) -> IndexConfig:
    """Index embedding inputs into folder `output` (see the module docstring); returns the written config.

    Args:
        factory: "auto" (chosen from corpus size, dim and `memory`) or a faiss factory string.
        tune_queries: how many corpus vectors to hold out as tuning queries, or the user's own query set
            (embeddings path, source or array) that nprobe/efSearch are tuned on.
        trained: an index folder written with `train_only=True`; parts built from it can be merged on disk.
        rank, world_size: index only this process's contiguous share of the ids (one part of a sharded build).
        embedders: modality -> embedder spec to record for queries (added to the ones the inputs name).
        use_gpu: None = when faiss reports GPUs.
        train_only: stop after training and write an empty, trained index.
        overwrite: replace `output` even when it is a file or a folder that is not an anyalign index.
        lock_timeout: seconds to wait for another writer of `output` (None: wait as long as it takes).
        raw_vectors: for compressed (PQ/OPQ/SQ) indexes, keep the normalised vectors on disk in this dtype
            ("float16" or "float32"; None: do not) to re-rank candidates exactly (the tuned `refine` factor).
        ef_construction: build-time beam of an HNSW graph (faiss's default 40 when None); large corpora of tight
            clusters need more to reach the target recall at any efSearch (benchmarks/retrieval.py).
    """
    k = check_k(k, "k of the tuning recall@k")
    target_recall = check_target_recall(target_recall)
    raw_vectors = check_dtype(raw_vectors)
    output = Path(output)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = [p for p in inputs if isinstance(p, (str, os.PathLike))] if isinstance(inputs, (list, tuple)) else []
    check_not_input(output, paths + ([trained] if trained is not None else []))
    with writer_lock(output, lock_timeout):
        check_output(output, overwrite=overwrite)
        return _build(open_sources(inputs), output, factory=factory, memory=memory, target_recall=target_recall,
                      k=k, tune_queries=tune_queries, batch_size=batch_size, trained=trained, rank=rank,
                      world_size=world_size, embedders=embedders, use_gpu=use_gpu, seed=seed, train_only=train_only,
                      raw_vectors=raw_vectors, ef_construction=ef_construction)


def _query_set(queries: Any, dim: int) -> tuple[np.ndarray, str]:
    """The user's tuning queries, normalised `[Q, E]` (rows that cannot be searched are dropped)."""
    src = open_sources(queries)
    if src.dim != dim:
        raise ValueError(f"dimension mismatch: tuning queries {src.name} have dim {src.dim}, the corpus {dim}")
    vecs = [b.vectors for b in src.batches()]
    x = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)
    nonfinite, zero = invalid_rows(x)
    if (nonfinite | zero).any():
        logger.warning("%s: %d tuning queries with NaN/inf values or zero norm dropped", src.name,
                       int((nonfinite | zero).sum()))
        x = x[~(nonfinite | zero)]
    if len(x) == 0:
        raise ValueError(f"{src.name}: no usable tuning queries (0 rows with finite, non-zero values)")
    return _normalized(x), src.name


def _min_training_points(index: faiss.Index) -> int:
    """Fewest training vectors faiss accepts for this index (IVF: nlist; PQ codebooks: 2^nbits)."""
    need = 0
    ivf = ivf_of(index)
    if ivf is not None:
        need = int(ivf.nlist)
    inner = faiss.downcast_index(ivf if ivf is not None else _inner(index))
    pq = getattr(inner, "pq", None)
    if pq is not None:
        need = max(need, int(pq.ksub))
    return need


def _train(work: faiss.Index, sample: np.ndarray, factory: str) -> None:
    need = _min_training_points(work)
    if len(sample) < need:
        raise ValueError(f"faiss factory {factory!r} needs at least {need} training vectors, but only "
                         f"{len(sample)} usable vectors were given; use a smaller factory (fewer IVF lists, "
                         "fewer PQ bits) or --factory auto")
    t0 = time.perf_counter()
    try:
        work.train(sample)
    except RuntimeError as e:
        lines = [s for s in str(e).strip().splitlines() if s.strip()]
        reason = lines[-1].split("Error: ")[-1] if lines else str(e)
        raise ValueError(f"faiss factory {factory!r} could not be trained on {len(sample)} vectors: {reason}") \
            from None
    logger.info("trained on %d vectors in %.1fs", len(sample), time.perf_counter() - t0)


def _build(source: EmbeddingSource, output: Path, *, factory: str, memory: str | int | None, target_recall: float,
           k: int, tune_queries: Any, batch_size: int, trained: str | os.PathLike | None, rank: int,
           world_size: int, embedders: dict[str, dict[str, Any]] | None, use_gpu: bool | None, seed: int,
           train_only: bool, raw_vectors: str | None = None, ef_construction: int | None = None) -> IndexConfig:
    t_start = time.perf_counter()
    start, stop = rank_range(len(source), rank, world_size)
    n = stop - start
    if train_only:  # sample the whole corpus; the auto choice is sized for one of `world_size` parts
        start, stop = 0, len(source)
    if n == 0:
        raise ValueError(f"{source.name}: empty corpus (0 vectors{' for this rank' if len(source) else ''}); "
                         "nothing to index")
    dim = source.dim
    if k > n:  # recall@k over more neighbours than the corpus holds would only allocate [Q, k] for nothing
        logger.warning("k of the tuning recall@k lowered from %d to the %d vectors indexed", k, n)
        k = n
    gpu = gpu_count() > 0 if use_gpu is None else bool(use_gpu and gpu_count() > 0)

    base_cfg: IndexConfig | None = None
    if trained is not None:
        index, base_cfg = load_index(trained)
        if base_cfg.kind != "trained" or index.ntotal:
            raise ValueError(f"{trained}: expected an empty trained index (from `anyalign index train`)")
        if base_cfg.dim != dim:
            raise ValueError(f"dimension mismatch: {trained} was trained for dim {base_cfg.dim}, "
                             f"{source.name} has dim {dim}")
        factory_str, reason = base_cfg.factory, f"trained index {trained}"
    else:
        if factory in ("auto", "", None):
            choice = choose_index(n, dim, memory, gpu=gpu)
            factory_str, reason = choice.factory, choice.reason
        else:
            factory_str, reason = factory, "given"
        index = new_index(factory_str, dim, ef_construction)
    logger.info("index %s: %d x %d, %s (%s)", output, n, dim, factory_str, reason)

    # tuning queries: the user's own set, or a sample held out of the index until tuning is done (queries that
    # are corpus members would find themselves and overstate recall); both stay out of the training sample
    user_queries = not isinstance(tune_queries, (int, np.integer)) or isinstance(tune_queries, bool)
    if user_queries and not train_only:
        queries, query_name = _query_set(tune_queries, dim)
        nq = 0
    else:
        if int(tune_queries) < 0:
            raise ValueError(f"tune_queries must be >= 0 held-out queries or a query set, got {tune_queries}")
        nq = 0 if train_only else max(0, min(int(tune_queries), n // 10))
        query_name = "held-out corpus sample"
    n_train = 0 if index.is_trained else max(training_size(factory_str, n), min(n, 1000))
    sample_ids, sample = source.sample(min(n_train + nq, stop - start), seed, start=start, stop=stop)
    nonfinite, zero = invalid_rows(sample)
    ok = ~(nonfinite | zero)
    sample_ids, sample = sample_ids[ok], _normalized(sample[ok])
    order = np.random.default_rng(seed + 1).permutation(len(sample_ids))
    nq = min(nq, len(order) // 2 if n_train else len(order))  # leave training data when the index needs it
    # the held-out queries stay out of training too (codebooks fitted to them overstate a PQ index's recall by
    # ~0.02), unless that leaves fewer vectors than faiss needs
    enough = len(order) - nq >= (_min_training_points(index) if n_train else 0)
    q_pick, t_pick = order[:nq], (order[nq:] if enough else order)
    if not user_queries or train_only:
        held_ids, queries = sample_ids[q_pick], sample[q_pick]
    else:
        held_ids = np.zeros(0, dtype=np.int64)
    # queries from another modality (the space's text side): hold out rows of that side when the index has them
    side = None if user_queries or train_only else query_side(source, {**source.embedders, **(embedders or {})})
    if side is not None and side.ranges and nq:
        held_ids = sample_ranges(side.ranges, nq, seed + 2, start, stop)
        queries = source.take(held_ids)
        bad = np.logical_or(*invalid_rows(queries))
        held_ids, queries = held_ids[~bad], _normalized(queries[~bad])
        t_pick = np.flatnonzero(~np.isin(sample_ids, held_ids)) if enough else t_pick
        query_name = f"held-out {side.modality} rows"
    side_warning = side.warning(source.modality or "corpus") if side is not None else None
    if side_warning:
        logger.warning("%s: %s", output, side_warning)
    held = {int(i): j for j, i in enumerate(held_ids)}

    work = (to_gpu(index) if gpu else None) or index
    if not work.is_trained:
        _train(work, sample[np.sort(t_pick)], factory_str)
    del sample
    fp = base_cfg.trained_fingerprint if base_cfg else fingerprint(work)

    config = IndexConfig(dim=dim, factory=factory_str, kind="trained" if train_only else "single",
                         trained_fingerprint=fp, modality=source.modality, choice=reason,
                         embedders={**source.embedders, **(embedders or {})}, sources=[source.name])
    skipped = _Skipped()
    keep_raw = raw_vectors is not None and not train_only and is_compressed(factory_str)
    if keep_raw:
        config.choice += (f"; normalised vectors kept on disk for exact re-ranking ({raw_vectors}, "
                          f"{format_bytes(n * dim * np.dtype(DTYPES[raw_vectors][1]).itemsize)}, memory-mapped: read "
                          "through the page cache, outside the memory budget)")
    with atomic_path(output, is_dir=True) as tmp:
        if not train_only:
            exact = ExactNeighbours(queries, k)
            held_meta: list[dict[str, Any]] = [{} for _ in held_ids]
            writer = RawWriter(tmp, raw_vectors, dim=dim) if keep_raw else None
            with MetadataStore(tmp / METADATA_NAME) as meta:
                for batch in tqdm(source.batches(batch_size, start=start, stop=stop), desc="adding",
                                  total=-(-n // batch_size), unit="batch", disable=n <= batch_size):
                    keep = skipped.keep(batch.ids, batch.vectors)
                    vectors, normalized = batch.vectors, False
                    if writer is not None:  # every row, the held-out queries' too (they join the index later)
                        vectors, normalized = _normalized(batch.vectors), True  # once, for both
                        writer.add(batch.ids, vectors, keep)
                    if held:
                        out = np.isin(batch.ids, held_ids)
                        for j in np.flatnonzero(out & keep):
                            held_meta[held[int(batch.ids[j])]] = batch.metadata[j]
                        keep &= ~out
                    _add_rows(work, meta, batch.ids, vectors, batch.metadata, keep, source.modality, exact,
                              normalized=normalized)
                index = to_cpu(work)
                raw = None
                if writer is not None:
                    config.raw = writer.close()
                    raw = RawVectors(tmp, config.raw)
                t_tune = time.perf_counter()
                result = tune(index, queries, exact.result(), k=k, target=target_recall, raw=raw)
                t_tune = time.perf_counter() - t_tune
                del raw
                if len(held_ids):  # the held-out queries join the index once tuning is done
                    _add_rows(index, meta, held_ids, queries, held_meta, np.ones(len(held_ids), bool),
                              source.modality, None, normalized=True)
            config.search_params = result.params
            config.tuning = {"target_recall": target_recall, "k": k, "recall": round(result.recall, 4),
                             "recall_lower": round(result.lower, 4), "queries": int(len(queries)),
                             "query_set": query_name, "reached": result.reached, "seconds": round(t_tune, 2),
                             "held_out": int(len(held_ids)), "corpus_rows": int(index.ntotal),
                             "query_modality": side.modality if side else None, "trace": result.trace}
            if side_warning:
                config.tuning["warning"] = side_warning
            config.next_id = int(stop)
            config.tombstones = not supports_remove(index)
            config.skipped = skipped.record()
            skipped.log(source.name)
            if index.ntotal == 0:
                raise ValueError(f"{source.name}: no usable vectors ({skipped.nonfinite} with NaN/inf, "
                                 f"{skipped.zero} all zero); nothing to index")
        else:
            index = to_cpu(work)
        config.build_seconds = round(time.perf_counter() - t_start, 2)
        write_index_dir(tmp, index, config)
    return config


__all__ = ["build_index", "rank_range"]
