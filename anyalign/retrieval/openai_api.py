"""OpenAI-compatible embeddings on `anyalign serve`, so tools that speak OpenAI's API can use a space.

    POST /v1/embeddings   {"input": str | [str, ...], "model": NAME, "encoding_format": "float" | "base64"}
    GET  /v1/models       the models: the space (the index folder's name) and each query modality

`model` is a query modality (every input of `text` is text; of another modality, a file's bytes as base64 or a
data URL) or the space's name (a data URL is media, its type picking the modality; anything else is text). The
vectors are those the search endpoints query with; errors come in OpenAI's shape; the bearer token is the API key.
"""

from __future__ import annotations

import base64
import binascii
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..encoders import InputError

MAX_INPUTS = 2048  # OpenAI's own limit per request
MAX_TEXT_CHARS = 32_000
CREATED = int(time.time())

# MIME types (data URLs) and leading bytes (plain base64) -> the file suffix the embedders read
MIME_SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp",
               "image/bmp": ".bmp", "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav",
               "audio/flac": ".flac", "audio/mpeg": ".mp3", "audio/ogg": ".ogg", "video/mp4": ".mp4",
               "video/webm": ".webm", "application/x-npy": ".npy", "application/npy": ".npy",
               "text/csv": ".csv"}
MAGIC_SUFFIX = [(b"\x93NUMPY", ".npy"), (b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"),
                (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"), (b"\x1aE\xdf\xa3", ".webm"),
                (b"BM", ".bmp")]
DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*?;base64,", re.ASCII)


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    return {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
            429: "rate_limit_error"}.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_payload(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}` as OpenAI's API writes it."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


class EmbeddingRequest(BaseModel):
    input: str | list[str] | list[int] | list[list[int]]
    model: str = Field(max_length=200)
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None


def _media_bytes(item: str, index: int) -> tuple[bytes, str | None]:
    """Base64 or a data URL -> (bytes, suffix or None when the type is not said)."""
    suffix = None
    m = DATA_URL.match(item)
    if m:
        mime = (m.group(1) or "").lower()
        suffix = MIME_SUFFIX.get(mime)
        if suffix is None:
            raise OpenAIError(400, f"input[{index}]: media type {mime or 'unknown'!r} is not read here "
                                   f"(known: {', '.join(sorted(MIME_SUFFIX))})", param="input")
        item = item[m.end():]
    try:
        data = base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise OpenAIError(400, f"input[{index}]: expected base64 file bytes or a data URL "
                               "(data:MIME;base64,...)", param="input") from None
    if not data:
        raise OpenAIError(400, f"input[{index}]: empty file", param="input")
    if suffix is None:
        suffix = next((s for magic, s in MAGIC_SUFFIX if data.startswith(magic)), None)
        if suffix is None and data[:4] == b"RIFF":
            suffix = {b"WAVE": ".wav", b"WEBP": ".webp", b"AVI ": ".avi"}.get(data[8:12])
        if suffix is None and data[4:8] == b"ftyp":
            suffix = ".mp4"
    return data, suffix


def space_name(state: Any) -> str:
    return Path(state.retriever.index_dir).name or "space"


def list_models(state: Any) -> list[dict[str, Any]]:
    names = [space_name(state), *state.retriever.modalities]
    return [{"id": n, "object": "model", "created": CREATED, "owned_by": "anyalign"}
            for n in dict.fromkeys(names)]


def _inputs(req: EmbeddingRequest) -> list[str]:
    items = [req.input] if isinstance(req.input, str) else list(req.input)
    if not items:
        raise OpenAIError(400, "'input' is empty: give a string or a list of strings", param="input")
    if not all(isinstance(x, str) for x in items):
        raise OpenAIError(400, "token-id inputs are not accepted: send the text itself", param="input")
    if len(items) > MAX_INPUTS:
        raise OpenAIError(400, f"{len(items)} inputs: at most {MAX_INPUTS} per request", param="input")
    return items  # type: ignore[return-value]


def _route(state: Any, model: str, items: list[str]) -> list[tuple[str, str | bytes, str | None]]:
    """Each input -> (modality, text or file bytes, file suffix)."""
    space = space_name(state)
    modalities = state.retriever.modalities
    if model != space and model not in modalities:
        raise OpenAIError(404, f"model {model!r} does not exist here (models: "
                               f"{', '.join([space, *modalities])})", param="model", code="model_not_found")
    out: list[tuple[str, str | bytes, str | None]] = []
    for i, item in enumerate(items):
        if model == "text" or (model == space and not DATA_URL.match(item)):
            if not item.strip():
                raise OpenAIError(400, f"input[{i}]: empty text", param="input")
            if len(item) > MAX_TEXT_CHARS:
                raise OpenAIError(400, f"input[{i}]: {len(item)} characters (limit {MAX_TEXT_CHARS})",
                                  param="input")
            out.append(("text", item, None))
            continue
        data, suffix = _media_bytes(item, i)
        if model != space:
            if suffix is None:  # the modality's embedder reads one kind of file: take that
                exts = list(state.retriever.embedder(model).extensions)
                suffix = exts[0] if len(exts) == 1 else None
            if suffix is None:
                raise OpenAIError(400, f"input[{i}]: cannot tell the file type: send a data URL "
                                       "(data:MIME;base64,...)", param="input")
            out.append((model, data, suffix))
        else:
            try:
                out.append((state.retriever.modality_for_file(f"query{suffix}"), data, suffix))
            except ValueError as e:
                raise OpenAIError(400, f"input[{i}]: {e}", param="input") from None
    return out


def _tokens(emb: Any, texts: list[str]) -> int:
    tok = getattr(getattr(emb, "encoder", None), "tokenizer", None)
    if tok is None:
        return sum(len(t.split()) for t in texts)
    return sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])


def embed(served: Any, req: EmbeddingRequest) -> dict[str, Any]:
    """The `/v1/embeddings` answer (blocking: runs in a worker thread)."""
    if req.encoding_format not in ("float", "base64"):
        raise OpenAIError(400, f"encoding_format {req.encoding_format!r}: expected 'float' or 'base64'",
                          param="encoding_format")
    state = served.current()
    if req.dimensions is not None and req.dimensions != state.retriever.dim:
        raise OpenAIError(400, f"dimensions={req.dimensions}: this space has {state.retriever.dim} (vectors are "
                               "not truncated)", param="dimensions")
    routed = _route(state, req.model, _inputs(req))
    vectors: list[np.ndarray | None] = [None] * len(routed)
    tokens = 0
    by_modality: dict[str, list[int]] = {}
    for j, (m, _, _) in enumerate(routed):
        by_modality.setdefault(m, []).append(j)
    for m, js in by_modality.items():
        try:
            emb = state.retriever.embedder(m)
        except (ValueError, FileNotFoundError, OSError) as e:
            raise OpenAIError(400, f"{m} inputs: {e}", param="model") from None
        try:
            if m == "text":
                texts = [str(routed[j][1]) for j in js]
                tokens += _tokens(emb, texts)
                vecs = emb.embed(texts, batch_size=min(len(texts), 64))  # [B, E]
            else:
                with tempfile.TemporaryDirectory(prefix="anyalign-v1-") as d:
                    paths = []
                    for j in js:
                        path = Path(d) / f"input{j}{routed[j][2]}"
                        path.write_bytes(routed[j][1])  # type: ignore[arg-type]
                        paths.append(str(path))
                    vecs = emb.embed(paths, batch_size=min(len(paths), 32))
        except (ValueError, InputError, FileNotFoundError) as e:
            msg = re.sub(r"\S*anyalign-v1-\S*/input(\d+)\S*", r"input[\1]", str(e))  # no server paths
            raise OpenAIError(400, msg, param="input") from None
        for row, j in enumerate(js):
            vectors[j] = np.asarray(vecs[row], dtype=np.float32)
    data = []
    for i, v in enumerate(vectors):
        value: Any = base64.b64encode(v.astype("<f4").tobytes()).decode() \
            if req.encoding_format == "base64" else v.tolist()  # type: ignore[union-attr]
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def add_openai_routes(app: FastAPI, served: Any) -> None:
    """Register `/v1/embeddings` and `/v1/models` on `app`."""

    @app.post("/v1/embeddings", tags=["openai"])
    async def embeddings(req: EmbeddingRequest) -> dict[str, Any]:
        """OpenAI-compatible embeddings of text or media (base64 / data URLs) in the space."""
        return await run_in_threadpool(embed, served, req)

    @app.get("/v1/models", tags=["openai"])
    def models() -> dict[str, Any]:
        """The models: the space and each query modality."""
        return {"object": "list", "data": list_models(served.current())}

    @app.get("/v1/models/{model_id}", tags=["openai"])
    def model(model_id: str) -> dict[str, Any]:
        """One model."""
        for m in list_models(served.current()):
            if m["id"] == model_id:
                return m
        raise HTTPException(404, f"model {model_id!r} does not exist here")


__all__ = ["EmbeddingRequest", "OpenAIError", "add_openai_routes", "error_payload"]
