"""Build, save, load and update a faiss index folder over the shared embedding space.

An index folder holds `index.faiss`, `anyalign_index.json` (`IndexConfig`: dim, metric, factory, tuned search
parameters, how queries are embedded) and `metadata.sqlite`. Builds train on a sample, add the corpus in
batches straight from the embedding shards (never loading it whole), tune nprobe/efSearch to a target recall on
held-out queries and write the folder atomically: a failed build leaves any previous index untouched.
Vectors are L2-normalised and compared by inner product (cosine similarity).
Compressed indexes (PQ/OPQ/SQ codes) also keep the normalised vectors on disk (`vectors.f16`, float16 unless
`raw_vectors="float32"`; `None` for none), written as they stream in and kept in step by adds: a search fetches
`k * refine` candidates from faiss and re-ranks them exactly against those rows (`rawvectors.py`); `refine` is
tuned with nprobe. That file is memory-mapped and read through the page cache, outside the memory budget (the
pages read show in a searching process's RSS as shared, reclaimable file pages, up to the file's size).

Safety rules every writer (build, train, add, delete, merge) follows:
  * one writer at a time: it holds `.NAME.lock` beside the index folder while it writes (`filelock`; beside, not
    inside, because the folder itself is swapped atomically; removed again when done); a second writer waits, or
    fails after `lock_timeout` seconds with `IndexBusyError`;
  * it never replaces a path it did not write: an existing file, or a folder holding anything but an anyalign
    index's own files, is refused unless `overwrite=True`;
  * rows with NaN/inf values or a zero norm are skipped (they have no direction and could never be found),
    counted in `IndexConfig.skipped` and logged; their ids are left unused.
Tuning queries are held out: a random sample of the corpus is kept out of the index while nprobe/efSearch are
tuned (then added), or the user's own query set is used; the recall reported is the one on those queries.
On machines where faiss reports GPUs (`faiss-gpu` extra), training, adding and searching run on them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from ..config import read_saved, to_dict
from ..io import atomic_path, check_not_input, write_json
from ..version import FORMAT_VERSION, __version__
from .autoindex import choose_index, format_bytes, is_compressed, training_size
from .index_safety import (
    CONFIG_NAME,
    INDEX_NAME,
    IVFDATA_NAME,
    IndexBusyError,
    check_factory,
    check_k,
    check_output,
    check_target_recall,
    lock_path,
    writer_lock,
)
from .metadata import METADATA_NAME, MetadataStore
from .rawvectors import DTYPES, RawVectors, RawWriter, check_dtype
from .sources import EmbeddingSource, open_sources
from .tuning import ExactNeighbours, _inner, ivf_of, query_side, sample_ranges, set_params, tune

logger = logging.getLogger(__name__)

MAX_SKIPPED_IDS = 20  # ids of skipped rows kept in the config (the count is exact)


@dataclass
class IndexConfig:
    """What `anyalign_index.json` records about an index folder."""

    dim: int
    factory: str
    kind: str = "single"  # single | set (parts searched together) | trained (empty, for independent builds)
    metric: str = "IP"
    normalized: bool = True
    ntotal: int = 0
    next_id: int = 0  # id given to the next added vector
    search_params: dict[str, int] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)  # target, k, held-out recall reached, queries used
    embedders: dict[str, dict[str, Any]] = field(default_factory=dict)  # modality -> how to embed queries
    modality: str | None = None  # modality of the corpus
    ondisk: bool = False  # inverted lists in index.ivfdata (merged from parts)
    tombstones: bool = False  # deletes are flagged in metadata (the index cannot remove vectors)
    trained_fingerprint: str | None = None  # sha256 of the empty trained index (parts that share it can merge)
    parts: list[str] = field(default_factory=list)  # kind == "set": part folders, relative to this folder
    raw: dict[str, Any] = field(default_factory=dict)  # raw vectors on disk for re-ranking (rawvectors.py)
    sources: list[str] = field(default_factory=list)
    skipped: dict[str, Any] = field(default_factory=dict)  # rows not indexed: nonfinite / zero counts, first ids
    choice: str = ""  # why the factory was chosen
    build_seconds: float = 0.0
    format_version: int = FORMAT_VERSION
    anyalign_version: str = __version__


# --- input checks ------------------------------------------------------------------------------------------
def invalid_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks `[N]` of rows with a NaN/inf value and of (finite) rows with zero norm."""
    nonfinite = ~np.isfinite(x).all(axis=1)
    zero = ~nonfinite & ~np.any(x != 0, axis=1)
    return nonfinite, zero


