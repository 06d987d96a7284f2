"""The paraphrase file (`anyalign data paraphrase` writes it, `anyalign.align.captions` reads its kept rewrites)::

    {"format": "anyalign-paraphrases", "version": 1, "generator": {...}, "filter": {...}, "summary": {...},
     "entries": {"<class or caption>": {"sources": [...], "kept": [...], "dropped": [{"text", "reason", ...}]}}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT = "anyalign-paraphrases"
VERSION = 1


def read_paraphrase_file(path: str | os.PathLike) -> dict[str, Any]:
    """The whole paraphrase document, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: paraphrase file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON paraphrase file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: expected a paraphrase file with \"format\": \"{FORMAT}\" "
                         f"(written by `anyalign data paraphrase`)")
    if int(doc.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: paraphrase file version {doc['version']} is newer than this anyalign ({VERSION})")
    entries = doc.get("entries")
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: field 'entries': expected a mapping of class/caption -> {{kept: [...]}}")
    for k, e in entries.items():
        if not isinstance(e, dict) or not isinstance(e.get("kept", []), list) \
                or not all(isinstance(t, str) for t in e.get("kept", [])):
            raise ValueError(f"{path}: entries.{k}.kept: expected a list of sentences")
    return doc


def read_paraphrases(path: str | os.PathLike) -> dict[str, list[str]]:
    """Kept paraphrases per key (class name or original caption)."""
    return {k: list(e.get("kept", [])) for k, e in read_paraphrase_file(path)["entries"].items()}


__all__ = ["FORMAT", "VERSION", "read_paraphrase_file", "read_paraphrases"]
