"""A small self-contained HTML report (quickstart, evaluations): sections of text, tables, figures, media.

Media are copied next to the page (relative links), so the folder can be zipped or served as is.
"""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import atomic_path

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;line-height:1.45}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}
th{background:#f4f4f4} .muted{color:#777} .figure img{max-width:100%;border:1px solid #eee}
.gallery{display:flex;flex-wrap:wrap;gap:.8rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.5rem;width:200px}
.card img{width:100%;height:130px;object-fit:cover} .card audio,.card video{width:100%}
.chat{background:#f7f7fb;border-radius:6px;padding:.6rem 1rem;white-space:pre-wrap}
.metric{display:inline-block;margin-right:1.5rem;font-size:1.2rem} .metric b{font-size:1.6rem}
"""


@dataclass
class Report:
    """Accumulates sections, then writes `index.html` (and copied media) atomically into a folder."""

    title: str
    subtitle: str = ""
    _parts: list[str] = field(default_factory=list)
    _media: dict[str, Path] = field(default_factory=dict)

    def heading(self, text: str) -> None:
        self._parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str, *, muted: bool = False) -> None:
        cls = ' class="muted"' if muted else ""
        self._parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def metrics(self, values: dict[str, str]) -> None:
        items = "".join(f'<span class="metric">{html.escape(k)}: <b>{html.escape(v)}</b></span>'
                        for k, v in values.items())
        self._parts.append(f"<p>{items}</p>")

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        self._parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def figure(self, path: str | Path, caption: str = "") -> None:
        rel = self._add_media(path)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(f'<figure class="figure"><img src="{rel}" alt="{html.escape(caption)}">{cap}</figure>')

    def gallery(self, cards: list[dict[str, Any]]) -> None:
        """Cards with `title`, optional `image`/`audio`/`video` file, and `lines` of text."""
        out = []
        for c in cards:
            media = ""
            if c.get("image"):
                media = f'<img src="{self._add_media(c["image"])}" alt="">'
            elif c.get("audio"):
                media = f'<audio controls src="{self._add_media(c["audio"])}"></audio>'
            elif c.get("video"):
                media = f'<video controls muted src="{self._add_media(c["video"])}"></video>'
            lines = "".join(f"<div>{html.escape(str(x))}</div>" for x in c.get("lines", []))
            out.append(f'<div class="card result"><b>{html.escape(str(c.get("title", "")))}</b>{media}{lines}</div>')
        self._parts.append(f'<div class="gallery">{"".join(out)}</div>')

    def chat(self, user: str, assistant: str) -> None:
        self._parts.append(f'<div class="chat"><b>User:</b> {html.escape(user)}\n'
                           f'<b>Assistant:</b> {html.escape(assistant)}</div>')

    def _add_media(self, path: str | Path) -> str:
        path = Path(path)
        name = f"media/{len(self._media):03d}-{path.name}"
        self._media[name] = path
        return name

    def write(self, folder: str | Path) -> Path:
        """Write the page and its media into `folder` (replaced atomically); returns the page path."""
        folder = Path(folder)
        with atomic_path(folder, is_dir=True) as tmp:
            (tmp / "media").mkdir()
            for rel, src in self._media.items():
                shutil.copy2(src, tmp / rel)
            sub = f"<p class='muted'>{html.escape(self.subtitle)}</p>" if self.subtitle else ""
            page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                    f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>{sub}"
                    + "\n".join(self._parts) + "</body></html>\n")
            (tmp / "index.html").write_text(page)
        return folder / "index.html"
