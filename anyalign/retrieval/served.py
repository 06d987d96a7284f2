"""The index a server answers from: one loaded state of the index folder, reloaded atomically when the folder
changes (after the writer's lock is released), and the media files that state may serve."""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .index_safety import lock_path
from .retriever import Retriever

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


@contextmanager
def _shared_lock(index_dir: Path) -> Iterator[bool]:
    """Hold a shared flock on the writers' lock file (`index_safety.lock_path`) while reading; yields False when a
    writer holds it."""
    try:
        import fcntl

        fd = os.open(lock_path(index_dir), os.O_RDONLY)
    except (ImportError, OSError):  # no writer now, or no flock (Windows: the writers' folder swap is atomic)
        yield True
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)  # closing releases the flock


def _collapse(folders: Sequence[Path]) -> tuple[Path, ...]:
    kept: set[Path] = set()
    for f in sorted(set(folders), key=lambda p: len(p.parts)):
        if not any(p in kept for p in f.parents):
            kept.add(f)
    return tuple(sorted(kept))


def derive_media_roots(retriever: Retriever) -> tuple[Path, ...]:
    """Corpus roots: the folders holding the items' local media files, as the metadata records them (`anyalign
    embed` records them resolved; they are not resolved again, so a folder made a symlink later leads nowhere)."""
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
        self.state = self._state(retriever, self._signature(retriever), 0)

    def _signature(self, retriever: Retriever) -> tuple:
        return _signature([self.index_dir, *(p.folder for p in retriever.parts if p.folder != self.index_dir)])

    def _state(self, retriever: Retriever, sig: tuple, generation: int) -> ServedState:
        roots = self.explicit_roots if self.explicit_roots is not None else derive_media_roots(retriever)
        retriever.load_metadata()  # rows in memory (when they fit) before serving, not after two SQL lookups
        return ServedState(retriever, roots, sig, generation)

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
                    was = old.retriever.config.embedders
                    for m, emb in old.retriever._embedders.items():  # loaded models, unless the index changed how
                        if was.get(m) in (None, new.config.embedders.get(m)):
                            new.set_embedder(m, emb)
                    if [p.folder for p in new.parts] != [p.folder for p in old.retriever.parts]:
                        sig = self._signature(new)
                    state = self._state(new, sig, old.generation + 1)
                except (OSError, ValueError, RuntimeError) as e:
                    self._failed = sig
                    logger.warning("could not reload %s (still serving the previous state): %s", self.index_dir, e)
                    if force:
                        raise
                    return False
            self.state, self._failed = state, None
            logger.info("reloaded %s (generation %d, %d items)", self.index_dir, state.generation, len(new))
            return True


__all__ = ["MEDIA_CONTENT_TYPES", "MEDIA_TYPES", "ServedIndex", "ServedState", "derive_media_roots", "media_file"]
