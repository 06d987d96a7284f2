"""`anyalign serve`: a small HTTP API (FastAPI) and web page over a `Retriever`.

    GET  /                      the search page (thumbnails, audio and video players)
    GET  /api/info              index facts and the query modalities it accepts
    POST /api/search            JSON {"text": "..."} or {"vector": [...]}, optional "k" -> {"results": [...]}
    POST /api/search/file       multipart upload `file` (+ form field `k`) -> {"results": [...]}
    GET  /api/items/{id}        one item's metadata
    GET  /api/media/{id}        the item's media file
    POST /api/reload            re-read the index folder now
    GET  /api/openapi.json      the API schema

Boundaries: media are served only by vector id, only regular files under the corpus roots (resolved, so a symlink
cannot lead out) and only media content types; every response says `nosniff`, the page has a Content-Security-Policy
and may not be framed. Requests need a Host on the allow-list and, with a token, `Authorization: Bearer TOKEN` (or the
page's cookie); bodies are capped; clients that stall while sending headers or a body are cut off. Errors are one-line
JSON `{"error": ...}`. The index folder is watched: after `anyalign index add/delete` the next request is answered
from the new state (reloaded atomically, after the writer's lock is released). Concurrent text queries are embedded
together in one encoder call (micro-batching); each is then searched on its own, as a lone query would be.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import math
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..encoders import InputError
from .retriever import Retriever, SearchResult

logger = logging.getLogger(__name__)

MEDIA_TYPES = {"image", "audio", "video"}  # modalities whose items have a playable file
MEDIA_CONTENT_TYPES = {  # the only file types served (no html/svg/js: nothing a browser would run)
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp",
    ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff", ".avif": "image/avif",
    ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/ogg",
    ".flac": "audio/flac", ".m4a": "audio/mp4", ".aac": "audio/aac",
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime",
    ".mkv": "video/x-matroska", ".ogv": "video/ogg", ".avi": "video/x-msvideo",
}
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
TOKEN_ENV = "ANYALIGN_SERVE_TOKEN"
TOKEN_COOKIE = "anyalign_token"
MAX_ID = (1 << 63) - 1
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"), (b"cross-origin-resource-policy", b"same-origin")]


class SearchRequest(BaseModel):
    text: str | None = Field(default=None, max_length=2000)
    vector: list[float] | None = Field(default=None, max_length=65536)
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


def _one_line(text: Any, limit: int = 500) -> str:
    s = " ".join(str(text).split()).encode("utf-8", "backslashreplace").decode("utf-8")
    return s if len(s) <= limit else s[: limit - 3] + "..."


def error_response(status: int, message: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape: `{"error": "one line"}`."""
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)


async def _send_error(send: Any, status: int, message: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": _one_line(message)}, separators=(",", ":")).encode()  # as JSONResponse writes it
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """ASGI middleware: 413 when a request body exceeds `max_bytes` (declared or streamed); 408 when the client
    sends nothing for `idle_timeout` seconds before the body is complete."""

    def __init__(self, app: Any, max_bytes: int, idle_timeout: float = 30.0) -> None:
        self.app, self.max_bytes, self.idle_timeout = app, max_bytes, idle_timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, 413, f"request body too large (limit {self.max_bytes} bytes)")
            return
        seen = 0
        body_done = False
        failed: tuple[int, str] | None = None
        responded = False

        async def limited_receive() -> dict:
            nonlocal seen, failed, body_done
            if body_done:  # afterwards only http.disconnect comes, whenever it comes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout)
            except asyncio.TimeoutError:
                failed = (408, f"request body not received within {self.idle_timeout:g} s")
                raise _Abort() from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.max_bytes:
                    failed = (413, f"request body too large (limit {self.max_bytes} bytes)")
                    raise _Abort()
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal responded
            if failed is not None:  # the app turned the aborted read into its own error: answer ours instead
                if message["type"] == "http.response.start" and not responded:
                    responded = True
                    await _send_error(send, *failed)
                return
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _Abort:
            if not responded and failed is not None:
                await _send_error(send, *failed)


class _Abort(Exception):
    pass


