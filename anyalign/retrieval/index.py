"""Build, save, load and update a faiss index folder over the shared embedding space.

An index folder holds `index.faiss`, `anyalign_index.json` (`IndexConfig`: dim, metric, factory, tuned search
parameters, how queries are embedded) and `metadata.sqlite`. Builds train on a sample, add the corpus in
batches straight from the embedding shards (exact neighbours of the tuning queries are gathered on the way),
tune nprobe/efSearch to a target recall and write the folder atomically: a failed build leaves any previous
index untouched. Vectors are L2-normalised and compared by inner product (cosine similarity).
On machines where faiss reports GPUs (`faiss-gpu` extra), training, adding and searching run on them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from ..config import from_dict, to_dict
from ..io import atomic_path, read_json, write_json
from ..version import FORMAT_VERSION, __version__
from .autoindex import choose_index, training_size
from .metadata import METADATA_NAME, MetadataStore
from .sources import EmbeddingSource, open_sources
from .tuning import ExactNeighbours, _inner, ivf_of, set_params, tune

logger = logging.getLogger(__name__)

INDEX_NAME = "index.faiss"
CONFIG_NAME = "anyalign_index.json"
IVFDATA_NAME = "index.ivfdata"


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
    tuning: dict[str, Any] = field(default_factory=dict)  # target, k, recall reached, queries used
    embedders: dict[str, dict[str, Any]] = field(default_factory=dict)  # modality -> how to embed queries
    modality: str | None = None  # modality of the corpus
    ondisk: bool = False  # inverted lists in index.ivfdata (merged from parts)
    tombstones: bool = False  # deletes are flagged in metadata (the index cannot remove vectors)
    trained_fingerprint: str | None = None  # sha256 of the empty trained index (parts that share it can merge)
    parts: list[str] = field(default_factory=list)  # kind == "set": part folders, relative to this folder
    sources: list[str] = field(default_factory=list)
    choice: str = ""  # why the factory was chosen
    build_seconds: float = 0.0
    format_version: int = FORMAT_VERSION
    anyalign_version: str = __version__


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
def new_index(factory: str, dim: int) -> faiss.Index:
    """An empty inner-product index from a factory string; types without native ids get an `IDMap2` wrapper."""
    try:
        index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "rejected"
        raise ValueError(f"unknown or invalid faiss factory string {factory!r} for dim {dim}: {reason} "
                         "(examples: Flat, HNSW32,Flat, IVF1024,Flat, OPQ32_128,IVF1024,PQ32)") from None
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
    path = Path(index_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{index_dir}: not an anyalign index folder (missing {CONFIG_NAME})")
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return from_dict(IndexConfig, data, source=str(path), strict=False)


def read_faiss(path: Path, *, ondisk: bool = False, mmap: bool = False) -> faiss.Index:
    """`faiss.read_index` with a clear error for missing or corrupt files."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: index file missing")
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if ondisk else (faiss.IO_FLAG_MMAP if mmap else 0)
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as e:
        lines = [s for s in str(e).strip().splitlines() if s.strip()]
        raise ValueError(f"{path}: corrupt or unreadable faiss index ({lines[-1] if lines else e})") from None


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
    faiss.write_index(to_cpu(index), str(folder / INDEX_NAME))
    write_json(folder / CONFIG_NAME, to_dict(config))


