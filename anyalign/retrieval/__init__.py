"""Retrieval over the shared embedding space: embedding shards, FAISS indexes, any-modality search, HTTP service.

    from anyalign.retrieval import build_index, Retriever
    build_index("embeddings/", "my-index")               # auto-chosen index type, tuned to recall@10 >= 0.95
    Retriever("my-index").search("a dog on a beach", k=5)  # text, a media file path, or a vector

Names are imported on first use (PEP 562): searching an index with vectors (`anyalign search --vector`) needs
numpy, faiss and SQLite, not torch, which only embedding queries and `embed_to_folder` load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from ..embedder import Embedder, as_embedder
    from .autoindex import IndexChoice, choose_index, parse_memory
    from .embed import embed_to_folder
    from .evaluate import evaluate_retrieval, exact_metrics, ranked_metrics
    from .index import IndexConfig, gpu_count, load_index, read_config
    from .index_build import build_index
    from .index_update import add_to_index, delete_from_index
    from .metadata import MetadataStore
    from .results import SearchResult, SearchResults
    from .retriever import Retriever
    from .shards import build_parts, combine_parts
    from .sources import ArraySource, EmbeddingSource, open_source, open_sources

_LAZY = {
    "Embedder": "..embedder", "as_embedder": "..embedder",
    "IndexChoice": ".autoindex", "choose_index": ".autoindex", "parse_memory": ".autoindex",
    "embed_to_folder": ".embed",
    "evaluate_retrieval": ".evaluate", "exact_metrics": ".evaluate", "ranked_metrics": ".evaluate",
    "IndexConfig": ".index", "build_index": ".index_build",
    "add_to_index": ".index_update", "delete_from_index": ".index_update",
    "gpu_count": ".index", "load_index": ".index", "read_config": ".index",
    "MetadataStore": ".metadata",
    "Retriever": ".retriever", "SearchResult": ".results", "SearchResults": ".results",
    "build_parts": ".shards", "combine_parts": ".shards",
    "ArraySource": ".sources", "EmbeddingSource": ".sources", "open_source": ".sources", "open_sources": ".sources",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "ArraySource",
    "Embedder",
    "EmbeddingSource",
    "IndexChoice",
    "IndexConfig",
    "MetadataStore",
    "Retriever",
    "SearchResult",
    "SearchResults",
    "add_to_index",
    "as_embedder",
    "build_index",
    "build_parts",
    "choose_index",
    "combine_parts",
    "delete_from_index",
    "embed_to_folder",
    "evaluate_retrieval",
    "exact_metrics",
    "gpu_count",
    "load_index",
    "open_source",
    "open_sources",
    "parse_memory",
    "ranked_metrics",
    "read_config",
]
