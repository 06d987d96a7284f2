"""Batch inference over many inputs with per-input failure isolation.

Decoding (`Embedder.load`) and preprocessing (`Embedder.collate`, e.g. CLAP's mel spectrograms) run in the
DataLoader, so `num_workers > 0` overlaps them with the network; the main process only runs the network. An input
that cannot be decoded, preprocessed or embedded is recorded with its error and the others go on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..embedder import Embedder, pool_windows
from ..encoders.inputs import SafeDecode

logger = logging.getLogger(__name__)


@dataclass
class EmbeddingResult:
    """Embeddings `[M, E]` of the inputs that worked, their positions in the input list, and the failures."""

    embeddings: torch.Tensor
    index: list[int]
    errors: dict[int, str]


@dataclass
class _Chunk:
    """Inputs preprocessed together: positions, windows per input, the collated batch, and the raw windows (to
    retry one by one if the network fails on the batch)."""

    index: list[int]
    counts: list[int]
    batch: dict[str, Any]
    windows: list[list[Any]]


@dataclass
class _Prepared:
    chunks: list[_Chunk] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    size: int = 0


def input_name(item: Any, i: int) -> str:
    """How an input is named in predictions and errors: its path, else its position."""
    return str(item) if isinstance(item, (str, os.PathLike)) else f"input {i}"


def _describe(name: str, e: Exception) -> str:
    msg = str(e) or type(e).__name__
    return msg if name in msg else f"{name}: {msg}"


class _Describe:
    """Names the input in a decoding failure (picklable, for DataLoader workers)."""

    def __init__(self, inputs: Sequence[Any]) -> None:
        self.inputs = inputs

    def __call__(self, i: int, e: BaseException) -> str:
        return _describe(input_name(self.inputs[i], i), e)  # type: ignore[arg-type]


class _Collate:
    """Groups decoded inputs into chunks of at most `max_windows` windows and preprocesses each chunk; an input
    whose preprocessing fails is retried alone and reported if it still fails."""

    def __init__(self, inputs: Sequence[Any], embedder: Embedder, max_windows: int) -> None:
        self.inputs, self.embedder, self.max_windows = inputs, embedder, max_windows

    def _collate(self, group: list[tuple[int, list[Any]]], out: _Prepared) -> None:
        try:
            batch = self.embedder.collate([w for _, ws in group for w in ws])
            out.chunks.append(_Chunk([i for i, _ in group], [len(ws) for _, ws in group], batch,
                                     [ws for _, ws in group]))
        except Exception as e:  # noqa: BLE001 - isolate the input that breaks the batch
            if len(group) > 1:
                for item in group:
                    self._collate([item], out)
            else:
                i = group[0][0]
                out.errors[i] = _describe(input_name(self.inputs[i], i), e)

    def __call__(self, items: list[tuple[int, list[Any] | None, str | None]]) -> _Prepared:
        out = _Prepared(size=len(items))
        group: list[tuple[int, list[Any]]] = []
        for i, windows, err in items:
            if err is not None:
                out.errors[i] = err
                continue
            if group and sum(len(ws) for _, ws in group) + len(windows) > self.max_windows:
                self._collate(group, out)
                group = []
            group.append((i, windows))
        if group:
            self._collate(group, out)
        return out


def _run_chunk(embedder: Embedder, chunk: _Chunk, inputs: Sequence[Any], errors: dict[int, str]
               ) -> list[tuple[int, torch.Tensor]]:
    try:
        pooled = pool_windows(embedder.embed_collated(chunk.batch).cpu(), chunk.counts)  # [n, E]
        return list(zip(chunk.index, pooled))
    except Exception as e:  # noqa: BLE001 - retry one by one to find the input the network fails on
        if len(chunk.index) == 1:
            i = chunk.index[0]
            errors[i] = f"{input_name(inputs[i], i)}: cannot embed ({type(e).__name__}: {e})"
            return []
    out = []
    for i, ws in zip(chunk.index, chunk.windows):
        try:
            single = _Chunk([i], [len(ws)], embedder.collate(ws), [ws])
        except Exception as e:  # noqa: BLE001
            errors[i] = _describe(input_name(inputs[i], i), e)
            continue
        out += _run_chunk(embedder, single, inputs, errors)
    return out


def embed_inputs(embedder: Embedder, inputs: Sequence[Any], *, batch_size: int = 32, num_workers: int = 0,
                 progress: bool | None = None, desc: str = "embed") -> EmbeddingResult:
    """Embed `inputs` in batches of `batch_size` (windows of one input pooled); failures are collected."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    loader = DataLoader(SafeDecode(inputs, embedder.load, describe=_Describe(inputs)), batch_size=batch_size,
                        num_workers=num_workers,
                        collate_fn=_Collate(inputs, embedder, batch_size))
    rows: list[torch.Tensor] = []
    index: list[int] = []
    errors: dict[int, str] = {}
    with tqdm(total=len(inputs), desc=desc, unit="file", disable=None if progress is None else not progress) as bar:
        for prepared in loader:
            errors.update(prepared.errors)
            for chunk in prepared.chunks:
                for i, emb in _run_chunk(embedder, chunk, inputs, errors):
                    index.append(i)
                    rows.append(emb)
            bar.update(prepared.size)
    for i in sorted(errors):
        logger.info("%s", errors[i])
    emb = torch.stack(rows) if rows else torch.zeros(0, embedder.dim)
    return EmbeddingResult(emb, index, errors)


__all__ = ["EmbeddingResult", "embed_inputs", "input_name"]
