"""Updates of a single index folder in place: append embeddings, delete by id or source.

Every update runs under the index's writer lock on a copy of the folder that is swapped in atomically (see the
safety rules in `index.py`): a failed or killed update leaves the index as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..io import atomic_path
from .index import IndexConfig, _add_rows, _normalized, _Skipped, load_index, read_config, write_index_dir
from .index_safety import writer_lock
from .metadata import METADATA_NAME, MetadataStore
from .rawvectors import DTYPES, RawWriter, check_file
from .sources import open_sources


def _update(index_dir: str | os.PathLike, fn: Any, lock_timeout: float | None = None) -> IndexConfig:
    """Under the writer lock: copy the folder, apply `fn(index, config, meta, copy)` to the copy, swap it in
    atomically."""
    index_dir = Path(index_dir)
    with writer_lock(index_dir, lock_timeout):
        config = read_config(index_dir)  # read under the lock: another writer may just have changed it
        if config.kind != "single":
            raise ValueError(f"{index_dir}: only single indexes can be updated in place (this one is "
                             f"{config.kind!r}); update a part and merge again")
        if config.ondisk:
            raise ValueError(f"{index_dir}: an on-disk merged index is read-only; rebuild or merge new parts")
        with atomic_path(index_dir, is_dir=True) as tmp:
            shutil.copytree(index_dir, tmp, dirs_exist_ok=True)
            index, config = load_index(tmp)
            with MetadataStore(tmp / METADATA_NAME) as meta:
                fn(index, config, meta, tmp)
            write_index_dir(tmp, index, config)
    return config


def add_to_index(index_dir: str | os.PathLike, inputs: Any, *, batch_size: int = 65536,
                 lock_timeout: float | None = None) -> IndexConfig:
    """Append embedding inputs to an index (new ids continue after the largest one given so far).

    Rows with NaN/inf values or zero norm are skipped and counted in the returned config's `skipped`.
    """
    source = open_sources(inputs)
    if len(source) == 0:
        raise ValueError(f"{source.name}: empty corpus (0 vectors); nothing to add")

    def add(index: faiss.Index, config: IndexConfig, meta: MetadataStore, folder: Path) -> None:
        if source.dim != config.dim:
            raise ValueError(f"dimension mismatch: {index_dir} has dim {config.dim}, {source.name} has dim "
                             f"{source.dim}")
        first = config.next_id
        skipped = _Skipped(config.skipped)
        # the raw vectors for re-ranking grow with the index (the copy's file is appended to; the original is
        # checked first so that an error names it)
        writer = None
        if config.raw:
            check_file(Path(index_dir) / config.raw["file"], config.raw["rows"], config.raw["dim"],
                       DTYPES[config.raw["dtype"]][1])
            writer = RawWriter(folder, config.raw["dtype"], previous=config.raw)
        for batch in source.batches(batch_size):
            ids = batch.ids + first
            keep = skipped.keep(ids, batch.vectors)
            vectors = _normalized(batch.vectors)
            if writer is not None:
                writer.add(ids, vectors, keep)
            _add_rows(index, meta, ids, vectors, batch.metadata, keep, source.modality, None, normalized=True)
        if writer is not None:
            config.raw = writer.close()
        if skipped.new == len(source):
            raise ValueError(f"{source.name}: no usable vectors ({len(source)} rows with NaN/inf values or zero "
                             "norm); nothing added")
        skipped.log(source.name)
        config.skipped = skipped.record()
        config.next_id = first + len(source)
        config.sources.append(source.name)
        for m, spec in source.embedders.items():
            config.embedders.setdefault(m, spec)

    return _update(index_dir, add, lock_timeout)


def delete_from_index(index_dir: str | os.PathLike, ids: Sequence[int] = (), *, sources: Sequence[str] = (),
                      lock_timeout: float | None = None) -> tuple[IndexConfig, int]:
    """Delete vectors by id and/or by metadata `source`; returns (config, number deleted)."""
    removed = 0
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not -(2**63) <= i < 2**63]
    if bad:
        raise ValueError(f"vector id {bad[0]} out of range (ids are 64-bit integers)")

    def delete(index: faiss.Index, config: IndexConfig, meta: MetadataStore, _folder: Path) -> None:
        # raw vectors for re-ranking keep the deleted rows: faiss (or the tombstone filter) no longer returns them
        nonlocal removed
        todo = sorted(set(ids) | set(meta.ids_for_source(list(sources))))
        live = [r["id"] for r in meta.get(todo) if r is not None and not r.get("deleted")]
        if config.tombstones:
            removed = meta.delete(live, tombstone=True)
        else:
            removed = int(index.remove_ids(np.asarray(live, dtype=np.int64))) if live else 0
            meta.delete(live)

    config = _update(index_dir, delete, lock_timeout)
    return config, removed


__all__ = ["add_to_index", "delete_from_index"]
