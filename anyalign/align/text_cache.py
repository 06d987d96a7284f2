"""Frozen text-anchor embeddings computed once into an on-disk table keyed by caption, shared by every run.

Training against a frozen text anchor needs the embedding of every caption it meets; holding them all in memory
stops working at a few hundred thousand captions, and re-encoding on a miss makes steps several times slower. The
table's folder (named by the anchor's fingerprint) holds append-only files: `vectors.f32` (L2-normalised float32
rows, read with `pread`), `texts.bin` (the captions' UTF-8 bytes, memory-mapped) and `ends.u64` (where each caption
ends); `table.json`, replaced atomically, says how many rows are committed, so a crashed writer's leftovers are never
read. Lookups search a sorted in-memory array of 64-bit caption hashes (16 bytes a caption) and compare the stored
text, so a hash collision never returns another caption's vector. Writers are serialised by `flock`; under it a
writer skips captions another process stored first, so values never change once written (bit-exact resume).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import mmap
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..encoders.spec import EncoderSpec
from ..io import cache_dir, write_json

_FORMAT = 2
#: rows encoded between two writes (bounds memory while adding millions of captions)
_WRITE_ROWS = 8192


def caption_hash(caption: bytes) -> bytes:
    """The 8-byte key of a UTF-8 caption (collisions are caught by comparing the stored text)."""
    return hashlib.blake2b(caption, digest_size=8).digest()


def utf8(text: str) -> bytes:
    """A caption's stored bytes (lone surrogates kept, so every Python string round-trips)."""
    return text.encode("utf-8", "surrogatepass")


def text_cache_root() -> Path:
    """`$ANYALIGN_CACHE/text-embeddings`, else `~/.cache/anyalign/text-embeddings`."""
    return cache_dir("text-embeddings")


def anchor_fingerprint(spec: EncoderSpec) -> str:
    """A short stable name for an anchor's table: the encoder's spec and the content identity of its weight files
    (`EncoderSpec.fingerprint`), so a text model replaced at the same path gets a new table."""
    ident = spec.fingerprint() or hashlib.sha1(f"random|{spec.key()}".encode()).hexdigest()
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


