"""The server's HTML: the search page (package data, with a Content-Security-Policy allowing only its own inline
script and style) and `/docs`, a plain page describing the API from its OpenAPI schema (nothing from a CDN)."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parent.parent / "data" / "retrieval" / "index.html"  # package data
DOCS_STYLE = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#1d232b}"
              "h2{border-bottom:1px solid #dde;padding-bottom:4px}.m{font-weight:bold;color:#1d3557}"
              "pre{background:#f3f4f6;padding:8px;overflow:auto;font-size:13px}code{font-size:13px}")


def page_html(title: str = "anyalign search") -> str:
    """The search page with `title` filled in."""
    return PAGE.read_text().replace("{{TITLE}}", html.escape(title))


def csp(page: str) -> str:
    """A Content-Security-Policy allowing exactly the page's inline scripts and styles (by hash)."""
    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in found)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "img-src 'self' https: data:; media-src 'self' https:; connect-src 'self'; form-action 'self'; "
            "base-uri 'none'; frame-ancestors 'none'")


def _ref(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_ref(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"[{_ref(schema.get('items', {}))}]"
    return str(schema.get("type", "object"))


def docs_html(schema: dict[str, Any]) -> str:
    """`/docs`: every route with its summary, parameters and request body, then the body schemas."""
    e = html.escape
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(schema['info']['title'])} API"
           f"</title><style>{DOCS_STYLE}</style></head><body><h1>{e(schema['info']['title'])} API</h1>",
           "<p>The machine-readable schema: <a href=/openapi.json>/openapi.json</a>. With a token, send "
           "<code>Authorization: Bearer TOKEN</code>. Errors are <code>{\"error\": \"...\"}</code>, in OpenAI's "
           "shape under <code>/v1</code>.</p><h2>Routes</h2>"]
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            out.append(f"<h3><span class=m>{e(method.upper())}</span> <code>{e(path)}</code></h3>")
            text = op.get("description") or op.get("summary") or ""
            if text:
                out.append(f"<p>{e(text)}</p>")
            params = [f"<code>{e(p['name'])}</code> ({e(p.get('in', ''))}, {e(_ref(p.get('schema', {})))})"
                      for p in op.get("parameters", [])]
            if params:
                out.append(f"<p>Parameters: {', '.join(params)}</p>")
            for kind, body in op.get("requestBody", {}).get("content", {}).items():
                out.append(f"<p>Body ({e(kind)}): <code>{e(_ref(body.get('schema', {})))}</code></p>")
    schemas = schema.get("components", {}).get("schemas", {})
    if schemas:
        out.append("<h2>Schemas</h2>")
        for name, s in schemas.items():
            if name in ("HTTPValidationError", "ValidationError"):
                continue
            props = {k: {x: v[x] for x in ("type", "anyOf", "default", "maximum", "minimum", "maxLength") if x in v}
                     for k, v in s.get("properties", {}).items()}
            out.append(f"<h3><code>{e(name)}</code></h3><pre>{e(json.dumps(props, indent=1))}</pre>")
    out.append("</body></html>")
    return "\n".join(out)


__all__ = ["csp", "docs_html", "page_html"]
