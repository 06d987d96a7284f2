"""Retrieval over the shared embedding space: embedding shards, FAISS indexes, any-modality search, HTTP service.

    from anyalign.retrieval import build_index, Retriever
    build_index("embeddings/", "my-index")               # auto-chosen index type, tuned to recall@10 >= 0.95
    Retriever("my-index").search("a dog on a beach", k=5)  # text, a media file path, or a vector
"""

from ..embedder import Embedder, as_embedder
from .autoindex import IndexChoice, choose_index, parse_memory
from .embed import embed_to_folder
from .evaluate import evaluate_retrieval, exact_metrics, ranked_metrics
from .index import IndexConfig, add_to_index, build_index, delete_from_index, gpu_count, load_index, read_config
from .metadata import MetadataStore
from .retriever import Retriever, SearchResult
from .shards import build_parts, combine_parts
from .sources import ArraySource, EmbeddingSource, open_source, open_sources

__all__ = [
    "ArraySource",
    "Embedder",
    "EmbeddingSource",
    "IndexChoice",
    "IndexConfig",
    "MetadataStore",
    "Retriever",
    "SearchResult",
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