def _host_of(value: str) -> str:
    """`Host` header -> lower-case host name without port ('[::1]:80' -> '::1')."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return (value.rsplit(":", 1)[0] if value.count(":") == 1 else value).rstrip(".")


class _Guard:
    """ASGI middleware: security headers on every response, the Host allow-list, and the bearer token."""

    def __init__(self, app: Any, hosts: Sequence[str], token: str | None) -> None:
        self.app, self.token = app, token
        self.any_host = "*" in hosts
        self.hosts = {_host_of(h) for h in hosts if h != "*"}

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        given = ""
        for name, value in headers:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].decode("latin-1").strip()
            elif name == b"cookie" and not given:
                for part in value.decode("latin-1").split(";"):
                    key, _, val = part.strip().partition("=")
                    if key == TOKEN_COOKIE:
                        given = unquote(val)
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode())  # type: ignore[union-attr]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                if b"content-security-policy" not in have:
                    extra.append((b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        headers = scope.get("headers") or []
        host = next((v.decode("latin-1") for k, v in headers if k == b"host"), None)
        if not self.any_host and (host is None or _host_of(host) not in self.hosts):
            await _send_error(secured_send, 400, f"host {_one_line(host, 80)!r} is not allowed (serve --allow-host)")
            return
        if self.token and scope.get("path", "/") != "/" and not self._authorized(headers):
            await _send_error(secured_send, 401, "missing or wrong token (send 'Authorization: Bearer TOKEN')",
                              [(b"www-authenticate", b'Bearer realm="anyalign"')])
            return
        await self.app(scope, receive, secured_send)


# --- the served index: reloaded when its folder changes -----------------------------------------------------
def _signature(folders: Sequence[Path]) -> tuple:
    """What identifies the index files' current state: (inode, size, mtime) of every file in the folders."""
    sig: list[Any] = []
    for folder in folders:
        try:
            st = os.stat(folder)
            entries = sorted((e.name, e.stat()) for e in os.scandir(folder)
                             if e.is_file() and not e.name.endswith(".lock"))
        except OSError:
            sig.append((str(folder), None))
            continue
        sig.append((str(folder), st.st_ino, tuple((n, s.st_ino, s.st_size, s.st_mtime_ns) for n, s in entries)))
    return tuple(sig)


def _lock_files(index_dir: Path) -> list[Path]:
    """Writer lock files of an index folder (filelock's, inside the folder or beside it), if any exist."""
    out = [index_dir.parent / f"{index_dir.name}.lock", index_dir.parent / f".{index_dir.name}.lock"]
    try:
        out += [index_dir / n for n in os.listdir(index_dir) if n.endswith(".lock")]
    except OSError:
        pass
    return [p for p in out if p.is_file()]


@contextmanager
def _shared_lock(index_dir: Path) -> Iterator[bool]:
    """Hold a shared flock on the writers' lock files while reading; yields False when a writer holds one."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): rely on the writers' atomic folder swap
        yield True
        return
    fds: list[int] = []
    try:
        for path in _lock_files(index_dir):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
        yield True
    finally:
        for fd in fds:
            os.close(fd)  # closing releases the flock


def _collapse(folders: Sequence[Path]) -> tuple[Path, ...]:
    kept: set[Path] = set()
    for f in sorted(set(folders), key=lambda p: len(p.parts)):
        if not any(p in kept for p in f.parents):
            kept.add(f)
    return tuple(sorted(kept))


def derive_media_roots(retriever: Retriever) -> tuple[Path, ...]:
    """Corpus roots from the metadata: the (resolved) folders holding the items' media files.

    Index folders do not record the corpus roots they were built from (today's `IndexConfig.sources` names the
    embedding folders), so they are derived from the local media paths the metadata records (`anyalign embed`
    records them resolved, so the folders are not resolved again: a folder made a symlink later leads nowhere);
    `--media-root` gives them explicitly instead.
    """
    dirs: set[str] = set()
    for part in retriever.parts:
        modality = part.meta.field_values("modality")
        for i, src in part.meta.field_values("source").items():
            if modality.get(i) in MEDIA_TYPES and isinstance(src, str) and os.path.isabs(src):
                dirs.add(os.path.dirname(src))
    return _collapse([Path(os.path.normpath(d)) for d in dirs])


def media_file(row: dict[str, Any] | None, roots: Sequence[Path]) -> Path | None:
    """The item's media file, resolved, if it is a regular file under one of `roots` (the only files served)."""
    if not row or row.get("deleted") or row.get("modality") not in MEDIA_TYPES:
        return None
    src = row.get("source")
    if not isinstance(src, str) or not os.path.isabs(src):
        return None
    try:
        path = Path(src).resolve(strict=True)
        mode = path.stat().st_mode
    except (OSError, RuntimeError, ValueError):
        return None
    if not stat.S_ISREG(mode) or not any(r == p for p in path.parents for r in roots):
        return None
    return path


