"""Frozen text-anchor embeddings computed once into an on-disk table keyed by caption (SQLite).

Training against a frozen text anchor needs the embedding of every caption it meets. Keeping them all in
memory stops working at a few hundred thousand captions, and re-encoding on a cache miss makes steps several times
slower. `TextEmbeddingTable` stores each caption's L2-normalised embedding once, in a SQLite file keyed by the
caption text under a folder named by the anchor's fingerprint, so later runs (and resumed ones) reuse it. New
captions are encoded in length-sorted batches (little padding); values never change once written, which keeps
resumed runs bit-exact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: captions looked up / inserted per SQL statement (SQLite's default variable limit is 32766)
_SQL_CHUNK = 900


def text_cache_root() -> Path:
    """`$ANYALIGN_CACHE/text-embeddings`, else `~/.cache/anyalign/text-embeddings`."""
    root = os.environ.get("ANYALIGN_CACHE") or Path.home() / ".cache" / "anyalign"
    return Path(root) / "text-embeddings"


def anchor_fingerprint(spec: dict[str, Any]) -> str:
    """A short stable hash of an anchor's description (encoder, weights, options) naming its table."""
    pretrained = spec.get("pretrained")
    if pretrained and Path(str(pretrained)).exists():  # a local folder/file: include its size and mtime
        p = Path(str(pretrained))
        st = p.stat()
        spec = {**spec, "_weights": [str(p.resolve()), st.st_size, int(st.st_mtime)]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TextEmbeddingTable:
    """caption -> float32 embedding `[E]`, stored in `folder/table.sqlite` (safe for several processes)."""

    def __init__(self, folder: str | os.PathLike, encode: Callable[[list[str]], torch.Tensor], *,
                 batch_size: int = 256) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "table.sqlite"
        self.encode = encode
        self.batch_size = batch_size
        self.dim: int | None = None
        self._db = sqlite3.connect(self.path, timeout=600, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # lookups read pages through mmap and keep hot ones cached (a step's 32 captions hit random pages)
        self._db.execute("PRAGMA mmap_size=2147483648")
        self._db.execute("PRAGMA cache_size=-262144")
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (caption TEXT PRIMARY KEY, dim INTEGER, vec BLOB) "
                         "WITHOUT ROWID")

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def lookup(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Embeddings of those `texts` the table holds (missing ones are absent from the result)."""
        out: dict[str, torch.Tensor] = {}
        uniq = sorted(dict.fromkeys(texts))  # B-tree lookups in key order touch each page once
        for i in range(0, len(uniq), _SQL_CHUNK):
            part = uniq[i:i + _SQL_CHUNK]
            rows = self._db.execute(f"SELECT caption, vec FROM emb WHERE caption IN ({','.join('?' * len(part))})",
                                    part).fetchall()
            for caption, blob in rows:
                out[caption] = torch.from_numpy(np.frombuffer(blob, dtype=np.float32).copy())
        return out

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        """`[N, E]` embeddings of `texts` (in order), encoding and storing the missing ones first."""
        found = self.lookup(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            found.update(self._encode_and_store(missing))
        return torch.stack([found[t] for t in texts]) if texts else torch.zeros(0, self.dim or 0)

    def add(self, texts: Iterable[str], *, chunk: int = 50_000, progress: bool = False) -> int:
        """Make sure every text is in the table: read in chunks of `chunk` (bounded memory), encode the missing
        ones in length-sorted batches. Returns how many were encoded now."""
        from tqdm.auto import tqdm

        added = 0
        buf: dict[str, None] = {}
        bar = tqdm(desc="text-anchor cache", unit="caption", disable=not progress)

        def flush() -> int:
            have = self.lookup(list(buf))
            todo = [t for t in buf if t not in have]
            if todo:
                self._encode_and_store(todo, bar=bar)
            buf.clear()
            return len(todo)

        for t in texts:
            buf[t] = None
            if len(buf) >= chunk:
                added += flush()
        if buf:
            added += flush()
        bar.close()
        return added

    def _encode_and_store(self, texts: list[str], bar: Any = None) -> dict[str, torch.Tensor]:
        ordered = sorted(set(texts), key=lambda t: (len(t), t))  # length-sorted: little padding, fixed batches
        out: dict[str, torch.Tensor] = {}
        for i in range(0, len(ordered), self.batch_size):
            part = ordered[i:i + self.batch_size]
            emb = torch.nn.functional.normalize(self.encode(part).float(), dim=-1).cpu()  # [n, E]
            self.dim = int(emb.shape[1])
            # INSERT OR IGNORE: a value, once written (by any process), is never replaced
            self._db.executemany("INSERT OR IGNORE INTO emb VALUES (?, ?, ?)",
                                 [(t, self.dim, e.numpy().tobytes()) for t, e in zip(part, emb)])
            if bar is not None:
                bar.update(len(part))
        stored = self.lookup(ordered)  # what the table holds (another process may have written first)
        out.update(stored)
        return out

    def close(self) -> None:
        self._db.close()


def table_for_anchor(spec: dict[str, Any], encoder: Any, *, root: str | os.PathLike | None = None,
                     batch_size: int = 256) -> TextEmbeddingTable:
    """The table of one frozen text anchor (`spec`: its JSON description; `encoder(texts).pooled`)."""
    folder = Path(root) if root is not None else text_cache_root()
    folder = folder / anchor_fingerprint(spec)
    folder.mkdir(parents=True, exist_ok=True)
    desc = folder / "anchor.json"
    if not desc.is_file():
        from ..io import write_json

        write_json(desc, spec)

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        return encoder(texts).pooled

    return TextEmbeddingTable(folder, encode, batch_size=batch_size)


__all__ = ["TextEmbeddingTable", "anchor_fingerprint", "table_for_anchor", "text_cache_root"]
