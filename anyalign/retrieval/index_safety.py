"""Index writers' safety: the folder layout, the writer lock, output ownership, staging left by killed writers,
and the checks of user values (k, target recall, faiss factory strings) made before faiss sees them.

One writer at a time holds `.NAME.lock` beside the index folder (beside, not inside: the folder is swapped
atomically), waiting for another or failing after `lock_timeout` with `IndexBusyError`; an existing path that is
not an anyalign index is replaced only with `overwrite=True`. faiss aborts, crashes or hangs on some factory
strings (`HNSW0`, `PQ4x0`, `NSG0` ...): `check_factory` refuses them with one line instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as LockTimeout

from ..io import check_replaceable

logger = logging.getLogger(__name__)

INDEX_NAME = "index.faiss"
CONFIG_NAME = "anyalign_index.json"
IVFDATA_NAME = "index.ivfdata"
# what an index folder holds (a regex): only a folder of these (or an empty one) is replaced without --overwrite
OWN_FILES = r"anyalign_index\.json|index\.faiss|index\.ivfdata|metadata\.sqlite(-journal|-wal|-shm)?|vectors\.f(16|32)"


class IndexBusyError(TimeoutError, ValueError):
    """Another process is writing the index and did not finish within the lock timeout."""


# --- input checks ------------------------------------------------------------------------------------------
def check_k(k: int, what: str = "k") -> int:
    """`k` as an int >= 1, else a one-line error."""
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {k!r}")
    return int(k)


def check_target_recall(target: float) -> float:
    """A recall target in (0, 1], else a one-line error."""
    t = float(target)
    if not 0.0 < t <= 1.0 or t != t:
        raise ValueError(f"target recall must be in (0, 1], got {target!r}")
    return t

def clean_staging(index_dir: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of `index_dir` left beside it (`.NAME.*.tmp` staging copies, `.NAME.old-PID`
    folders being swapped out); call it holding the writer lock. Returns the removed paths."""
    p = Path(os.path.abspath(index_dir))
    if not p.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(p.name)}\.(.+\.tmp|old-\d+)")
    removed = []
    for q in p.parent.iterdir():
        if pattern.fullmatch(q.name):
            logger.warning("%s: removing %s left by an interrupted writer", index_dir, q.name)
            if q.is_dir() and not q.is_symlink():
                shutil.rmtree(q, ignore_errors=True)
            else:
                q.unlink(missing_ok=True)
            removed.append(q)
    return removed


_GRAPH = re.compile(r"(HNSW|NSG)(\d+)")
_PQ_BITS = re.compile(r"PQ\d+x(\d+)")
MAX_FACTORY_INT = 1 << 24


def check_factory(factory: str, dim: int) -> str:
    """A faiss factory string whose numbers faiss can take (faiss aborts, crashes or hangs on some), else a
    one-line error; the string is returned unchanged."""
    if not isinstance(factory, str) or not factory.strip() or len(factory) > 200 or not factory.isascii():
        raise ValueError(f"faiss factory string {factory!r}: expected e.g. Flat, HNSW32,Flat, IVF1024,Flat")
    if "NSG" in factory:
        raise ValueError(f"faiss factory {factory!r}: NSG graphs are not supported (use HNSW32,Flat)")
    for m in _GRAPH.finditer(factory):
        if not 2 <= int(m.group(2)) <= 512:
            raise ValueError(f"faiss factory {factory!r}: {m.group(1)} needs 2..512 neighbours per node, got "
                             f"{m.group(2)} (e.g. {m.group(1)}32)")
    for m in _PQ_BITS.finditer(factory):
        if not 1 <= int(m.group(1)) <= 16:
            raise ValueError(f"faiss factory {factory!r}: PQ codes take 1..16 bits, got {m.group(1)}")
    for m in re.finditer(r"\d+", factory):
        if not 1 <= int(m.group()) <= MAX_FACTORY_INT:
            raise ValueError(f"faiss factory {factory!r}: {m.group()} is out of range (every number must be in "
                             f"1..{MAX_FACTORY_INT})")
    return factory


# --- writer lock and output safety -------------------------------------------------------------------------
def lock_path(index_dir: str | os.PathLike) -> Path:
    """The writer lock of an index folder: `.NAME.lock` beside it (the folder itself is swapped atomically)."""
    p = Path(os.path.abspath(index_dir))
    return p.parent / f".{p.name}.lock"


@contextlib.contextmanager
def writer_lock(index_dir: str | os.PathLike, timeout: float | None = None) -> Iterator[None]:
    """Hold the writer lock of `index_dir`: wait for another writer (forever, or `timeout` seconds); a lock file
    that cannot be created fails at once (filelock would retry it forever). Staging left by killed writers of this
    index is removed once the lock is held."""
    path = lock_path(index_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
    except OSError as e:
        raise IndexBusyError(f"{index_dir}: cannot create the writer lock {path} ({e.strerror}); check the "
                             "folder's permissions") from None
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except LockTimeout:
        logger.warning("%s: another process is writing this index; waiting%s", index_dir,
                       "" if timeout is None else f" up to {timeout:g}s")
        try:
            lock.acquire(timeout=-1 if timeout is None else max(float(timeout), 0.0))
        except LockTimeout:
            raise IndexBusyError(f"{index_dir}: another process is writing this index (lock {path} held for more "
                                 f"than {timeout:g}s); retry later or raise --lock-timeout") from None
    try:
        clean_staging(index_dir)
        yield
    finally:
        # unlinked while still held, so nothing is left beside the index: a waiter that then gets the old inode
        # sees it unlinked (filelock checks st_nlink) and retries on a fresh file
        path.unlink(missing_ok=True)
        lock.release()


def check_output(output: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Refuse to replace `output` unless it is absent, an empty folder, or an index folder of our own files
    (`io.check_replaceable`); with `overwrite`, a file in the way is removed first (atomic_path swaps folders)."""
    check_replaceable(output, marker=CONFIG_NAME, what="anyalign index", overwrite=overwrite,
                      marker_keys=("dim", "factory"), own=OWN_FILES)
    if overwrite and (Path(output).is_file() or Path(output).is_symlink()):
        logger.warning("%s: a file, not an index folder; replacing it (overwrite)", output)
        Path(output).unlink()


__all__ = ["CONFIG_NAME", "INDEX_NAME", "IVFDATA_NAME", "IndexBusyError", "OWN_FILES", "check_factory", "check_k",
           "check_output", "check_target_recall", "clean_staging", "lock_path", "writer_lock"]