class _Skipped:
    """Counts (and the first ids of) rows left out of an index because they cannot be searched."""

    def __init__(self, previous: dict[str, Any] | None = None) -> None:
        prev = previous or {}
        self.nonfinite, self.zero = int(prev.get("nonfinite", 0)), int(prev.get("zero", 0))
        self.ids: list[int] = list(prev.get("ids", []))
        self.new = 0

    def keep(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Mask of rows to index; the others are counted."""
        nonfinite, zero = invalid_rows(vectors)
        bad = nonfinite | zero
        if bad.any():
            self.nonfinite += int(nonfinite.sum())
            self.zero += int(zero.sum())
            self.new += int(bad.sum())
            self.ids += [int(i) for i in ids[bad][: max(MAX_SKIPPED_IDS - len(self.ids), 0)]]
        return ~bad

    def record(self) -> dict[str, Any]:
        if not (self.nonfinite or self.zero):
            return {}
        return {"nonfinite": self.nonfinite, "zero": self.zero, "ids": self.ids}

    def log(self, name: str) -> None:
        if self.new:
            logger.warning("%s: skipped %d rows with NaN/inf values or zero norm (first ids %s); they are not "
                           "indexed", name, self.new, self.ids[:5])


# --- GPU ---------------------------------------------------------------------------------------------------
def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def to_gpu(index: faiss.Index) -> faiss.Index | None:
    """A copy of `index` on all GPUs, or None when there are none or faiss has no GPU version of this type."""
    if gpu_count() == 0 or isinstance(_inner(index), faiss.IndexHNSW):
        return None
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as e:
        logger.warning("faiss could not move %s to GPU (%s); using the CPU", type(index).__name__, e)
        return None


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if hasattr(faiss, "index_gpu_to_cpu") and _on_gpu(index) else index


def _on_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(faiss.downcast_index(index)).__name__ or "Gpu" in type(index).__name__


# --- creation --------------------------------------------------------------------------------------------
def new_index(factory: str, dim: int, ef_construction: int | None = None) -> faiss.Index:
    """An empty inner-product index from a factory string; types without native ids get an `IDMap2` wrapper.
    `ef_construction`: an HNSW graph's build-time beam (faiss's default 40; larger: better graphs, slower builds)."""
    check_factory(factory, dim)
    try:
        index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "rejected"
        raise ValueError(f"unknown or invalid faiss factory string {factory!r} for dim {dim}: {reason} "
                         "(examples: Flat, HNSW32,Flat, IVF1024,Flat, OPQ32_128,IVF1024,PQ32)") from None
    if ef_construction is not None:
        graph = getattr(faiss.downcast_index(index), "hnsw", None)
        if graph is None:
            raise ValueError(f"ef_construction applies to HNSW indexes; {factory!r} has no HNSW graph")
        graph.efConstruction = check_k(ef_construction, "ef_construction")
    if ivf_of(index) is None and not isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.IndexIDMap2(index)
    return index


def supports_remove(index: faiss.Index) -> bool:
    """True when `index.remove_ids` works for this type (HNSW graphs cannot drop vectors)."""
    try:
        index.remove_ids(faiss.IDSelectorBatch(np.zeros(0, dtype=np.int64)))
        return True
    except RuntimeError:
        return False


def fingerprint(index: faiss.Index) -> str:
    """sha256 of a trained, empty index: parts built from the same trained index share it."""
    return hashlib.sha256(faiss.serialize_index(to_cpu(index)).tobytes()).hexdigest()


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32, copy=True, order="C")
    faiss.normalize_L2(x)
    return x


# --- persistence -------------------------------------------------------------------------------------------
def read_config(index_dir: str | os.PathLike) -> IndexConfig:
    return read_saved(IndexConfig, Path(index_dir) / CONFIG_NAME, what="index")


def read_faiss(path: Path, *, ondisk: bool = False, mmap: bool = False) -> faiss.Index:
    """`faiss.read_index` with a clear error for missing, truncated or corrupt files."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: index file missing")
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if ondisk else (faiss.IO_FLAG_MMAP if mmap else 0)
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError as e:
        lines = [s for s in str(e).strip().splitlines() if s.strip()]
        reason = lines[-1].split("Error: ")[-1] if lines else str(e)
        raise ValueError(f"{path}: corrupt or unreadable faiss index ({reason})") from None
    if ondisk:
        _check_ivfdata(index, path.parent / IVFDATA_NAME)
    return index