@dataclass
class ServedState:
    """One loaded state of the index folder; requests keep the state they started with."""

    retriever: Retriever
    roots: tuple[Path, ...]
    signature: tuple
    generation: int = 0
    embedders: dict[str, Any] = field(default_factory=dict)  # modality -> Embedder, loaded by this server


class ServedIndex:
    """The index a server answers from; `current()` reloads it first when its files changed on disk."""

    def __init__(self, retriever: Retriever, media_roots: Sequence[str | os.PathLike] | None = None) -> None:
        self.index_dir = Path(os.path.abspath(retriever.index_dir))
        self.explicit_roots: tuple[Path, ...] | None = None
        if media_roots:
            for r in media_roots:
                if not Path(r).is_dir():
                    raise FileNotFoundError(f"--media-root {r}: no such folder")
            self.explicit_roots = _collapse([Path(r).resolve() for r in media_roots])
        self._lock = threading.Lock()
        self._failed: tuple | None = None
        self.state = self._state(retriever, self._signature(retriever), 0, {})

    def _signature(self, retriever: Retriever) -> tuple:
        return _signature([self.index_dir, *(p.folder for p in retriever.parts if p.folder != self.index_dir)])

    def _state(self, retriever: Retriever, sig: tuple, generation: int, embedders: dict[str, Any]) -> ServedState:
        roots = self.explicit_roots if self.explicit_roots is not None else derive_media_roots(retriever)
        retriever.load_metadata()  # rows in memory (when they fit) before serving, not after two SQL lookups
        return ServedState(retriever, roots, sig, generation, embedders)

    def changed(self) -> bool:
        sig = self._signature(self.state.retriever)
        return sig != self.state.signature and sig != self._failed

    def current(self) -> ServedState:
        if self.changed():
            self.reload()
        return self.state

    def reload(self, *, force: bool = False) -> bool:
        """Re-open the index folder if it changed (or always with `force`); False when nothing was reloaded."""
        with self._lock:
            old = self.state
            sig = self._signature(old.retriever)
            if not force and (sig == old.signature or sig == self._failed):
                return False
            with _shared_lock(self.index_dir) as free:
                if not free:
                    if force:
                        raise RuntimeError(f"{self.index_dir} is being written (its lock is held); try again")
                    return False  # keep answering from the old state until the writer is done
                try:
                    new = Retriever(self.index_dir, device=old.retriever.device)
                    keep = {}
                    for m, emb in old.embedders.items():  # reuse loaded models unless the index changed how
                        if old.retriever.config.embedders.get(m) in (None, new.config.embedders.get(m)):
                            new.set_embedder(m, emb)
                            keep[m] = emb
                    if [p.folder for p in new.parts] != [p.folder for p in old.retriever.parts]:
                        sig = self._signature(new)
                    state = self._state(new, sig, old.generation + 1, keep)
                except (OSError, ValueError, RuntimeError) as e:
                    self._failed = sig
                    logger.warning("could not reload %s (still serving the previous state): %s", self.index_dir, e)
                    if force:
                        raise
                    return False
            self.state, self._failed = state, None
            logger.info("reloaded %s (generation %d, %d items)", self.index_dir, state.generation, len(new))
            return True

    def embedder(self, state: ServedState, modality: str) -> Any:
        """The state's embedder for `modality`, loaded once (blocking: call from a worker thread)."""
        if modality not in state.embedders:
            state.embedders[modality] = state.retriever.embedder(modality)
        return state.embedders[modality]


# --- micro-batching ----------------------------------------------------------------------------------------
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


# --- the app -----------------------------------------------------------------------------------------------
PAGE = Path(__file__).resolve().parent.parent / "data" / "retrieval" / "index.html"  # package data


def page_html() -> str:
    return PAGE.read_text()


def _csp(page: str) -> str:
    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in found)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "img-src 'self' https: data:; media-src 'self' https:; connect-src 'self'; form-action 'self'; "
            "base-uri 'none'; frame-ancestors 'none'")


