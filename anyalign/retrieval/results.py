"""Search hits: `SearchResult` (one hit, its metadata read on first use) and `SearchResults` (the hits of a batch of
queries, made per query on demand, with numpy columns)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from .metadata import field_values, row_dict

SMALL_GATHER = 64  # hits from which columns are gathered with numpy (fewer: read from the rows in plain Python)
_GC_PAUSE_FROM = 512  # hits of one query from which the garbage collector is paused while they are made


class SearchResult:
    """One hit: vector id, cosine similarity, and its metadata row (source, caption, modality, user fields).

    A search keeps the stored row tuple and builds the `metadata` dict (parsing user fields) only when it is read:
    batch searches return many hits that callers never look into."""

    __slots__ = ("id", "score", "_metadata", "_row")

    def __init__(self, id: int, score: float, metadata: dict[str, Any] | None = None,
                 row: tuple | None = None) -> None:
        self.id = id
        self.score = score
        self._metadata = metadata
        self._row = row

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = {} if self._row is None else row_dict(self._row)
        return self._metadata

    def to_dict(self) -> dict[str, Any]:
        return {**self.metadata, "id": self.id, "score": self.score}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchResult):
            return NotImplemented
        return (self.id, self.score, self.metadata) == (other.id, other.score, other.metadata)

    def __repr__(self) -> str:
        return f"SearchResult(id={self.id}, score={self.score:.4f}, metadata={self.metadata!r})"


class SearchResults(Sequence[list[SearchResult]]):
    """The hits of a batch of queries, kept as faiss's arrays until read: `results[q]` is query q's hits as a
    `list[SearchResult]` (made on first read, faiss's -1 padding dropped); `ids` / `scores` are the `[Q, k]`
    arrays (-1 where fewer than k were found); `column(name)` gives one metadata field of every hit as a `[Q, k]`
    object array, with no Python object per hit (the fast way to read a large batch's metadata)."""

    def __init__(self, ids: np.ndarray, scores: np.ndarray, retriever: Any) -> None:  # the `Retriever` searched
        self.ids = ids
        self.scores = scores
        self._retriever = retriever
        self._lists: list[list[SearchResult] | None] = [None] * len(ids)
        self._rows: list[tuple | None] | None = None  # every hit's stored row, in order, once one is read
        self._located: tuple[Any, Any] | None = None  # (in-memory table, row positions) or (None, None)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, q: int) -> list[SearchResult]:  # type: ignore[override]
        if isinstance(q, slice):
            return [self[i] for i in range(*q.indices(len(self)))]
        hits = self._lists[q]
        if hits is None:
            hits = self._lists[q] = self._make(q % len(self) if q < 0 else q)
        return hits

    def __iter__(self) -> Iterator[list[SearchResult]]:
        if len(self) * self.ids.shape[1] > _GC_PAUSE_FROM and any(h is None for h in self._lists):
            with _gc_paused():  # every query's hits at once: the collections their allocations trigger find nothing
                for q in range(len(self)):
                    self[q]
        return (self[q] for q in range(len(self)))

    def _make(self, q: int) -> list[SearchResult]:
        """Query q's hits (the rows of all queries are looked up together at the first read: one lookup)."""
        ids, k = self.ids, self.ids.shape[1]
        if self._rows is None:  # padding ids (-1) get None rows
            self._rows = self._retriever._aligned_rows(ids.ravel())
        row_ids = ids[q].tolist()
        rows = self._rows[q * k: (q + 1) * k]
        with _gc_paused() if k > _GC_PAUSE_FROM else contextlib.nullcontext():
            if min(row_ids) >= 0:
                return list(map(SearchResult, row_ids, self.scores[q].tolist(), repeat(None), rows))
            return [SearchResult(i, s, None, r) for i, s, r in zip(row_ids, self.scores[q].tolist(), rows) if i >= 0]

    def column(self, name: str) -> np.ndarray:
        """`[Q, k]` object array of one metadata field (`source`, `caption`, `modality`, a user field, or `id`) of
        every hit; None where a hit is padding or lacks the field."""
        flat = self.ids.ravel()
        if self._located is None:  # where the hits' rows sit: looked up once for every column read
            self._located = self._retriever._locate(flat)
        table, pos = self._located
        if table is not None:
            out = table.take(name, pos)
        else:
            if self._rows is None:
                self._rows = self._retriever._aligned_rows(flat)
            out = np.empty(len(flat), dtype=object)
            out[:] = field_values(self._rows, name)
        return out.reshape(self.ids.shape)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (SearchResults, list)):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"SearchResults({len(self)} queries, k={self.ids.shape[1]})"


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch's result objects are made: all of them stay alive, so the
    collections their allocations would trigger find nothing (and cost ~40% of building them)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


__all__ = ["SearchResult", "SearchResults"]