def _check_ivfdata(index: faiss.Index, data: Path) -> None:
    """A memory-mapped inverted-list file shorter than the index expects would crash searches (SIGBUS)."""
    ivf = ivf_of(index)
    invlists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if not isinstance(invlists, faiss.OnDiskInvertedLists):
        return
    have = data.stat().st_size if data.is_file() else -1
    if have < int(invlists.totsize):
        raise ValueError(f"{data}: truncated or missing inverted lists ({max(have, 0)} bytes, the index expects "
                         f"{int(invlists.totsize)})")


def load_index(index_dir: str | os.PathLike, *, mmap: bool = False) -> tuple[faiss.Index, IndexConfig]:
    """Read a single (or trained) index folder; tuned search parameters are applied."""
    config = read_config(index_dir)
    if config.kind == "set":
        raise ValueError(f"{index_dir}: a sharded index set; open it with Retriever or shards.load_parts")
    index = read_faiss(Path(index_dir) / INDEX_NAME, ondisk=config.ondisk, mmap=mmap)
    if index.d != config.dim:
        raise ValueError(f"{index_dir}: {INDEX_NAME} has dim {index.d} but {CONFIG_NAME} says {config.dim}")
    set_params(index, config.search_params)
    return index, config


def write_index_dir(folder: Path, index: faiss.Index, config: IndexConfig) -> None:
    config.ntotal = int(index.ntotal)
    try:
        faiss.write_index(to_cpu(index), str(folder / INDEX_NAME))
    except RuntimeError as e:  # faiss reports a failed write (disk full, permission) as a RuntimeError
        raise faiss_write_error(e, folder / INDEX_NAME) from None
    write_json(folder / CONFIG_NAME, to_dict(config))


def faiss_write_error(e: RuntimeError, path: Path) -> OSError:
    """The OSError behind faiss's RuntimeError of a failed write (its errno when the message names one)."""
    import errno as errno_

    text = str(e)
    for code in (errno_.ENOSPC, errno_.EDQUOT, errno_.EACCES, errno_.EROFS, errno_.EIO):
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code), str(path))
    return OSError(errno_.EIO, f"faiss could not write the index ({text.strip().splitlines()[-1][-200:]})", str(path))


# --- build -------------------------------------------------------------------------------------------------
def rank_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous id range `[start, stop)` that process `rank` of `world_size` indexes."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    return n * rank // world_size, n * (rank + 1) // world_size


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
            exact = ExactNeighbours(queries, np.full(len(queries), -1, dtype=np.int64), k)
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
                result = tune(index, queries, np.full(len(queries), -1, dtype=np.int64), exact.result(), k=k,
                              target=target_recall, raw=raw)
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


def _add_rows(index: faiss.Index, meta: MetadataStore, ids: np.ndarray, vectors: np.ndarray,
              metadata: Sequence[dict[str, Any]], keep: np.ndarray, modality: str | None,
              exact: ExactNeighbours | None, *, normalized: bool = False) -> None:
    """Add the kept rows (vectors, ids, metadata) to the index, the metadata store and the exact neighbours."""
    if not keep.any():
        return
    sel = np.flatnonzero(keep)
    ids = np.ascontiguousarray(ids[sel], dtype=np.int64)
    vecs = np.ascontiguousarray(vectors[sel], dtype=np.float32) if normalized else _normalized(vectors[sel])
    index.add_with_ids(vecs, ids)
    if exact is not None:
        exact.add(ids, vecs)
    rows = [metadata[j] for j in sel]
    if modality:
        for row in rows:
            row.setdefault("modality", modality)
    meta.add(ids, rows)



__all__ = ["CONFIG_NAME", "INDEX_NAME", "IVFDATA_NAME", "IndexBusyError", "IndexConfig",
           "build_index", "check_factory", "check_k", "check_output", "check_target_recall",
           "gpu_count", "invalid_rows", "load_index", "lock_path", "new_index", "read_config", "read_faiss",
           "supports_remove", "to_gpu", "write_index_dir", "writer_lock"]
