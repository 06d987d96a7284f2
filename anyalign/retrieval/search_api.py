"""The search routes of `anyalign serve` and the page they feed (see `server.py` for the whole list).

A search takes a text, a vector or `like` (an indexed item's id), and optionally a `modality` to keep (the page
asks once per modality: cosine scales differ between them); hits carry their caption/label, a media URL where a
playable file exists and, for array items (IMU windows ...), a small `signal` preview the page draws.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from ..encoders import InputError
from .page import csp, page_html
from .preview import file_preview
from .results import SearchResult
from .retriever import Retriever
from .served import MEDIA_CONTENT_TYPES, MEDIA_TYPES, ServedState, media_file

logger = logging.getLogger(__name__)

MAX_ID = (1 << 63) - 1
EXAMPLES = 6


class SearchRequest(BaseModel):
    text: str | None = Field(default=None, max_length=2000)
    vector: list[float] | None = Field(default=None, max_length=65536)
    like: int | None = Field(default=None, ge=0, le=MAX_ID, description="An indexed item's id: more like this.")
    modality: str | None = Field(default=None, max_length=64, description="Only items of this modality.")
    k: int = Field(default=10, ge=1, le=1000)

    @field_validator("text")
    @classmethod
    def _utf8(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("text is not valid Unicode (lone surrogate)") from None
        return v


def parse_id(text: str) -> int:
    """A vector id from a URL segment: 0 <= id < 2^63, else 404."""
    if not re.fullmatch(r"[0-9]{1,19}", text) or int(text) > MAX_ID:
        raise HTTPException(404, f"no item {text[:40]!r}")
    return int(text)


def item_vector(retriever: Retriever, item_id: int, embed: Any) -> np.ndarray:
    """The stored vector of an indexed item `[1, E]`: its raw vector on disk, else faiss's reconstruction, else
    its source embedded again by `embed(modality, source)`."""
    for part in retriever.parts:
        if part.raw is not None:
            row = int(part.raw.rows_of(np.asarray([item_id]))[0])
            if row >= 0:
                return np.asarray(part.raw.data[row], dtype=np.float32)[None]
        try:
            return np.asarray(part.index.reconstruct(int(item_id)), dtype=np.float32)[None]
        except (RuntimeError, ValueError):  # no direct map (IVF without it), or not in this part
            continue
    row = retriever.metadata([item_id])[0]
    if not row or row.get("deleted"):
        raise HTTPException(404, f"no item {item_id}")
    src = row.get("source")
    if row.get("modality") == "text" and row.get("text"):
        return embed("text", str(row["text"]))
    if isinstance(src, str) and os.path.isfile(src):
        return embed(row.get("modality"), src)
    raise HTTPException(400, f"item {item_id}: its vector cannot be read back from this index and its source is "
                             "not a file here")


def index_summary(retriever: Retriever) -> tuple[dict[str, int], list[str]]:
    """(items per modality, example text queries: distinct labels, else captions) of an index."""
    counts: Counter[str] = Counter()
    labels: dict[str, None] = {}
    captions: dict[str, None] = {}
    for part in retriever.parts:
        modality = part.meta.field_values("modality")
        counts.update(str(m) for m in modality.values() if m)
        for name, into in (("label", labels), ("caption", captions)):
            if len(into) < 50:
                for i, v in part.meta.field_values(name).items():
                    if isinstance(v, str) and v.strip() and modality.get(i) != "text" and len(v) <= 80:
                        into.setdefault(v.strip())
                        if len(into) >= 50:
                            break
    pool = list(labels) if len(labels) >= 2 else list(captions) or list(labels)
    step = max(1, len(pool) // EXAMPLES)
    return dict(sorted(counts.items())), pool[::step][:EXAMPLES]


def result_json(state: ServedState, r: SearchResult) -> dict[str, Any]:
    """A hit as the API returns it: metadata, a display name, a media URL (or None) and an array preview."""
    d = r.to_dict()
    d.pop("deleted", None)
    src = str(d.get("source") or "")
    d["name"] = Path(src).name if src else str(r.id)
    if re.match(r"^https?://", src):
        d["media_url"] = src
    elif media_file(d, state.roots) is not None and Path(src).suffix.lower() in MEDIA_CONTENT_TYPES:
        d["media_url"] = f"/api/media/{r.id}"
    else:
        d["media_url"] = None
    if d.get("signal") is None:  # an array file the index recorded as this item's source (.npy only, no pickle)
        d["signal"] = file_preview(src) if src.lower().endswith(".npy") and os.path.isabs(src) else None
    return d


def add_search_routes(app: FastAPI, served: Any, *, batcher: Any, max_k: int, max_upload_mb: float,
                      title: str, auth: bool) -> None:
    """Register the page and the `/api` routes on `app`."""
    page = page_html(title)
    page_headers = {"content-security-policy": csp(page), "cache-control": "no-store"}
    summaries: dict[int, tuple[dict[str, int], list[str]]] = {}

    async def current() -> ServedState:
        if served.changed():  # a few stat calls; the reload itself runs in a worker thread
            await run_in_threadpool(served.reload)
        return served.state

    def check_k(k: int) -> None:
        if k > max_k:
            raise HTTPException(400, f"k={k} exceeds the limit of {max_k}")

    def run(state: ServedState, search: Any, query: Any, k: int, modality: str | None = None) -> dict[str, Any]:
        check_k(k)
        try:
            results = search(query, k, modality=modality)
        except (ValueError, InputError, FileNotFoundError) as e:
            raise HTTPException(400, str(e)) from None
        return {"results": [result_json(state, r) for r in results]}

    def live_row(item_id: str) -> tuple[ServedState, int, dict[str, Any]]:
        i = parse_id(item_id)
        state = served.current()
        row = state.retriever.metadata([i])[0]
        if row is None or row.get("deleted"):
            raise HTTPException(404, f"no item {i}")
        return state, i, row

    def embed_one(state: ServedState, modality: str, value: str) -> np.ndarray:
        try:
            return state.retriever.embedder(modality).embed([value])
        except (ValueError, InputError, FileNotFoundError) as e:
            raise HTTPException(400, str(e)) from None

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    def index_page() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        """Index facts, the query modalities, items per modality and example queries."""
        state = served.current()
        out = state.retriever.info()
        out.pop("index", None)  # do not reveal server paths
        exts: dict[str, list[str]] = {}
        for m in state.retriever.modalities:
            if m != "text":
                try:
                    exts[m] = list(state.retriever.embedder(m).extensions)
                except Exception as e:  # noqa: BLE001 - an unavailable embedder only drops its extensions
                    logger.warning("embedder %s unavailable: %s", m, e)
        if state.generation not in summaries:
            summaries.clear()
            summaries[state.generation] = index_summary(state.retriever)
        counts, examples = summaries[state.generation]
        return {**out, "file_extensions": exts, "max_k": max_k, "max_upload_mb": max_upload_mb,
                "generation": state.generation, "auth": auth, "item_modalities": counts, "examples": examples}

    @app.post("/api/search")
    async def search(req: SearchRequest) -> dict[str, Any]:
        """Search by `text`, `vector` or `like` (an item id), optionally only items of `modality`."""
        if sum(x is not None for x in (req.text, req.vector, req.like)) != 1:
            raise HTTPException(400, "give exactly one of 'text', 'vector' or 'like'")
        check_k(req.k)
        state = await current()
        r, modality = state.retriever, req.modality
        if req.vector is not None:
            return await run_in_threadpool(run, state, r.search, req.vector, req.k, modality)
        if req.like is not None:
            vec = await run_in_threadpool(item_vector, r, req.like, lambda m, v: embed_one(state, m, v))
            return await run_in_threadpool(run, state, r.search, vec[0], req.k, modality)
        if not req.text.strip():  # type: ignore[union-attr]
            raise HTTPException(400, "empty text query")
        if batcher is None:  # one encoder call per query; text is never read as a path on this machine
            return await run_in_threadpool(run, state, r.search_text, req.text, req.k, modality)
        try:
            emb = state.retriever._embedders.get("text") or await run_in_threadpool(state.retriever.embedder, "text")
            vec = await batcher.embed(emb, req.text)  # type: ignore[arg-type]
        except (ValueError, InputError, FileNotFoundError) as e:
            raise HTTPException(400, str(e)) from None
        if modality is None:
            return await run_in_threadpool(run, state, lambda v, k, modality: r.search_vectors(v, k)[0], vec, req.k)
        return await run_in_threadpool(run, state, r.search, vec[0], req.k, modality)

    @app.post("/api/search/file")
    def search_file(file: UploadFile = File(...), k: int = Form(10, ge=1),
                    modality: str | None = Form(None, max_length=64)) -> dict[str, Any]:
        """Search by an uploaded media file (multipart `file`, form fields `k` and `modality`)."""
        check_k(k)
        suffix = Path(file.filename or "").suffix.lower()
        if not re.fullmatch(r"\.[a-z0-9]{1,8}", suffix):
            raise HTTPException(400, f"upload needs a file name with an extension, got {file.filename!r}")
        state = served.current()
        with tempfile.TemporaryDirectory(prefix="anyalign-query-") as d:
            path = Path(d) / f"query{suffix}"
            with path.open("wb") as out:
                while chunk := file.file.read(1 << 20):
                    out.write(chunk)
            return run(state, state.retriever.search_file, path, k, modality or None)

    @app.get("/api/items/{item_id}")
    def item(item_id: str) -> dict[str, Any]:
        """One item's metadata."""
        state, i, row = live_row(item_id)
        return result_json(state, SearchResult(i, 0.0, row))

    @app.get("/api/media/{item_id}")
    def media(item_id: str) -> FileResponse:
        """The item's media file (only media types, only under the corpus roots)."""
        state, i, row = live_row(item_id)
        src = str(row.get("source") or "")
        if row.get("modality") in MEDIA_TYPES and os.path.isabs(src) \
                and Path(src).suffix.lower() not in MEDIA_CONTENT_TYPES:
            raise HTTPException(415, f"item {i}: {Path(src).suffix or 'this'} files are not served as media")
        path = media_file(row, state.roots)
        kind = MEDIA_CONTENT_TYPES.get(path.suffix.lower()) if path is not None else None
        if path is None or kind is None:
            raise HTTPException(404, f"no media file for item {i}")
        return FileResponse(path, media_type=kind, headers={"cache-control": "private, max-age=60"})

    @app.post("/api/reload")
    def reload() -> dict[str, Any]:
        """Re-read the index folder now."""
        try:
            done = served.reload(force=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise HTTPException(503, f"reload failed: {e}") from None
        state = served.state
        return {"reloaded": done, "generation": state.generation, "size": len(state.retriever)}


__all__ = ["SearchRequest", "add_search_routes", "index_summary", "item_vector", "parse_id", "result_json"]
