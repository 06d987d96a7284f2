"""Retrieval over the shared embedding space: embedding shards, FAISS indexes, any-modality search, HTTP service.

    from anyalign.retrieval import build_index, Retriever
    build_index("embeddings/", "my-index")               # auto-chosen index type, tuned to recall@10 >= 0.95
    Retriever("my-index").search("a dog on a beach", k=5)  # text, a media file path, or a vector

Names are imported on first use (PEP 562): searching an index with vectors (`anyalign search --vector`) needs
numpy, faiss and SQLite, not torch, which only embedding queries and `embed_to_folder` load.
"""

from __future__ import annotations

from ..lazy import lazy_exports

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

__all__ = sorted(_LAZY)
