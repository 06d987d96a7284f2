"""Per-vector metadata in SQLite, keyed by vector id: source path/URL, caption, modality and any user fields.

SQLite (rather than parquet) because indexes take incremental adds and deletes. Rows of vectors that the
index cannot remove physically (HNSW) are kept and flagged `deleted`; searches filter them out.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

METADATA_NAME = "metadata.sqlite"
_COLUMNS = ("source", "caption", "modality")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    source TEXT,
    caption TEXT,
    modality TEXT,
    fields TEXT NOT NULL DEFAULT '{}',
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS items_source ON items(source);
"""


class MetadataStore:
    """Metadata rows of one index. `get(ids)` returns dicts (`id`, `source`, `caption`, `modality`, user fields)."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.path}: metadata database missing")
            uri = f"file:{self.path.resolve()}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self.db = sqlite3.connect(str(self.path), check_same_thread=False)
            self.db.executescript(_SCHEMA)
        self._lock = threading.Lock()  # one connection shared by server threads
        try:
            self.db.execute("SELECT id FROM items LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path}: not a readable metadata database ({e})") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def add(self, ids: Sequence[int] | np.ndarray, rows: Sequence[dict[str, Any]]) -> None:
        """Insert one row per id (an existing id is replaced)."""
        if len(ids) != len(rows):
            raise ValueError(f"{len(ids)} ids but {len(rows)} metadata rows")

        def values() -> Iterable[tuple[Any, ...]]:
            for i, row in zip(ids, rows):
                row = dict(row or {})
                cols = [row.pop(c, None) for c in _COLUMNS]
                cols = [None if v is None else str(v) for v in cols]
                yield (int(i), *cols, json.dumps(row, default=str))

        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO items (id, source, caption, modality, fields) "
                                "VALUES (?, ?, ?, ?, ?)", values())

    def get(self, ids: Sequence[int] | np.ndarray) -> list[dict[str, Any] | None]:
        """Rows for `ids` in the same order (None for unknown ids)."""
        ids = [int(i) for i in ids]
        found: dict[int, dict[str, Any]] = {}
        for lo in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[lo: lo + 900]
            q = f"SELECT id, source, caption, modality, fields, deleted FROM items WHERE id IN " \
                f"({','.join('?' * len(chunk))})"
            with self._lock:
                fetched = self.db.execute(q, chunk).fetchall()
            for i, source, caption, modality, fields, deleted in fetched:
                row = {"id": i, "source": source, "caption": caption, "modality": modality}
                row.update(json.loads(fields))
                if deleted:
                    row["deleted"] = True
                found[i] = row
        return [found.get(i) for i in ids]

    def ids_for_source(self, sources: Sequence[str]) -> list[int]:
        """Ids of live rows whose `source` is one of `sources`."""
        out: list[int] = []
        for s in sources:
            out += [r[0] for r in self.db.execute("SELECT id FROM items WHERE source = ? AND deleted = 0", (s,))]
        return out

    def delete(self, ids: Sequence[int], *, tombstone: bool = False) -> int:
        """Remove rows (or flag them deleted when the index keeps the vectors); returns how many changed."""
        ids = [int(i) for i in ids]
        n = 0
        with self.db:
            for lo in range(0, len(ids), 900):
                chunk = ids[lo: lo + 900]
                marks = ",".join("?" * len(chunk))
                if tombstone:
                    cur = self.db.execute(f"UPDATE items SET deleted = 1 WHERE deleted = 0 AND id IN ({marks})", chunk)
                else:
                    cur = self.db.execute(f"DELETE FROM items WHERE id IN ({marks})", chunk)
                n += cur.rowcount
        return n

    def field_values(self, name: str) -> dict[int, Any]:
        """id -> value of one column or user field, for live rows that have it."""
        expr = name if name in _COLUMNS else "json_extract(fields, ?)"
        args = () if name in _COLUMNS else (f'$."{name}"',)
        with self._lock:
            rows = self.db.execute(f"SELECT id, {expr} FROM items WHERE deleted = 0", args).fetchall()
        return {int(i): v for i, v in rows if v is not None}

    def deleted_ids(self) -> np.ndarray:
        """Ids flagged deleted (vectors still in the index) `[M]` int64."""
        return np.asarray([r[0] for r in self.db.execute("SELECT id FROM items WHERE deleted = 1")], dtype=np.int64)

    def count(self, *, live: bool = True) -> int:
        q = "SELECT COUNT(*) FROM items" + (" WHERE deleted = 0" if live else "")
        with self._lock:
            return int(self.db.execute(q).fetchone()[0])

    def max_id(self) -> int:
        """Largest id ever stored (-1 when empty)."""
        v = self.db.execute("SELECT MAX(id) FROM items").fetchone()[0]
        return -1 if v is None else int(v)

    def copy_from(self, other: str | os.PathLike) -> None:
        """Append all rows of another metadata database (ids must not collide)."""
        with self.db:
            self.db.execute("ATTACH DATABASE ? AS other", (str(other),))
        try:
            with self.db:
                self.db.execute("INSERT INTO items SELECT * FROM other.items")
        except sqlite3.IntegrityError as e:
            raise ValueError(f"{other}: vector ids collide with ones already merged ({e})") from None
        finally:
            self.db.execute("DETACH DATABASE other")


__all__ = ["METADATA_NAME", "MetadataStore"]