class TextEmbeddingTable:
    """caption -> float32 embedding `[E]` stored under `folder` (several processes may read and write at once)."""

    def __init__(self, folder: str | os.PathLike, encode: Callable[[list[str]], torch.Tensor], *,
                 batch_size: int = 256) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.encode, self.batch_size = encode, batch_size
        self.dim: int | None = None
        self.rows = 0
        self._mutex = threading.RLock()  # flock does not exclude threads sharing one descriptor
        self._lock_fd: int | None = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._vec_fd: int | None = None
        self._keys = np.empty(0, dtype=np.int64)  # sorted caption hashes
        self._rows = np.empty(0, dtype=np.int64)  # the row of each sorted hash
        self._off = np.zeros(1, dtype=np.int64)  # [rows + 1] caption start/end offsets in texts.bin
        self._texts: mmap.mmap | bytes = b""
        self._refresh()

    def __len__(self) -> int:
        with self._mutex:
            self._refresh()
            return self.rows

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        """`[N, E]` embeddings of `texts` (in order), encoding and storing the missing ones first."""
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.dim or 0)
        with self._mutex:
            keys = list(dict.fromkeys(texts))
            loc = self._find_fresh([utf8(t) for t in keys])
            miss = np.flatnonzero(loc < 0)
            if miss.size:
                loc[miss] = self._encode_and_store([keys[i] for i in miss.tolist()])
            vec = self._vectors(loc)
        if len(keys) < len(texts):
            pos = {t: i for i, t in enumerate(keys)}
            vec = vec[[pos[t] for t in texts]]
        return torch.from_numpy(vec)

    def add(self, texts: Iterable[str], *, chunk: int = 50_000, progress: bool = False) -> int:
        """Make sure every text is in the table: read in chunks of `chunk` (bounded memory), encode the missing
        ones in length-sorted batches. Returns how many were encoded now."""
        from tqdm.auto import tqdm

        added, buf = 0, {}
        bar = tqdm(desc="text-anchor cache", unit="caption", disable=not progress)
        for t in texts:
            buf[t] = None
            if len(buf) >= chunk:
                added += self._add(list(buf), bar)
                buf.clear()
        if buf:
            added += self._add(list(buf), bar)
        bar.close()
        return added

    def close(self) -> None:
        with self._mutex:
            for fd in (self._lock_fd, self._vec_fd):
                if fd is not None:
                    os.close(fd)
            self._lock_fd = self._vec_fd = None

    # --- reading --------------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Catch up with the committed rows on disk: index their hashes, map their texts."""
        try:
            man = json.loads((self.folder / "table.json").read_text())
        except FileNotFoundError:
            return
        if man["format"] != _FORMAT:
            raise RuntimeError(f"{self.folder}: text table format {man['format']}, this anyalign reads {_FORMAT}")
        have, rows = self.rows, man["rows"]
        if rows == have:
            return
        if rows < have:
            raise RuntimeError(f"{self.folder}: the text table shrank (table.json edited by hand?)")
        for name, size in (("vectors.f32", rows * man["dim"] * 4), ("ends.u64", rows * 8),
                           ("texts.bin", man["text_bytes"])):
            if (self.folder / name).stat().st_size < size:
                raise RuntimeError(f"{self.folder / name}: shorter than table.json says (lost on a crash?)")
        ends = np.fromfile(self.folder / "ends.u64", dtype="<u8", count=rows - have, offset=8 * have)
        self._off = np.concatenate([self._off, ends.astype(np.int64)])
        with open(self.folder / "texts.bin", "rb") as f:
            self._texts = mmap.mmap(f.fileno(), man["text_bytes"], access=mmap.ACCESS_READ) if man["text_bytes"] \
                else b""
        new = self._hashes([self._texts[a:b] for a, b in zip(self._off[have:-1].tolist(), ends.tolist())])
        order = np.argsort(new, kind="stable")
        at = np.searchsorted(self._keys, new[order])
        self._keys = np.insert(self._keys, at, new[order])
        self._rows = np.insert(self._rows, at, have + order)
        if self._vec_fd is None:
            self._vec_fd = os.open(self.folder / "vectors.f32", os.O_RDONLY)
        self.rows, self.dim = rows, man["dim"]

    @staticmethod
    def _hashes(enc: Sequence[bytes]) -> np.ndarray:
        return np.frombuffer(b"".join(map(caption_hash, enc)), dtype="<i8")

    def _find(self, enc: Sequence[bytes]) -> np.ndarray:
        """Rows of UTF-8 captions in what this process has indexed (-1: absent)."""
        loc = np.full(len(enc), -1, dtype=np.int64)
        if not enc or not self.rows:
            return loc
        keys = self._hashes(enc)
        lo, hi = np.searchsorted(self._keys, keys, "left"), np.searchsorted(self._keys, keys, "right")
        for i in np.flatnonzero(hi > lo).tolist():
            for r in self._rows[lo[i]:hi[i]].tolist():  # the hash matches: the stored text must too
                if self._texts[self._off[r]:self._off[r + 1]] == enc[i]:
                    loc[i] = r
                    break
        return loc

    def _find_fresh(self, enc: Sequence[bytes]) -> np.ndarray:
        """`_find`, re-reading table.json on a miss (another process may just have stored those captions)."""
        loc = self._find(enc)
        miss = np.flatnonzero(loc < 0)
        if miss.size:
            have = self.rows
            self._refresh()
            if self.rows != have:
                loc[miss] = self._find([enc[i] for i in miss.tolist()])
        return loc

    def _vectors(self, loc: np.ndarray) -> np.ndarray:
        """`[n, E]` float32 rows at `loc` (all present); one `pread` a row, so a lookup costs the same at 1k or
        millions of rows (a memory map pays a page fault per row on first touch)."""
        out = np.empty((len(loc), self.dim or 0), dtype=np.float32)
        for j, r in enumerate(loc.tolist()):
            if os.preadv(self._vec_fd, [out[j]], r * out.shape[1] * 4) != out.shape[1] * 4:
                raise RuntimeError(f"{self.folder}/vectors.f32: short read at row {r}")
        return out

    # --- writing --------------------------------------------------------------------------------------------
    def _add(self, keys: list[str], bar: Any) -> int:
        with self._mutex:
            loc = self._find_fresh([utf8(t) for t in keys])
            todo = [keys[i] for i in np.flatnonzero(loc < 0).tolist()]
            if todo:
                self._encode_and_store(todo, bar=bar)
        return len(todo)

    def _encode_and_store(self, texts: list[str], bar: Any = None) -> np.ndarray:
        """Encode `texts` in length-sorted batches and store them; their rows (in `texts` order)."""
        ordered = sorted(set(texts), key=lambda t: (len(t), t))  # length-sorted: little padding, fixed batches
        pend_t: list[str] = []
        pend_v: list[np.ndarray] = []
        for i in range(0, len(ordered), self.batch_size):
            part = ordered[i:i + self.batch_size]
            emb = torch.nn.functional.normalize(self.encode(part).float(), dim=-1).cpu()  # [n, E]
            pend_t += part
            pend_v.append(emb.numpy())
            if len(pend_t) >= _WRITE_ROWS or i + self.batch_size >= len(ordered):
                self._store(pend_t, np.concatenate(pend_v))
                pend_t, pend_v = [], []
            if bar is not None:
                bar.update(len(part))
        loc = self._find([utf8(t) for t in texts])  # what the table holds (another process may have written first)
        if (loc < 0).any():
            raise RuntimeError(f"{self.folder}: stored captions not found again")
        return loc

    def _store(self, texts: list[str], vecs: np.ndarray) -> None:
        """Append the captions the table does not hold yet, under the writer lock, then commit them all at once."""
        if self._lock_fd is None:
            raise RuntimeError(f"{self.folder}: the text table is closed")
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._refresh()
            enc = [utf8(t) for t in texts]
            keep = np.flatnonzero(self._find(enc) < 0)  # another process stored some first: theirs stay
            enc, vecs = [enc[i] for i in keep.tolist()], np.ascontiguousarray(vecs[keep], dtype=np.float32)
            if not enc:
                return
            dim = int(vecs.shape[1])
            if self.dim is not None and self.dim != dim:
                raise ValueError(f"{self.folder}: the encoder gave {dim}-d embeddings, the table holds {self.dim}-d")
            ends = int(self._off[-1]) + np.cumsum([len(e) for e in enc], dtype=np.int64)
            for name, at, data in (("vectors.f32", self.rows * dim * 4, vecs.tobytes()),
                                   ("ends.u64", self.rows * 8, ends.astype("<u8").tobytes()),
                                   ("texts.bin", int(self._off[-1]), b"".join(enc))):
                fd = os.open(self.folder / name, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    os.ftruncate(fd, at)  # cut a crashed writer's leftovers
                    view, done = memoryview(data), 0
                    while done < len(view):
                        done += os.pwrite(fd, view[done:], at + done)
                    os.fdatasync(fd)  # on disk before table.json says these rows exist
                finally:
                    os.close(fd)
            man = {"format": _FORMAT, "dim": dim, "rows": self.rows + len(enc), "text_bytes": int(ends[-1])}
            tmp = self.folder / f"table.json.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(json.dumps(man))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / "table.json")
            self._refresh()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)


def table_for_anchor(spec: EncoderSpec, encoder: Any, *, root: str | os.PathLike | None = None,
                     batch_size: int = 256) -> TextEmbeddingTable:
    """The table of one frozen text anchor (`spec`: its encoder spec; `encoder(texts).pooled`)."""
    folder = (Path(root) if root is not None else text_cache_root()) / anchor_fingerprint(spec)
    if not (folder / "anchor.json").is_file():
        write_json(folder / "anchor.json", spec.to_dict())

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        return encoder(texts).pooled

    return TextEmbeddingTable(folder, encode, batch_size=batch_size)


__all__ = ["TextEmbeddingTable", "anchor_fingerprint", "table_for_anchor", "text_cache_root"]
