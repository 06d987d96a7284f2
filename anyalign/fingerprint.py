"""One content identity for weights and other inputs: every cache and resume check keys on `source_fingerprint`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def source_fingerprint(source: str | os.PathLike | None, *, max_files: int = 2000) -> str | None:
    """A hex string that changes when the files behind `source` change: each file's relative name, size, mtime (ns)
    and inode, so a file replaced at the same path changes it; a hub id or tag is its own identity."""
    if source is None:
        return None
    path = Path(source).expanduser()
    if not path.exists():
        return hashlib.sha1(f"id:{source}".encode()).hexdigest()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())[:max_files]
    h = hashlib.sha1(str(path.resolve()).encode())
    for f in files:
        st = f.stat()
        name = f.name if f == path else f.relative_to(path).as_posix()
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino};".encode())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (checkpoint manifests, shared projector references)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = ["file_sha256", "source_fingerprint"]