def parse_id(text: str) -> int:
    """A vector id from a URL segment: 0 <= id < 2^63, else 404."""
    if not re.fullmatch(r"[0-9]{1,19}", text) or int(text) > MAX_ID:
        raise HTTPException(404, f"no item {text[:40]!r}")
    return int(text)


def create_app(retriever: Retriever, *, max_upload_mb: float = 20.0, max_k: int = 100,
               title: str = "anyalign search", token: str | None = None, allow_hosts: Sequence[str] = (),
               media_roots: Sequence[str | os.PathLike] | None = None, batch_max: int = 32,
               batch_wait_ms: float = 2.0, body_timeout: float = 30.0) -> FastAPI:
    """The FastAPI app serving `retriever` (see the module docstring).

    `allow_hosts` adds to the loopback names; `media_roots` replaces the roots derived from the metadata;
    `batch_max` <= 1 embeds each text query on its own.
    """
    if not max_upload_mb > 0 or math.isinf(max_upload_mb):
        raise ValueError(f"--max-upload-mb {max_upload_mb}: expected a size > 0 (megabytes)")
    served = ServedIndex(retriever, media_roots)
    for m in retriever.modalities:  # load query models now, not on the first request
        try:
            served.embedder(served.state, m)
        except Exception as e:  # noqa: BLE001 - reported again (as a 400) when a query needs it
            logger.warning("%s embedder unavailable: %s", m, e)
    batcher = QueryBatcher(batch_max, batch_wait_ms) if batch_max > 1 else None
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")  # no CDN-hosted UI
    app.state.served, app.state.batcher = served, batcher
    app.add_middleware(BodySizeLimit, max_bytes=int(max_upload_mb * (1 << 20)), idle_timeout=body_timeout)
    app.add_middleware(_Guard, hosts=[*LOOPBACK_HOSTS, *allow_hosts], token=token)
    page = page_html().replace("{{TITLE}}", html.escape(title))
    page_headers = {"content-security-policy": _csp(page), "cache-control": "no-store"}

    async def current() -> ServedState:
        if served.changed():  # a few stat calls; the reload itself runs in a worker thread
            await run_in_threadpool(served.reload)
        return served.state

    def result_json(state: ServedState, r: SearchResult) -> dict[str, Any]:
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
        return d

    def check_k(k: int) -> None:
        if k > max_k:
            raise HTTPException(400, f"k={k} exceeds the limit of {max_k}")

    def run(state: ServedState, search: Any, query: Any, k: int) -> dict[str, Any]:
        check_k(k)
        try:
            results = search(query, k)
        except (ValueError, InputError, FileNotFoundError) as e:
            raise HTTPException(400, str(e)) from None
        return {"results": [result_json(state, r) for r in results]}

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    def index_page() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        state = served.current()
        out = state.retriever.info()
        out.pop("index", None)  # do not reveal server paths
        exts: dict[str, list[str]] = {}
        for m in state.retriever.modalities:
            if m != "text":
                try:
                    exts[m] = list(served.embedder(state, m).extensions)
                except Exception as e:  # noqa: BLE001 - an unavailable embedder only drops its extensions
                    logger.warning("embedder %s unavailable: %s", m, e)
        return {**out, "file_extensions": exts, "max_k": max_k, "max_upload_mb": max_upload_mb,
                "generation": state.generation, "auth": bool(token)}

    @app.post("/api/search")
    async def search(req: SearchRequest) -> dict[str, Any]:
        if (req.text is None) == (req.vector is None):
            raise HTTPException(400, "give exactly one of 'text' or 'vector'")
        check_k(req.k)
        state = await current()
        r = state.retriever
        if req.vector is not None:
            return await run_in_threadpool(run, state, r.search, req.vector, req.k)
        if not req.text.strip():  # type: ignore[union-attr]
            raise HTTPException(400, "empty text query")
        if batcher is None:  # one encoder call per query; text is never read as a path on this machine
            return await run_in_threadpool(run, state, r.search_text, req.text, req.k)
        try:
            emb = state.embedders.get("text") or await run_in_threadpool(served.embedder, state, "text")
            vec = await batcher.embed(emb, req.text)  # type: ignore[arg-type]
        except (ValueError, InputError, FileNotFoundError) as e:
            raise HTTPException(400, str(e)) from None
        return await run_in_threadpool(run, state, lambda v, k: r.search_vectors(v, k)[0], vec, req.k)

    @app.post("/api/search/file")
    def search_file(file: UploadFile = File(...), k: int = Form(10, ge=1)) -> dict[str, Any]:
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
            return run(state, state.retriever.search_file, path, k)

    @app.get("/api/items/{item_id}")
    def item(item_id: str) -> dict[str, Any]:
        i = parse_id(item_id)
        state = served.current()
        row = state.retriever.metadata([i])[0]
        if row is None or row.get("deleted"):
            raise HTTPException(404, f"no item {i}")
        return result_json(state, SearchResult(i, 0.0, row))

    @app.get("/api/media/{item_id}")
    def media(item_id: str) -> FileResponse:
        i = parse_id(item_id)
        state = served.current()
        row = state.retriever.metadata([i])[0]
        if row is None or row.get("deleted"):
            raise HTTPException(404, f"no item {i}")
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
        try:
            done = served.reload(force=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise HTTPException(503, f"reload failed: {e}") from None
        state = served.state
        return {"reloaded": done, "generation": state.generation, "size": len(state.retriever)}

    @app.exception_handler(StarletteHTTPException)
    def http_error(_: Any, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    def invalid(_: Any, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return error_response(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(InputError)
    def input_error(_: Any, exc: InputError) -> JSONResponse:
        return error_response(400, exc)

    @app.exception_handler(Exception)
    def internal(_: Any, exc: Exception) -> JSONResponse:
        logger.error("internal error: %r", exc, exc_info=exc)
        return error_response(500, "internal server error (see the server log)")

    return app


# --- running it ------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_serve_options(host: str, port: int, max_upload_mb: float, token: str | None) -> None:
    """One-line errors for settings that cannot work or would expose the index without a token."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port}: expected a port number in 1..65535")
    if not max_upload_mb > 0 or math.isinf(max_upload_mb):
        raise ValueError(f"--max-upload-mb {max_upload_mb}: expected a size > 0 (megabytes)")
    if token is not None and (not token or any(c.isspace() for c in token)):
        raise ValueError(f"--token / {TOKEN_ENV}: expected a non-empty token without spaces")
    if not token and not is_loopback(host):
        raise ValueError(f"--host {host} is not a loopback address: serving beyond this machine needs --token "
                         f"(or {TOKEN_ENV})")


def header_timeout_protocol(timeout: float) -> type:
    """uvicorn's h11 protocol, closing connections whose request headers are not complete within `timeout` s."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        _guard: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # headers complete: the body has its own idle timeout
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request on this connection gets the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._guard = self.loop.call_later(timeout, self._expire)

        def _disarm(self) -> None:
            if self._guard is not None:
                self._guard.cancel()
                self._guard = None

        def _expire(self) -> None:
            self._guard = None
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self.transport.close()

    return HeaderTimeoutH11


def uvicorn_server(app: Any, *, host: str = "127.0.0.1", port: int = 8000, header_timeout: float = 10.0,
                   log_level: str = "info") -> Any:
    """A `uvicorn.Server` for `app` with the slow-client limits (`.run()` blocks)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            http=header_timeout_protocol(header_timeout), timeout_keep_alive=5,
                            server_header=False, proxy_headers=False, limit_concurrency=512)
    return uvicorn.Server(config)


def serve(retriever: Retriever, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          allow_hosts: Sequence[str] = (), header_timeout: float = 10.0, **app_kwargs: Any) -> None:
    """Run the app with uvicorn (blocking); a host other than loopback needs a `token`."""
    check_serve_options(host, port, app_kwargs.get("max_upload_mb", 20.0), token)
    bind = [] if host in ("0.0.0.0", "::", "") else [host]
    if not bind and not allow_hosts:
        logger.warning("listening on all interfaces, but only requests with Host %s are answered: add --allow-host "
                       "NAME for each name or address clients use to reach this machine", ", ".join(LOOPBACK_HOSTS))
    app = create_app(retriever, token=token, allow_hosts=[*bind, *allow_hosts], **app_kwargs)
    uvicorn_server(app, host=host, port=port, header_timeout=header_timeout).run()


__all__ = ["BodySizeLimit", "QueryBatcher", "ServedIndex", "check_serve_options", "create_app",
           "derive_media_roots", "media_file", "serve", "uvicorn_server"]