def _check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / CONFIG_NAME).exists())):
        raise ValueError(f"{output}: exists and is not an anyalign index folder; refusing to overwrite it")


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
    tune_queries: int = 500,
    batch_size: int = 65536,
    trained: str | os.PathLike | None = None,
    rank: int = 0,
    world_size: int = 1,
    embedders: dict[str, dict[str, Any]] | None = None,
    use_gpu: bool | None = None,
    seed: int = 0,
    train_only: bool = False,
) -> IndexConfig:
    """Index embedding inputs into folder `output` (see the module docstring); returns the written config.

    Args:
        factory: "auto" (chosen from corpus size, dim and `memory`) or a faiss factory string.
        trained: an index folder written with `train_only=True`; parts built from it can be merged on disk.
        rank, world_size: index only this process's contiguous share of the ids (one part of a sharded build).
        embedders: modality -> embedder spec to record for queries (added to the ones the inputs name).
        use_gpu: None = when faiss reports GPUs.
        train_only: stop after training and write an empty, trained index.
    """
    t_start = time.perf_counter()
    output = Path(output)
    _check_output(output)
    source = open_sources(inputs)
    start, stop = rank_range(len(source), rank, world_size)
    n = stop - start
    if train_only:  # sample the whole corpus; the auto choice is sized for one of `world_size` parts
        start, stop = 0, len(source)
    if n == 0:
        raise ValueError(f"{source.name}: empty corpus (0 vectors{' for this rank' if len(source) else ''}); "
                         "nothing to index")
    dim = source.dim
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
        index = new_index(factory_str, dim)
    logger.info("index %s: %d x %d, %s (%s)", output, n, dim, factory_str, reason)

    nq = min(tune_queries, n) if not train_only else 0
    n_train = 0 if index.is_trained else max(training_size(factory_str, n), min(n, 1000))
    # tuning queries are held out of the training sample when the corpus is large enough (otherwise the
    # coarse centroids are fitted to them and the tuned recall is optimistic)
    sample_ids, sample = source.sample(min(n_train + nq, stop - start), seed, start=start, stop=stop)
    sample = _normalized(sample)
    order = np.random.default_rng(seed + 1).permutation(len(sample_ids))
    q_pick, t_pick = order[:nq], (order[nq:] if len(order) - nq >= n_train else order)
    q_ids, queries = sample_ids[q_pick], sample[q_pick]

    work = (to_gpu(index) if gpu else None) or index
    if not work.is_trained:
        t0 = time.perf_counter()
        work.train(sample[np.sort(t_pick)])
        logger.info("trained on %d vectors in %.1fs", len(t_pick), time.perf_counter() - t0)
    del sample
    fp = base_cfg.trained_fingerprint if base_cfg else fingerprint(work)

    config = IndexConfig(dim=dim, factory=factory_str, kind="trained" if train_only else "single",
                         trained_fingerprint=fp, modality=source.modality, choice=reason,
                         embedders={**source.embedders, **(embedders or {})}, sources=[source.name])
    with atomic_path(output, is_dir=True) as tmp:
        if not train_only:
            exact = ExactNeighbours(queries, q_ids, k)
            with MetadataStore(tmp / METADATA_NAME) as meta:
                for batch in tqdm(source.batches(batch_size, start=start, stop=stop), desc="adding",
                                  total=-(-n // batch_size), unit="batch", disable=n <= batch_size):
                    vecs = _normalized(batch.vectors)
                    work.add_with_ids(vecs, batch.ids)
                    exact.add(batch.ids, vecs)
                    if source.modality:
                        for row in batch.metadata:
                            row.setdefault("modality", source.modality)
                    meta.add(batch.ids, batch.metadata)
            index = to_cpu(work)
            result = tune(index, queries, q_ids, exact.result(), k=k, target=target_recall)
            config.search_params = result.params
            config.tuning = {"target_recall": target_recall, "k": k, "recall": round(result.recall, 4),
                             "queries": int(nq), "reached": result.reached, "trace": result.trace}
            config.next_id = int(stop)
            config.tombstones = not supports_remove(index)
        else:
            index = to_cpu(work)
        config.build_seconds = round(time.perf_counter() - t_start, 2)
        write_index_dir(tmp, index, config)
    return config


# --- updates -----------------------------------------------------------------------------------------------
def _update(index_dir: str | os.PathLike, fn: Any) -> IndexConfig:
    """Copy the folder, apply `fn(index, config, meta)` to the copy, then swap it in atomically."""
    index_dir = Path(index_dir)
    config = read_config(index_dir)
    if config.kind != "single":
        raise ValueError(f"{index_dir}: only single indexes can be updated in place (this one is {config.kind!r}); "
                         "update a part and merge again")
    if config.ondisk:
        raise ValueError(f"{index_dir}: an on-disk merged index is read-only; rebuild or merge new parts")
    with atomic_path(index_dir, is_dir=True) as tmp:
        shutil.copytree(index_dir, tmp, dirs_exist_ok=True)
        index, config = load_index(tmp)
        with MetadataStore(tmp / METADATA_NAME) as meta:
            fn(index, config, meta)
        write_index_dir(tmp, index, config)
    return config


def add_to_index(index_dir: str | os.PathLike, inputs: Any, *, batch_size: int = 65536) -> IndexConfig:
    """Append embedding inputs to an index (new ids continue after the largest one given so far)."""
    source = open_sources(inputs)
    if len(source) == 0:
        raise ValueError(f"{source.name}: empty corpus (0 vectors); nothing to add")

    def add(index: faiss.Index, config: IndexConfig, meta: MetadataStore) -> None:
        if source.dim != config.dim:
            raise ValueError(f"dimension mismatch: {index_dir} has dim {config.dim}, {source.name} has dim "
                             f"{source.dim}")
        first = config.next_id
        for batch in source.batches(batch_size):
            ids = batch.ids + first
            index.add_with_ids(_normalized(batch.vectors), ids)
            for row in batch.metadata:
                if source.modality:
                    row.setdefault("modality", source.modality)
            meta.add(ids, batch.metadata)
        config.next_id = first + len(source)
        config.sources.append(source.name)
        for m, spec in source.embedders.items():
            config.embedders.setdefault(m, spec)

    return _update(index_dir, add)


def delete_from_index(index_dir: str | os.PathLike, ids: Sequence[int] = (), *,
                      sources: Sequence[str] = ()) -> tuple[IndexConfig, int]:
    """Delete vectors by id and/or by metadata `source`; returns (config, number deleted)."""
    removed = 0

    def delete(index: faiss.Index, config: IndexConfig, meta: MetadataStore) -> None:
        nonlocal removed
        todo = sorted({int(i) for i in ids} | set(meta.ids_for_source(list(sources))))
        live = [r["id"] for r in meta.get(todo) if r is not None and not r.get("deleted")]
        if config.tombstones:
            removed = meta.delete(live, tombstone=True)
        else:
            removed = int(index.remove_ids(np.asarray(live, dtype=np.int64))) if live else 0
            meta.delete(live)

    config = _update(index_dir, delete)
    return config, removed


__all__ = ["CONFIG_NAME", "INDEX_NAME", "IndexConfig", "add_to_index", "build_index", "delete_from_index",
           "gpu_count", "load_index", "new_index", "read_config", "read_faiss", "supports_remove", "to_gpu",
           "write_index_dir"]
