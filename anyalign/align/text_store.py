"""The storage pieces of the text-anchor table (`text_cache.py`): a part's committed rows (embeddings read with
`pread`, caption texts and offsets memory-mapped) and the in-memory hash index (caption hash -> location)."""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROW_BITS = 32  # a location is `part << ROW_BITS | row`
ROW_MASK = (1 << ROW_BITS) - 1


def caption_hash(caption: bytes) -> bytes:
    """The 8-byte key of a UTF-8 caption (collisions are caught by comparing the stored text)."""
    return hashlib.blake2b(caption, digest_size=8).digest()


def caption_hashes(captions: Sequence[bytes]) -> np.ndarray:
    """The keys of many captions as one uint64 array."""
    return np.frombuffer(b"".join(map(caption_hash, captions)), dtype="<u8").astype(np.uint64)


def utf8(text: str) -> bytes:
    """A caption's stored bytes (lone surrogates kept, so every Python string round-trips)."""
    return text.encode("utf-8", "surrogatepass")


class Part:
    """One part's committed rows: embeddings read with `pread`, caption texts and offsets memory-mapped."""

    def __init__(self, stem: Path, dim: int) -> None:
        self.stem, self.row_bytes = stem, dim * 4
        self.rows = self.text_bytes = 0
        # pread, not mmap: a random row of a big file costs one syscall, not a page fault (each mapping tens of
        # pages) on its first touch, so a lookup costs the same at 1k or 1M rows from the first epoch on
        self.fd = os.open(stem.with_suffix(".emb"), os.O_RDONLY)
        self._maps: list[mmap.mmap | bytes] = []
        self.off, self.txt = np.zeros(1, dtype="<u8"), b""

    def grow(self, rows: int, text_bytes: int) -> None:
        """Map the rows committed now (the files only ever grow)."""
        if os.fstat(self.fd).st_size < rows * self.row_bytes:
            raise RuntimeError(f"{self.stem}.emb: shorter than the text table's manifest says (lost on a crash?)")
        maps = [self._map(self.stem.with_suffix(".off"), (rows + 1) * 8),
                self._map(self.stem.with_suffix(".txt"), text_bytes)]
        self._close_maps()
        self._maps, self.rows, self.text_bytes = maps, rows, text_bytes
        self.off, self.txt = np.frombuffer(maps[0], dtype="<u8"), maps[1]  # plain arrays: np.memmap is slower

    @staticmethod
    def _map(path: Path, size: int) -> mmap.mmap | bytes:
        if not size:
            return b""
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < size:
                raise RuntimeError(f"{path}: shorter than the text table's manifest says (lost on a crash?)")
            return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)

    def read(self, rows: list[int], out: np.ndarray) -> None:
        """Rows `rows` of the embeddings into `out` (`[len(rows), E]`, C-contiguous)."""
        for j, r in enumerate(rows):
            if os.preadv(self.fd, [out[j]], r * self.row_bytes) != self.row_bytes:
                raise RuntimeError(f"{self.stem}.emb: short read at row {r}")

    def _close_maps(self) -> None:
        self.off, self.txt = np.zeros(1, dtype="<u8"), b""
        for m in self._maps:
            if isinstance(m, mmap.mmap):
                try:
                    m.close()
                except BufferError:  # an array still views it: the map goes with that array
                    pass

    def close(self) -> None:
        self._close_maps()
        os.close(self.fd)


class HashIndex:
    """64-bit caption hash -> location (`part << 32 | row`): an open-addressing hash table in one numpy array.

    One probe (rarely a few, in the same cache line) per caption, where a binary search over a million sorted hashes
    takes 20 dependent cache misses: lookups cost the same at any table size. 16 bytes a slot, load <= 0.7."""

    def __init__(self) -> None:
        self.slots = np.full((1024, 2), -1, dtype=np.int64)  # [hash, location]; location -1: empty
        self.n = 0

    def insert(self, keys: np.ndarray, loc: np.ndarray) -> None:
        if self.n + len(keys) > 0.7 * len(self.slots):
            used = self.slots[self.slots[:, 1] >= 0]
            cap = 1 << max(10, int(1.5 * (self.n + len(keys))).bit_length())  # load 1/3-2/3
            self.slots = np.full((cap, 2), -1, dtype=np.int64)
            self._place(used[:, 0], used[:, 1])
        self._place(keys, loc)
        self.n += len(keys)

    def _place(self, keys: np.ndarray, loc: np.ndarray) -> None:
        mask = len(self.slots) - 1
        pos = keys & mask
        todo = np.arange(len(keys))
        while todo.size:  # linear probing, vectorised: where several want one free slot, the first gets it
            p = pos[todo]
            free = np.flatnonzero(self.slots[p, 1] < 0)
            _, first = np.unique(p[free], return_index=True)
            win = todo[free[first]]
            self.slots[pos[win], 0], self.slots[pos[win], 1] = keys[win], loc[win]
            placed = np.zeros(len(keys), dtype=bool)
            placed[win] = True
            todo = todo[~placed[todo]]
            pos[todo] = (pos[todo] + 1) & mask


__all__ = ["ROW_BITS", "ROW_MASK", "HashIndex", "Part", "caption_hash", "caption_hashes", "utf8"]
