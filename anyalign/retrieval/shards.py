"""Indexes larger than one machine: parts built independently, searched together or merged on disk.

Train once (`build_index(..., train_only=True)`), build each part from it (`trained=..., rank=r, world_size=w`; ids
stay global), then `combine_parts(parts, out)` (a *set*: every part searched, results merged) or with `ondisk=True`
(IVF parts: one index whose inverted lists faiss's `merge_ondisk` writes to one memory-mapped `index.ivfdata`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from ..config import to_dict
from ..io import atomic_path, write_json
from .index import IndexConfig, gpu_count, load_index, read_config, read_faiss, to_gpu
from .index_build import build_index
from .index_safety import CONFIG_NAME, INDEX_NAME, IVFDATA_NAME, check_output, writer_lock
from .metadata import METADATA_NAME, MetadataStore
from .rawvectors import RawVectors, RawWriter, refine_factor, refined_search
from .tuning import ivf_of, knob, set_params

logger = logging.getLogger(__name__)


@dataclass
class Part:
    """One searchable index with its metadata and the search parameters it was tuned with."""

    index: faiss.Index
    config: IndexConfig
    folder: Path
    meta: MetadataStore
    deleted: np.ndarray  # ids flagged deleted (only for indexes that cannot remove vectors)
    raw: RawVectors | None = None  # raw vectors on disk for exact re-ranking (compressed indexes)
    refine: int = 1  # the tuned re-ranking factor (parsed once from search_params, not at every search)

    def selector(self) -> faiss.IDSelector | None:
        """Filter that hides deleted ids (built once; the batch selector is kept alive with it)."""
        if not len(self.deleted):
            return None
        if getattr(self, "_selector", None) is None:
            batch = faiss.IDSelectorBatch(self.deleted)
            self._selector = faiss.IDSelectorNot(batch)
            self._selector.referenced_objects = [batch]
        return self._selector

    def search_params(self, overrides: dict[str, int] | None = None) -> faiss.SearchParameters | None:
        """Per-call parameters: the deleted-id filter and any knob override (nprobe / efSearch)."""
        sel = self.selector()
        if sel is None and not overrides:
            return None  # the tuned values set on the index apply
        name, _ = knob(self.index)
        params = {**self.config.search_params, **{k: v for k, v in (overrides or {}).items() if k == name}}
        if name == "nprobe":
            p = faiss.SearchParametersIVF(nprobe=int(params.get("nprobe", 1)))
        elif name == "efSearch":
            p = faiss.SearchParametersHNSW(efSearch=int(params.get("efSearch", 16)))
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        p.referenced_objects = [sel]
        return p


def open_part(folder: str | os.PathLike, *, use_gpu: bool | None = None) -> Part:
    """Load one index folder for searching; on GPUs (when faiss has them) unless `use_gpu=False`."""
    folder = Path(folder)
    index, config = load_index(folder)
    if (use_gpu is None or use_gpu) and gpu_count() > 0 and not config.ondisk:
        gpu_index = to_gpu(index)
        if gpu_index is not None:
            set_params(gpu_index, config.search_params)
            index = gpu_index
    raw = RawVectors(folder, config.raw) if config.raw else None  # missing/truncated file: a one-line error
    meta = MetadataStore(folder / METADATA_NAME, readonly=True)
    deleted = meta.deleted_ids() if config.tombstones else np.zeros(0, dtype=np.int64)
    return Part(index, config, folder, meta, deleted, raw, refine_factor(config.search_params))


def open_parts(folder: str | os.PathLike, *, use_gpu: bool | None = None) -> tuple[IndexConfig, list[Part]]:
    """The parts of an index folder: itself for a single index, its listed parts for a set."""
    folder = Path(folder)
    config = read_config(folder)
    if config.kind == "trained":
        raise ValueError(f"{folder}: a trained but empty index; build parts from it with --trained")
    if config.kind != "set":
        return config, [open_part(folder, use_gpu=use_gpu)]
    parts = [open_part((folder / p).resolve(), use_gpu=use_gpu) for p in config.parts]
    for p in parts:
        if p.config.dim != config.dim:
            raise ValueError(f"{p.folder}: dim {p.config.dim} differs from the set's {config.dim}")
    return config, parts


def search_parts(parts: Sequence[Part], queries: np.ndarray, k: int,
                 overrides: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k over all parts (each with its own parameters), merged by score: (scores `[Q, k]`, ids `[Q, k]`).

    A part with raw vectors on disk re-ranks `k * refine` faiss candidates by exact inner product (`refine` from
    `overrides`, else the part's tuned value; 0 or 1: faiss's own ranking)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    factor = refine_factor(overrides) if overrides and "refine" in overrides else None
    knobs = {n: v for n, v in (overrides or {}).items() if n != "refine"} or None

    def one(part: Part) -> tuple[np.ndarray, np.ndarray]:
        return refined_search(part.index, part.raw, queries, k, part.refine if factor is None else factor,
                              part.search_params(knobs))

    if len(parts) == 1:
        return one(parts[0])
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    with ThreadPoolExecutor(max_workers=min(len(parts), os.cpu_count() or 1)) as pool:
        for scores, ids in pool.map(one, parts):
            heap.add_result(scores, ids)
    heap.finalize()
    return heap.D, heap.I


def _id_range(part: Path) -> tuple[int, int]:
    with MetadataStore(part / METADATA_NAME, readonly=True) as m:
        lo, hi = m.db.execute("SELECT MIN(id), MAX(id) FROM items").fetchone()
    return (-1, -1) if lo is None else (int(lo), int(hi))


def combine_parts(parts: Sequence[str | os.PathLike], output: str | os.PathLike, *, ondisk: bool = False,
                  overwrite: bool = False, lock_timeout: float | None = None) -> IndexConfig:
    """Make one searchable index from independently built parts (see the module docstring).

    `output` must not be one of the parts or hold one; an existing path that is not an anyalign index is
    refused unless `overwrite`. The output's writer lock is held while it is written.
    """
    if not parts:
        raise ValueError("no index parts given")
    output = Path(output)
    with writer_lock(output, lock_timeout):
        folders = [Path(p).resolve() for p in parts]
        out = output.resolve()
        for f in folders:
            if f == out or out in f.parents:
                raise ValueError(f"{output}: is (or holds) the part {f}; merging into it would delete the part; "
                                 "write the merged index to another folder")
        check_output(output, overwrite=overwrite)
        return _combine(folders, output, ondisk)


def _combine(folders: list[Path], output: Path, ondisk: bool) -> IndexConfig:
    configs = [read_config(f) for f in folders]
    for f, c in zip(folders, configs):
        if c.kind != "single":
            raise ValueError(f"{f}: expected a built index part, got kind {c.kind!r}")
        if c.dim != configs[0].dim:
            raise ValueError(f"dimension mismatch: {f} has dim {c.dim}, {folders[0]} has dim {configs[0].dim}")
    ranges = sorted((_id_range(f), f) for f in folders)
    for (a, fa), (b, fb) in zip(ranges, ranges[1:]):
        if a[1] >= b[0] >= 0:
            raise ValueError(f"{fa} and {fb} have overlapping vector ids ({a} and {b}); build parts with "
                             "--rank/--world-size so that ids stay global")
    embedders: dict[str, dict[str, Any]] = {}
    for c in configs:
        embedders.update(c.embedders)
    modalities = {c.modality for c in configs}
    config = IndexConfig(dim=configs[0].dim, factory=configs[0].factory, ntotal=sum(c.ntotal for c in configs),
                         next_id=max(c.next_id for c in configs), embedders=embedders,
                         modality=modalities.pop() if len(modalities) == 1 else None,
                         sources=[s for c in configs for s in c.sources])
    skipped = [c.skipped for c in configs if c.skipped]
    if skipped:
        config.skipped = {"nonfinite": sum(s.get("nonfinite", 0) for s in skipped),
                          "zero": sum(s.get("zero", 0) for s in skipped),
                          "ids": [i for s in skipped for i in s.get("ids", [])][:20]}
    if not ondisk:
        config.kind = "set"
        config.factory = " | ".join(sorted({c.factory for c in configs}))
        with atomic_path(output, is_dir=True) as tmp:
            config.parts = [os.path.relpath(f, output.resolve()) for f in folders]
            write_json(tmp / CONFIG_NAME, to_dict(config))
        return config
    return _merge_ondisk(folders, configs, output, config)


def _merge_ondisk(folders: list[Path], configs: list[IndexConfig], output: Path, config: IndexConfig) -> IndexConfig:
    fps = {c.trained_fingerprint for c in configs}
    if len(fps) != 1 or None in fps:
        raise ValueError("on-disk merge needs parts built from one trained index (`anyalign index train`, then "
                         "`index build --trained`); these parts were trained separately")
    if any(c.tombstones for c in configs):
        raise ValueError("on-disk merge needs IVF parts (these cannot remove vectors)")
    base = read_faiss(folders[0] / INDEX_NAME, mmap=True)
    ivf = ivf_of(base)
    if ivf is None:
        raise ValueError(f"{folders[0]}: on-disk merge works for IVF indexes only (factory {configs[0].factory})")
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(empty, True)  # the trained index, emptied (its lists were only memory-mapped)
    empty.this.disown()  # now owned by the index
    ivf.ntotal = base.ntotal = 0
    with atomic_path(output, is_dir=True) as tmp:
        merge_ondisk(base, [str(f / INDEX_NAME) for f in folders], str(tmp / IVFDATA_NAME))
        faiss.write_index(base, str(tmp / INDEX_NAME))
        with MetadataStore(tmp / METADATA_NAME) as meta:
            for f in folders:
                meta.copy_from(f / METADATA_NAME)
        probes = [c.search_params.get("nprobe", 1) for c in configs]
        config.search_params = {"nprobe": int(max(probes))}
        extra = {k: v for c in configs for k, v in c.search_params.items() if k not in ("nprobe", "refine")}
        config.search_params.update(extra)
        if all(c.raw for c in configs):  # the parts' raw vectors, one after the other (segments shifted)
            writer = RawWriter(tmp, configs[0].raw["dtype"], dim=config.dim)
            for f, c in zip(folders, configs):
                writer.append_file(f / c.raw["file"], c.raw)
            config.raw = writer.close()
            refines = [c.search_params.get("refine", 1) for c in configs]
            if max(refines) > 1:
                config.search_params["refine"] = int(max(refines))
        elif any(c.raw for c in configs):
            logger.warning("some parts keep no raw vectors for re-ranking; the merged index re-ranks none")
        config.ondisk = True
        config.ntotal = int(base.ntotal)
        config.trained_fingerprint = configs[0].trained_fingerprint
        config.tuning = {"from_parts": [c.tuning.get("recall") for c in configs],
                         "k": configs[0].tuning.get("k"), "target_recall": configs[0].tuning.get("target_recall")}
        write_json(tmp / CONFIG_NAME, to_dict(config))
    return config


def build_parts(inputs: Any, output: str | os.PathLike, num_parts: int, *, ondisk: bool = False,
                **build_kwargs: Any) -> IndexConfig:
    """Train once, build `num_parts` parts (as separate ranks would) under `output/parts/`, then combine."""
    output = Path(output)
    work = output.with_name(output.name + ".parts")
    trained = work / "trained"
    build_index(inputs, trained, train_only=True, **build_kwargs)
    build_kwargs.pop("factory", None)
    folders = []
    for r in range(num_parts):
        folders.append(work / f"part-{r:05d}")
        build_index(inputs, folders[-1], trained=trained, rank=r, world_size=num_parts, **build_kwargs)
    return combine_parts(folders, output, ondisk=ondisk)


__all__ = ["Part", "build_parts", "combine_parts", "open_part", "open_parts", "search_parts"]
