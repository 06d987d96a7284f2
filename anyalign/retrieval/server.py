"""`anyalign serve`: a small HTTP API (FastAPI) and web page over a `Retriever`.

    GET  /                      the search page
    GET  /api/info              index facts, query modalities, items per modality, example queries
    POST /api/search            JSON {"text": ...} | {"vector": [...]} | {"like": ID}, optional "k", "modality"
    POST /api/search/file       multipart upload `file` (+ form fields `k`, `modality`) -> {"results": [...]}
    GET  /api/items/{id}        one item's metadata
    GET  /api/media/{id}        the item's media file
    POST /api/reload            re-read the index folder now
    POST /v1/embeddings         OpenAI-compatible embeddings; GET /v1/models (see `openai_api.py`)
    GET  /docs, /openapi.json   the API described: a plain page (no CDN) and the schema

This module assembles the app, guards it (Host allow-list, bearer token or the page's cookie, body size and
stalled-client limits, `nosniff`/CSP/no-framing headers, one-line JSON errors) and runs it; the routes are in
`search_api.py` and `openai_api.py`, the index state and its reloads in `served.py`, query micro-batching in
`batching.py`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from ..encoders import InputError
from .batching import QueryBatcher
from .openai_api import OpenAIError, add_openai_routes, error_payload
from .page import docs_html
from .retriever import Retriever
from .search_api import add_search_routes
from .served import ServedIndex, derive_media_roots, media_file
from .server_limits import header_timeout_protocol, parse_host, scrub_paths

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
TOKEN_ENV = "ANYALIGN_SERVE_TOKEN"
TOKEN_COOKIE = "anyalign_token"
DOCS_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"), (b"cross-origin-resource-policy", b"same-origin")]


def _one_line(text: Any, limit: int = 500) -> str:
    s = " ".join(str(text).split()).encode("utf-8", "backslashreplace").decode("utf-8")
    return s if len(s) <= limit else s[: limit - 3] + "..."


def error_body(status: int, message: Any, path: str = "") -> dict[str, Any]:
    """The one error shape `{"error": "one line"}`; under `/v1` (the OpenAI-compatible routes) OpenAI's shape."""
    message = scrub_paths(str(message))  # never the server's own temporary paths
    if path.startswith("/v1/"):
        return error_payload(status, _one_line(message))
    return {"error": _one_line(message)}


def error_response(status: int, message: Any, headers: dict[str, str] | None = None, path: str = "") -> JSONResponse:
    """A JSON error response (see `error_body`)."""
    return JSONResponse(error_body(status, message, path), status_code=status, headers=headers)


async def _send_error(send: Any, status: int, message: str, extra: Sequence[tuple[bytes, bytes]] = (),
                      path: str = "") -> None:
    body = json.dumps(error_body(status, message, path), separators=(",", ":")).encode()  # as JSONResponse does
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
            await _send_error(send, 413, f"request body too large (limit {self.max_bytes} bytes)",
                              path=scope.get("path", ""))
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
                    await _send_error(send, *failed, path=scope.get("path", ""))
                return
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _Abort:
            if not responded and failed is not None:
                await _send_error(send, *failed, path=scope.get("path", ""))


class _Abort(Exception):
    pass


class _Guard:
    """ASGI middleware: security headers on every response, the Host allow-list, and the bearer token (or the
    page's cookie)."""

    def __init__(self, app: Any, hosts: Sequence[str], token: str | None) -> None:
        self.app, self.token = app, token
        self.any_host = "*" in hosts
        self.hosts = {name for h in hosts if h != "*" and (name := parse_host(h)) is not None}

    def _authorized(self, conn: HTTPConnection) -> bool:
        auth = conn.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else unquote(conn.cookies.get(TOKEN_COOKIE, ""))
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

        conn = HTTPConnection(scope)
        host = conn.headers.get("host")
        if not self.any_host and (host is None or parse_host(host) not in self.hosts):
            await _send_error(secured_send, 400, f"host {_one_line(host, 80)!r} is not allowed (serve --allow-host)")
            return
        if self.token and scope.get("path", "/") != "/" and not self._authorized(conn):
            await _send_error(secured_send, 401, "missing or wrong token (send 'Authorization: Bearer TOKEN')",
                              [(b"www-authenticate", b'Bearer realm="anyalign"')], scope.get("path", ""))
            return
        await self.app(scope, receive, secured_send)


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
            retriever.embedder(m)
        except Exception as e:  # noqa: BLE001 - reported again (as a 400) when a query needs it
            logger.warning("%s embedder unavailable: %s", m, e)
    batcher = QueryBatcher(batch_max, batch_wait_ms) if batch_max > 1 else None
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url="/openapi.json")  # /docs: our own page
    app.state.served, app.state.batcher = served, batcher
    app.add_middleware(BodySizeLimit, max_bytes=int(max_upload_mb * (1 << 20)), idle_timeout=body_timeout)
    app.add_middleware(_Guard, hosts=[*LOOPBACK_HOSTS, *allow_hosts], token=token)
    add_search_routes(app, served, batcher=batcher, max_k=max_k, max_upload_mb=max_upload_mb, title=title,
                      auth=bool(token))
    add_openai_routes(app, served)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_html(app.openapi()), headers={"content-security-policy": DOCS_CSP})

    @app.exception_handler(OpenAIError)
    def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(error_payload(exc.status, _one_line(exc), exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, exc.detail, getattr(exc, "headers", None), request.url.path)

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return error_response(422, "; ".join(parts) or "invalid request", path=request.url.path)

    @app.exception_handler(InputError)
    def input_error(request: Request, exc: InputError) -> JSONResponse:
        return error_response(400, exc, path=request.url.path)

    @app.exception_handler(Exception)
    def internal(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error: %r", exc, exc_info=exc)
        return error_response(500, "internal server error (see the server log)", path=request.url.path)

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
