"""`Retriever`: search an index folder with a query of any modality.

A query is a text string, a media file (its modality is picked by the embedders' `accepts_file`), or a raw
vector. Text and files go through their modality's embedder (adapter or bare encoder) into the shared space;
embedders come from the `embedders=` argument or from the specs the index recorded at build time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .embedder import Embedder, as_embedder
from .shards import open_parts, search_parts


@dataclass
class SearchResult:
    """One hit: vector id, cosine similarity, and its metadata row (source, caption, modality, user fields)."""

    id: int
    score: float
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.metadata, "id": self.id, "score": self.score}


class Retriever:
    """Search one index folder (single, on-disk merged, or a set of parts)."""

    def __init__(self, index_dir: str | os.PathLike, embedders: dict[str, Any] | None = None, *,
                 device: str | None = None, use_gpu: bool | None = None) -> None:
        """`embedders`: modality -> adapter / encoder / adapter folder / spec, on top of the recorded ones;
        `device`: torch device for query embedders; `use_gpu`: search on GPUs (default: when faiss has them)."""
        self.index_dir = Path(index_dir)
        self.config, self.parts = open_parts(self.index_dir, use_gpu=use_gpu)
        self.device = device
        self._embedders: dict[str, Embedder] = {}
        self._specs: dict[str, dict[str, Any]] = {m: s for m, s in self.config.embedders.items() if s}
        self._lock = threading.Lock()
        for modality, e in (embedders or {}).items():
            self.set_embedder(modality, e)

    # --- embedders ------------------------------------------------------------------------------------------
    def set_embedder(self, modality: str, embedder: Any) -> None:
        """Use `embedder` (adapter, encoder, adapter folder, spec or `Embedder`) for queries of `modality`."""
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
        with self._lock:
            if modality not in self._embedders:
                if modality not in self._specs:
                    raise ValueError(f"no {modality} embedder for {self.index_dir} (it knows: "
                                     f"{', '.join(self.modalities) or 'none'}); pass embedders={{'{modality}': ...}} "
                                     f"or build the index with --embedder {modality}=ADAPTER_DIR")
                self.set_embedder(modality, Embedder.from_spec(self._specs[modality], device=self.device))
            return self._embedders[modality]

    def modality_for_file(self, path: str | os.PathLike) -> str:
        """The modality whose embedder reads this file type."""
        for m in self.modalities:
            if m == "text":
                continue
            try:
                if self.embedder(m).accepts_file(path):
                    return m
            except (ValueError, FileNotFoundError, OSError):
                continue
        raise ValueError(f"{path}: no embedder of this index reads {Path(path).suffix or 'this'} files "
                         f"(modalities: {', '.join(self.modalities) or 'none'})")

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
        try:
            import torch

            if isinstance(query, torch.Tensor):
                query = query.detach().float().cpu().numpy()
        except ImportError:  # pragma: no cover
            pass
        x = np.asarray(query, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"dimension mismatch: query vector has shape {tuple(np.shape(query))}, the index "
                             f"{self.index_dir} expects dim {self.dim}")
        if not np.isfinite(x).all():
            raise ValueError("query vector contains NaN or inf")
        x = np.array(x, copy=True, order="C")
        faiss.normalize_L2(x)
        return x

    # --- search ------------------------------------------------------------------------------------------
    def search(self, query: Any, k: int = 10, **params: int) -> list[SearchResult]:
        """Top-`k` results for one query (text, file path, or `[E]` vector); `params` override nprobe/efSearch."""
        return self.search_vectors(self.embed_query(query)[:1], k, **params)[0]

    def search_text(self, text: str, k: int = 10, **params: int) -> list[SearchResult]:
        """Top-`k` for a text query (never interpreted as a path)."""
        return self.search_vectors(self.embed_text(text), k, **params)[0]

    def search_file(self, path: str | os.PathLike, k: int = 10, **params: int) -> list[SearchResult]:
        """Top-`k` for a media file query."""
        return self.search_vectors(self.embed_file(path), k, **params)[0]

    def search_vectors(self, vectors: Any, k: int = 10, **params: int) -> list[list[SearchResult]]:
        """Top-`k` results for each row of `[Q, E]` query vectors."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        x = self._vectors(vectors)
        scores, ids = search_parts(self.parts, x, k, params or None)
        uniq = np.unique(ids[ids >= 0]).tolist()  # faiss pads missing hits with -1
        rows = dict(zip(uniq, self.metadata(uniq)))
        return [[SearchResult(int(i), float(s), rows.get(int(i)) or {}) for s, i in zip(srow, irow) if i >= 0]
                for srow, irow in zip(scores, ids)]

    def metadata(self, ids: Sequence[int]) -> list[dict[str, Any] | None]:
        """Metadata rows for ids, from whichever part holds them."""
        out: list[dict[str, Any] | None] = [None] * len(ids)
        for part in self.parts:
            missing = [j for j, r in enumerate(out) if r is None]
            if not missing:
                break
            for j, row in zip(missing, part.meta.get([ids[j] for j in missing])):
                out[j] = row
        return out

    def __len__(self) -> int:
        return sum(p.meta.count() for p in self.parts)

    def info(self) -> dict[str, Any]:
        return {"index": str(self.index_dir), "dim": self.dim, "kind": self.config.kind,
                "factory": self.config.factory, "size": len(self), "parts": len(self.parts),
                "modality": self.config.modality, "query_modalities": self.modalities,
                "search_params": [p.config.search_params for p in self.parts]}


def _looks_like_file(text: str) -> bool:
    if "\n" in text or len(text) > 4096:
        return False
    suffix = Path(text).suffix
    return os.path.isfile(text) or (bool(suffix) and len(suffix) <= 6 and " " not in text and "/" in text)


__all__ = ["Retriever", "SearchResult"]
