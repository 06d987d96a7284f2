"""`Retriever`: search an index folder with a query of any modality.

A query is a text string, a media file (its modality is picked by the embedders' `accepts_file`), or a raw
vector. Text and files go through their modality's embedder (adapter or bare encoder) into the shared space;
embedders come from the `embedders=` argument or from the specs the index recorded at build time.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from .autoindex import parse_memory
from .index import invalid_rows
from .index_safety import CONFIG_NAME, check_k
from .metadata import DEFAULT_MEMORY_BUDGET, row_dict
from .results import SMALL_GATHER, SearchResult, SearchResults
from .shards import open_parts, search_parts

if TYPE_CHECKING:  # the embedder module imports torch: only text and file queries need it
    from ..embedder import Embedder

class Retriever:
    """Search one index folder (single, on-disk merged, or a set of parts)."""

    def __init__(self, index_dir: str | os.PathLike, embedders: dict[str, Any] | None = None, *,
                 device: str | None = None, use_gpu: bool | None = None,
                 metadata_memory: int | str | None = DEFAULT_MEMORY_BUDGET) -> None:
        """`embedders`: modality -> adapter / encoder / adapter folder / spec, on top of the recorded ones;
        `device`: torch device for query embedders; `use_gpu`: search on GPUs (default: when faiss has them);
        `metadata_memory`: RAM budget (bytes or '1G') per part for its metadata rows in memory (0: SQLite only)."""
        from ..hub import resolve_artifact

        self.index_dir = resolve_artifact(index_dir, marker=CONFIG_NAME, what="index")  # a folder or a Hub id
        self.config, self.parts = open_parts(self.index_dir, use_gpu=use_gpu)
        self._ntotal = sum(int(p.index.ntotal) for p in self.parts)  # the parts are opened read-only
        budget = parse_memory(metadata_memory) or 0
        for part in self.parts:
            part.meta.memory_budget = budget
        self.device = device
        self._embedders: dict[str, Embedder] = {}
        self._specs: dict[str, dict[str, Any]] = {m: s for m, s in self.config.embedders.items() if s}
        self._lock = threading.Lock()
        for modality, e in (embedders or {}).items():
            self.set_embedder(modality, e)

    # --- embedders ------------------------------------------------------------------------------------------
    def set_embedder(self, modality: str, embedder: Any) -> None:
        """Use `embedder` (adapter, encoder, adapter folder, spec or `Embedder`) for queries of `modality`."""
        from ..embedder import as_embedder

        emb = as_embedder(embedder, device=self.device)
        if emb.dim != self.dim:
            raise ValueError(f"dimension mismatch: the {modality} embedder outputs dim {emb.dim}, the index "
                             f"{self.index_dir} has dim {self.dim}")
        self._embedders[modality] = emb

    @property
    def modalities(self) -> list[str]:
        """Modalities that queries can come in (besides raw vectors)."""
        return sorted(set(self._embedders) | set(self._specs))

    def embedder(self, modality: str) -> Embedder:
        """The query embedder of `modality`: given, recorded at build time, or the partner a recorded adapter was
        aligned to (its text anchor) or a recorded tower names (CLIP/CLAP's other tower)."""
        from ..embedder import Embedder, find_record

        with self._lock:
            if modality not in self._embedders:
                record = find_record(self._specs, modality)
                if record is None:
                    raise ValueError(f"no {modality} embedder for {self.index_dir} (it records: "
                                     f"{', '.join(sorted(self._specs)) or 'none'}, and none of them names a "
                                     f"{modality} side); pass embedders={{'{modality}': ...}} or, on the "
                                     f"command line, --adapter DIR / --encoder NAME (--text-encoder for text)")
                self.set_embedder(modality, Embedder.from_record(record, device=self.device))
            return self._embedders[modality]

    def modality_for_file(self, path: str | os.PathLike) -> str:
        """The modality whose embedder reads this file type (recorded embedders first, then their partners)."""
        from ..embedder import find_record
        from ..encoders.registry import encoder_class

        suffix = Path(path).suffix.lower()
        for m in self._file_modalities():
            if m == "text":
                continue
            if m in self._embedders:
                if self._embedders[m].accepts_file(path):
                    return m
                continue
            record = find_record(self._specs, m)
            if record is None:
                continue
            if record.get("encoder"):  # decide from the family's declared file types, without loading weights
                cls = encoder_class(record["encoder"]["name"] if isinstance(record["encoder"], dict)
                                    else record["encoder"], declared_inputs=True)
                if cls is not None and suffix not in cls.extensions:
                    continue
            try:
                if self.embedder(m).accepts_file(path):
                    return m
            except (ValueError, FileNotFoundError, OSError):
                continue
        raise ValueError(f"{path}: no embedder of this index reads {Path(path).suffix or 'this'} files "
                         f"(modalities: {', '.join(self.modalities) or 'none'})")

    def _file_modalities(self) -> Iterator[str]:
        """The recorded modalities, then (only if none of them reads the file) every other registered one,
        which a recorded adapter or tower may name as a partner; listing those imports every encoder family."""
        from ..encoders.registry import ENCODER_INFO, list_encoders

        yield from self.modalities
        list_encoders()
        yield from sorted({i.modality for i in ENCODER_INFO.values()} - set(self.modalities))

    # --- embedding queries -----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.config.dim

    def embed_text(self, text: str) -> np.ndarray:
        """Text -> `[1, E]` through the text embedder."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty text query")
        return self.embedder("text").embed([text])

    def embed_file(self, path: str | os.PathLike) -> np.ndarray:
        """A media file -> `[1, E]` through the embedder that reads its type."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: query file not found")
        return self.embedder(self.modality_for_file(path)).embed([str(path)])

    def embed_query(self, query: Any) -> np.ndarray:
        """A query (text, file path, or vector(s)) -> normalised `[Q, E]` float32.

        A `Path`, or a string naming an existing file, is a file query; other strings are text.
        """
        if isinstance(query, Path) or (isinstance(query, str) and _looks_like_file(query)):
            return self.embed_file(query)
        if isinstance(query, str):
            return self.embed_text(query)
        return self._vectors(query)

    def _vectors(self, query: Any) -> np.ndarray:
        """Query vector(s) -> a normalised `[Q, E]` float32 copy; one-line errors for bad shapes and values."""
        torch = sys.modules.get("torch")  # a tensor query means torch is loaded: never import it just to check
        if torch is not None and isinstance(query, torch.Tensor):
            query = query.detach().float().cpu().numpy()
        x = np.array(query, dtype=np.float32, order="C", copy=True)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"dimension mismatch: query vector has shape {tuple(np.shape(query))}, the index "
                             f"{self.index_dir} expects dim {self.dim}")
        if not _usable(x):
            nonfinite, zero = invalid_rows(x)
            if nonfinite.any():
                raise ValueError(f"query vector{'s' if len(x) > 1 else ''} contain NaN or inf "
                                 f"(row {int(np.flatnonzero(nonfinite)[0])})")
            if zero.any():
                raise ValueError(f"query vector is all zeros (row {int(np.flatnonzero(zero)[0])}): it has no "
                                 "direction to search by")
        faiss.normalize_L2(x)
        return x

    # --- search ------------------------------------------------------------------------------------------
    def search(self, query: Any, k: int = 10, *, modality: str | None = None, **params: int) -> list[SearchResult]:
        """Top-`k` results for one query (text, file path, or `[E]` vector), only items of `modality` when given;
        `params` override nprobe/efSearch."""
        return self._filtered(self.embed_query(query)[:1], k, modality, params)

    def search_text(self, text: str, k: int = 10, *, modality: str | None = None, **params: int
                    ) -> list[SearchResult]:
        """Top-`k` for a text query (never interpreted as a path)."""
        return self._filtered(self.embed_text(text), k, modality, params)

    def search_file(self, path: str | os.PathLike, k: int = 10, *, modality: str | None = None, **params: int
                    ) -> list[SearchResult]:
        """Top-`k` for a media file query."""
        return self._filtered(self.embed_file(path), k, modality, params)

    def _filtered(self, x: np.ndarray, k: int, modality: str | None, params: dict[str, int]) -> list[SearchResult]:
        """Top-`k` of one query among items whose metadata `modality` matches: fetch more until k are found."""
        if modality is None:
            return self.search_vectors(x, k, **params)[0]
        k = check_k(k)
        fetch = k
        while True:
            hits = self.search_vectors(x, min(fetch * 4, self.ntotal), **params)[0]
            kept = [h for h in hits if h.metadata.get("modality") == modality]
            if len(kept) >= k or len(hits) >= self.ntotal or fetch * 4 >= self.ntotal:
                return kept[:k]
            fetch *= 4

    @property
    def ntotal(self) -> int:
        """Vectors held by the index (deleted-but-flagged ones included): the most a search can return."""
        return self._ntotal

    def search_vectors(self, vectors: Any, k: int = 10, **params: int) -> SearchResults:
        """Top-`k` results for each row of `[Q, E]` query vectors (`k` beyond the index size returns them all), as
        a `SearchResults`: per-query lists of hits, or whole arrays and metadata columns."""
        k = check_k(k)
        x = self._vectors(vectors)
        k = max(min(k, self._ntotal), 1)  # faiss would allocate [Q, k] results: a huge k must not exhaust memory
        scores, ids = search_parts(self.parts, x, k, params or None)
        return SearchResults(ids, scores, self)

    def _aligned_rows(self, ids: np.ndarray) -> list[tuple | None]:
        """The stored metadata row (see `metadata.row_dict`) of each id `[M]`, in order, from whichever part holds
        it (None when none does): in-memory lookups for parts whose rows fit their budget, else SQL."""
        if len(self.parts) == 1:
            return self.parts[0].meta.aligned_rows(ids)
        out: list[tuple | None] = [None] * len(ids)
        todo = np.arange(len(ids))
        for part in self.parts:
            if not len(todo):
                break
            got = part.meta.aligned_rows(ids[todo])
            for j, r in zip(todo.tolist(), got):
                out[j] = r
            todo = todo[[r is None for r in got]]
        return out

    def _locate(self, ids: np.ndarray) -> tuple[Any, Any]:
        """(table, row positions `[M]`) when one in-memory table holds every part's rows (column reads gather from
        it), else (None, None): columns are then read from the rows."""
        if len(self.parts) == 1 and len(ids) > SMALL_GATHER and (table := self.parts[0].meta.memory_table()):
            return table, table.positions(ids)
        return None, None

    def metadata(self, ids: Sequence[int]) -> list[dict[str, Any] | None]:
        """Metadata rows for ids, from whichever part holds them (None for unknown ids)."""
        rows = self._aligned_rows(np.asarray([int(i) for i in ids], dtype=np.int64))
        return [None if r is None else row_dict(r) for r in rows]

    def load_metadata(self) -> bool:
        """Load every part's metadata rows into memory now (when they fit the budget) rather than at the first
        search; True when all parts are in memory. A server calls it once after opening the index."""
        return all([p.meta.load() for p in self.parts])

    def __len__(self) -> int:
        return sum(p.meta.count() for p in self.parts)

    def info(self) -> dict[str, Any]:
        return {"index": str(self.index_dir), "dim": self.dim, "kind": self.config.kind,
                "factory": self.config.factory, "size": len(self), "parts": len(self.parts),
                "modality": self.config.modality, "query_modalities": self.modalities,
                "search_params": [p.config.search_params for p in self.parts]}


def _usable(x: np.ndarray) -> bool:
    """Fast check that every row of `[Q, E]` float32 (C order) has a finite, non-zero squared norm; False sends the
    caller to the exact row checks, which also pass rows whose square merely under- or overflows."""
    if len(x) == 1:
        return 0.0 < faiss.fvec_norm_L2sqr(faiss.swig_ptr(x), x.shape[1]) < math.inf
    nn = np.empty(len(x), dtype=np.float32)  # [Q]
    faiss.fvec_norms_L2sqr(faiss.swig_ptr(nn), faiss.swig_ptr(x), x.shape[1], len(x))
    return bool(nn.min(initial=math.inf) > 0.0 and nn.max(initial=0.0) < math.inf)


def _looks_like_file(text: str) -> bool:
    if "\n" in text or len(text) > 4096:
        return False
    suffix = Path(text).suffix
    return os.path.isfile(text) or (bool(suffix) and len(suffix) <= 6 and " " not in text and "/" in text)


__all__ = ["Retriever", "SearchResult", "SearchResults"]
