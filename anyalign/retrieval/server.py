"""`anyalign serve`: a small HTTP API (FastAPI) and web page over a `Retriever`.

    GET  /                      the search page (thumbnails, audio and video players)
    GET  /api/info              index facts and the query modalities it accepts
    POST /api/search            JSON {"text": "..."} or {"vector": [...]}, optional "k" -> {"results": [...]}
    POST /api/search/file       multipart upload `file` (+ form field `k`) -> {"results": [...]}
    GET  /api/items/{id}        one item's metadata
    GET  /api/media/{id}        the item's media file

Media are served only by vector id, from the `source` path the index recorded for that id (a regular local
file); no request names a path, so nothing outside the corpus can be reached. Request bodies are capped.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from ..encoders import InputError
from .retriever import Retriever, SearchResult

logger = logging.getLogger(__name__)

MEDIA_TYPES = {"image", "audio", "video"}


class SearchRequest(BaseModel):
    text: str | None = Field(default=None, max_length=2000)
    vector: list[float] | None = None
    k: int = Field(default=10, ge=1, le=1000)


class BodySizeLimit:
    """ASGI middleware: answer 413 when a request body exceeds `max_bytes` (declared or streamed)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large(send, self.max_bytes)
            return
        seen = 0
        exceeded = responded = False

        async def limited_receive() -> dict:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal responded
            if exceeded:  # the app turned the aborted read into its own error: answer 413 instead
                if message["type"] == "http.response.start" and not responded:
                    responded = True
                    await _too_large(send, self.max_bytes)
                return
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not responded:
                await _too_large(send, self.max_bytes)


class _TooLarge(Exception):
    pass


async def _too_large(send: Any, limit: int) -> None:
    body = f'{{"detail": "request body too large (limit {limit} bytes)"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


PAGE = Path(__file__).resolve().parent.parent / "data" / "retrieval" / "index.html"  # package data


def page_html() -> str:
    return PAGE.read_text()


def create_app(retriever: Retriever, *, max_upload_mb: float = 20.0, max_k: int = 100,
               title: str = "anyalign search") -> FastAPI:
    """The FastAPI app serving `retriever` (see the module docstring)."""
    app = FastAPI(title=title, docs_url="/api/docs", redoc_url=None)
    app.add_middleware(BodySizeLimit, max_bytes=int(max_upload_mb * (1 << 20)))
    page = page_html().replace("{{TITLE}}", title)

    def result_json(r: SearchResult) -> dict[str, Any]:
        d = r.to_dict()
        d.pop("deleted", None)
        src = str(d.get("source") or "")
        d["name"] = Path(src).name if src else str(r.id)
        if re.match(r"^https?://", src):
            d["media_url"] = src
        elif _media_file(d) is not None:
            d["media_url"] = f"/api/media/{r.id}"
        else:
            d["media_url"] = None
        return d

    def run(search: Any, query: Any, k: int) -> dict[str, Any]:
        if k > max_k:
            raise HTTPException(400, f"k={k} exceeds the limit of {max_k}")
        try:
            results = search(query, k)
        except (ValueError, InputError, FileNotFoundError) as e:
            raise HTTPException(400, str(e)) from None
        return {"results": [result_json(r) for r in results]}

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        out = retriever.info()
        out.pop("index", None)  # do not reveal server paths
        exts: dict[str, list[str]] = {}
        for m in retriever.modalities:
            if m != "text":
                try:
                    exts[m] = list(retriever.embedder(m).extensions)
                except (ValueError, OSError) as e:
                    logger.warning("embedder %s unavailable: %s", m, e)
        return {**out, "file_extensions": exts, "max_k": max_k, "max_upload_mb": max_upload_mb}

    @app.post("/api/search")
    def search(req: SearchRequest) -> dict[str, Any]:
        if (req.text is None) == (req.vector is None):
            raise HTTPException(400, "give exactly one of 'text' or 'vector'")
        if req.text is not None:  # text is never read as a path on this machine
            return run(retriever.search_text, req.text, req.k)
        return run(retriever.search, req.vector, req.k)

    @app.post("/api/search/file")
    def search_file(file: UploadFile = File(...), k: int = Form(10)) -> dict[str, Any]:
        suffix = Path(file.filename or "").suffix.lower()
        if not re.fullmatch(r"\.[a-z0-9]{1,8}", suffix):
            raise HTTPException(400, f"upload needs a file name with an extension, got {file.filename!r}")
        with tempfile.TemporaryDirectory(prefix="anyalign-query-") as d:
            path = Path(d) / f"query{suffix}"
            with path.open("wb") as out:
                while chunk := file.file.read(1 << 20):
                    out.write(chunk)
            return run(retriever.search_file, path, k)

    @app.get("/api/items/{item_id}")
    def item(item_id: int) -> dict[str, Any]:
        row = retriever.metadata([item_id])[0]
        if row is None or row.get("deleted"):
            raise HTTPException(404, f"no item {item_id}")
        return result_json(SearchResult(item_id, 0.0, row))

    @app.get("/api/media/{item_id}")
    def media(item_id: int) -> FileResponse:
        row = retriever.metadata([item_id])[0]
        path = _media_file(row) if row is not None and not row.get("deleted") else None
        if path is None:
            raise HTTPException(404, f"no media file for item {item_id}")
        return FileResponse(path)

    @app.exception_handler(InputError)
    def input_error(_: Any, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    return app


def _media_file(row: dict[str, Any] | None) -> Path | None:
    """The local media file an item was embedded from, if it is a regular file (the only files served)."""
    if not row or not row.get("source") or row.get("modality") not in MEDIA_TYPES:
        return None
    path = Path(str(row["source"]))
    if not path.is_absolute():
        return None
    try:
        path = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return path if path.is_file() else None


def serve(retriever: Retriever, *, host: str = "127.0.0.1", port: int = 8000, **app_kwargs: Any) -> None:
    """Run the app with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(create_app(retriever, **app_kwargs), host=host, port=port, log_level="info")


__all__ = ["BodySizeLimit", "create_app", "serve"]
