"""Query micro-batching for the server: concurrent text queries embedded together in one encoder call."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


class QueryBatcher:
    """Embeds concurrent text queries together: queries that arrive while the encoder is busy (and, under load,
    within `wait_ms`) go into one encoder call of at most `max_batch`; a lone query is embedded at once."""

    def __init__(self, max_batch: int = 32, wait_ms: float = 2.0) -> None:
        self.max_batch, self.wait = max(1, int(max_batch)), max(0.0, wait_ms) / 1000
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anyalign-embed")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[Any, str, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._last = 1
        self.calls = self.queries = 0  # encoder calls and queries embedded (for tests and benchmarks)

    async def embed(self, embedder: Any, text: str) -> np.ndarray:
        """`[1, E]` for one text, embedded in a batch with whatever else is queued."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (a test client): start afresh
            self._loop, self._pending, self._task = loop, [], None
        fut: asyncio.Future = loop.create_future()
        self._pending.append((embedder, text, fut))
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                if self._last > 1 and len(self._pending) < self.max_batch and self.wait:
                    await asyncio.sleep(self.wait)  # under load: let the queries in flight join this batch
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
                outs = await loop.run_in_executor(self._pool, self._embed, batch)
                for (_, _, fut), out in zip(batch, outs):
                    if fut.done():
                        continue
                    if isinstance(out, BaseException):
                        fut.set_exception(out)
                    else:
                        fut.set_result(out)
                self._last = len(batch)
        finally:
            self._task = None

    def _embed(self, batch: list[tuple[Any, str, asyncio.Future]]) -> list[Any]:
        outs: list[Any] = [None] * len(batch)
        groups: dict[int, list[int]] = {}
        for j, (emb, _, _) in enumerate(batch):
            groups.setdefault(id(emb), []).append(j)
        for js in groups.values():
            emb = batch[js[0]][0]
            texts = [batch[j][1] for j in js]
            self.calls += 1
            self.queries += len(js)
            try:
                vecs = emb.embed(texts, batch_size=len(texts))  # [B, E]
                for row, j in enumerate(js):
                    outs[j] = vecs[row: row + 1]
            except Exception:  # noqa: BLE001 - find out which query failed: each on its own
                for j in js:
                    try:
                        outs[j] = emb.embed([batch[j][1]])
                    except Exception as e:  # noqa: BLE001 - handed to that query's request
                        outs[j] = e
        return outs


__all__ = ["QueryBatcher"]
