"""Frozen text-anchor embeddings computed once into an on-disk, caption-keyed table of append-only files.

Training against a frozen text anchor needs the embedding of every caption it meets. Keeping them all in memory
stops working at a few hundred thousand captions, and re-encoding on a cache miss makes steps several times slower.
`TextEmbeddingTable` stores each caption's L2-normalised float32 embedding once, under a folder named by the anchor's
fingerprint, so later runs (and resumed ones) reuse it:

- storage: append-only part files (`part-K.emb` float32 rows, `.txt`/`.off` the caption texts, `.hash` a 64-bit
  blake2b of each caption); `manifest.json` (replaced atomically) says how many rows of each part are committed, so
  a crashed writer's partial rows are never read.
- lookups: an in-memory open-addressing hash table (hash -> row, under 50 bytes a caption) and one `pread` per
  row, so a lookup costs the same at 1k or millions of captions (SQLite's B-tree did not); the stored text of every
  hit is compared, so a hash collision can never return another caption's vector.
- writers: serialised by `flock` on `folder/lock`; under it a writer re-reads the manifest and skips captions
  another process stored first, so values never change once written (which keeps resumed runs bit-exact).
- misses: a lookup that misses re-reads the manifest first (another process may just have stored them); the rest
  are encoded in length-sorted batches (little padding) and written every `_WRITE_ROWS` rows (bounded memory).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..encoders.spec import EncoderSpec
from .text_store import ROW_BITS, ROW_MASK, HashIndex, Part, caption_hash, caption_hashes, utf8

logger = logging.getLogger(__name__)

_FORMAT = 1
#: rows per part (its files grow by appending up to this many rows, then the next part starts)
_PART_ROWS = 1 << 20
#: rows encoded between two writes (bounds memory while adding millions of captions)
_WRITE_ROWS = 8192
#: captions up to this many are looked up probe by probe in plain Python, more by the vectorised walk
_FEW = 64


def text_cache_root() -> Path:
    """`$ANYALIGN_CACHE/text-embeddings`, else `~/.cache/anyalign/text-embeddings`."""
    root = os.environ.get("ANYALIGN_CACHE") or Path.home() / ".cache" / "anyalign"
    return Path(root) / "text-embeddings"


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
        self.path = self.folder  # where the table lives (logged by the trainer)
        self.encode = encode
        self.batch_size = batch_size
        self.dim: int | None = None
        self._manifest_path = self.folder / "manifest.json"
        self._mutex = threading.RLock()  # flock does not exclude threads sharing one descriptor
        self._lock_fd: int | None = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._man: dict[str, Any] = self._empty()
        self._parts: list[Part] = []
        self._index = HashIndex()
        self._refresh()

    # --- public ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._mutex:
            self._refresh()
            return sum(p["rows"] for p in self._man["parts"])

    def lookup(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Embeddings of those `texts` the table holds (missing ones are absent from the result)."""
        with self._mutex:
            keys = list(dict.fromkeys(texts))
            loc = self._find_fresh([utf8(t) for t in keys])
            hit = np.flatnonzero(loc >= 0)
            vec = torch.from_numpy(self._vectors(loc[hit]))
            return {keys[i]: vec[j] for j, i in enumerate(hit.tolist())}

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        """`[N, E]` embeddings of `texts` (in order), encoding and storing the missing ones first."""
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.dim or 0)
        with self._mutex:
            keys = list(dict.fromkeys(texts))
            enc = [utf8(t) for t in keys]
            loc = self._find_fresh(enc)
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

        added = 0
        buf: dict[str, None] = {}
        bar = tqdm(desc="text-anchor cache", unit="caption", disable=not progress)

        def flush() -> int:
            keys = list(buf)
            with self._mutex:
                loc = self._find_fresh([utf8(t) for t in keys])
                todo = [keys[i] for i in np.flatnonzero(loc < 0).tolist()]
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

    def close(self) -> None:
        with self._mutex:
            for p in self._parts:
                p.close()
            self._parts, self._index = [], HashIndex()
            self._man = self._empty()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # --- reading --------------------------------------------------------------------------------------------
    @staticmethod
    def _empty() -> dict[str, Any]:
        return {"format": _FORMAT, "version": 0, "dim": None, "parts": []}

    def _stem(self, k: int) -> Path:
        return self.folder / f"part-{k:05d}"

    def _refresh(self) -> None:
        """Catch up with the manifest on disk: map the parts' new rows and index their hashes."""
        try:
            man = json.loads(self._manifest_path.read_text())
        except FileNotFoundError:
            return
        if man.get("format", 0) > _FORMAT:
            raise RuntimeError(f"{self.folder}: text table format {man.get('format')} is newer than this anyalign "
                               f"reads ({_FORMAT}); upgrade anyalign")
        if man["version"] == self._man["version"]:
            return
        if len(man["parts"]) < len(self._parts):
            raise RuntimeError(f"{self.folder}: the text table lost parts (manifest edited by hand?)")
        for k, p in enumerate(man["parts"]):
            if k == len(self._parts):
                self._parts.append(Part(self._stem(k), man["dim"]))
            part, have = self._parts[k], self._parts[k].rows
            if p["rows"] == have:
                continue
            if p["rows"] < have:
                raise RuntimeError(f"{self.folder}: part {k} of the text table shrank (manifest edited by hand?)")
            part.grow(p["rows"], p["text_bytes"])
            keys = np.fromfile(part.stem.with_suffix(".hash"), dtype="<u8", count=p["rows"] - have, offset=8 * have)
            self._index.insert(keys.view(np.int64), (k << ROW_BITS) | np.arange(have, p["rows"], dtype=np.int64))
        self._man, self.dim = man, man["dim"]

    def _find(self, enc: Sequence[bytes]) -> np.ndarray:
        """Locations (`part << 32 | row`, -1: absent) of UTF-8 captions in what this process has mapped."""
        loc = np.full(len(enc), -1, dtype=np.int64)
        if not enc or not self._index.n:
            return loc
        if len(enc) <= _FEW:
            loc[:] = self._find_few(enc)
            return loc
        slots = self._index.slots
        mask = len(slots) - 1
        keys = caption_hashes(enc).view(np.int64)
        pos = keys & mask
        todo = np.arange(len(enc))
        while todo.size:  # walk each caption's probe sequence up to an empty slot
            s = slots[pos[todo]]
            used = s[:, 1] >= 0
            same = np.flatnonzero(used & (s[:, 0] == keys[todo]))
            if same.size:  # the hash matches: the stored text must too (a collision is another caption)
                self._check_text(todo[same], s[same, 1], enc, loc)
            todo = todo[used & (loc[todo] < 0)]
            pos[todo] = (pos[todo] + 1) & mask
        return loc

    def _find_few(self, enc: Sequence[bytes]) -> list[int]:
        """`_find` probe by probe in plain Python: for a batch's few captions the vectorised walk's per-call numpy
        cost dominated (~250 of a ~400 us lookup of 32 captions)."""
        slots = memoryview(self._index.slots).cast("B").cast("q")  # hash, location, hash, location, ...
        mask = len(self._index.slots) - 1
        offs = [memoryview(p.off).cast("B").cast("Q") for p in self._parts]
        out = []
        for e in enc:
            key = int.from_bytes(caption_hash(e), "little", signed=True)  # as the int64 view of the stored hash
            pos, found = key & mask, -1
            while (c := slots[2 * pos + 1]) >= 0:
                if slots[2 * pos] == key:  # the hash matches: the stored text must too
                    k, r = c >> ROW_BITS, c & ROW_MASK
                    if self._parts[k].txt[offs[k][r]:offs[k][r + 1]] == e:
                        found = c
                        break
                pos = (pos + 1) & mask
            out.append(found)
        return out

    def _check_text(self, idx: np.ndarray, cand: np.ndarray, enc: Sequence[bytes], loc: np.ndarray) -> None:
        """Set `loc[i] = c` for each candidate location `c` whose stored caption is `enc[i]`."""
        parts, rows = cand >> ROW_BITS, cand & ROW_MASK
        for k, m in self._by_part(parts):
            part, r = self._parts[k], rows[m]
            starts, ends = part.off[r].tolist(), part.off[r + 1].tolist()
            for i, c, a, b in zip(idx[m].tolist(), cand[m].tolist(), starts, ends):
                if part.txt[a:b] == enc[i]:
                    loc[i] = c

    def _find_fresh(self, enc: Sequence[bytes]) -> np.ndarray:
        """`_find`, re-reading the manifest on a miss (another process may just have stored those captions)."""
        loc = self._find(enc)
        miss = np.flatnonzero(loc < 0)
        if miss.size:
            version = self._man["version"]
            self._refresh()
            if self._man["version"] != version:
                loc[miss] = self._find([enc[i] for i in miss.tolist()])
        return loc

    def _vectors(self, loc: np.ndarray) -> np.ndarray:
        """`[n, E]` float32 rows at `loc` (all present)."""
        out = np.empty((len(loc), self.dim or 0), dtype=np.float32)
        parts, rows = loc >> ROW_BITS, loc & ROW_MASK
        for k, m in self._by_part(parts):
            if isinstance(m, slice):
                self._parts[k].read(rows.tolist(), out)
            else:
                sub = np.empty((int(m.sum()), out.shape[1]), dtype=np.float32)
                self._parts[k].read(rows[m].tolist(), sub)
                out[m] = sub
        return out

    def _by_part(self, parts: np.ndarray) -> Iterator[tuple[int, Any]]:
        """(part, selection) pairs covering `parts` (one part, the usual case: no grouping)."""
        if len(self._parts) == 1:
            yield 0, slice(None)
            return
        for k in np.unique(parts).tolist():
            yield k, parts == k

    # --- writing --------------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the writer lock, caught up with the latest manifest."""
        if self._lock_fd is None:
            raise RuntimeError(f"{self.folder}: the text table is closed")
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._refresh()
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _encode_and_store(self, texts: list[str], bar: Any = None) -> np.ndarray:
        """Encode `texts` in length-sorted batches and store them; their locations (in `texts` order)."""
        ordered = sorted(set(texts), key=lambda t: (len(t), t))  # length-sorted: little padding, fixed batches
        pend_t: list[str] = []
        pend_v: list[np.ndarray] = []
        for i in range(0, len(ordered), self.batch_size):
            part = ordered[i:i + self.batch_size]
            emb = torch.nn.functional.normalize(self.encode(part).float(), dim=-1).cpu()  # [n, E]
            pend_t += part
            pend_v.append(emb.numpy())
            if len(pend_t) >= _WRITE_ROWS:
                self._store(pend_t, np.concatenate(pend_v))
                pend_t, pend_v = [], []
            if bar is not None:
                bar.update(len(part))
        if pend_t:
            self._store(pend_t, np.concatenate(pend_v))
        loc = self._find([utf8(t) for t in texts])  # what the table holds (another process may have written first)
        if (loc < 0).any():
            raise RuntimeError(f"{self.folder}: stored captions not found again")
        return loc

    def _store(self, texts: list[str], vecs: np.ndarray) -> None:
        with self._locked():
            self._append(texts, vecs)

    def _append(self, texts: list[str], vecs: np.ndarray) -> None:
        """Append the captions the table does not hold yet (call under the lock, caught up)."""
        enc = [utf8(t) for t in texts]
        keep = np.flatnonzero(self._find(enc) < 0)
        if keep.size < len(enc):  # another process stored some first: theirs stay (values never change)
            enc, vecs = [enc[i] for i in keep.tolist()], vecs[keep]
        if not enc:
            return
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        dim = int(vecs.shape[1])
        man = json.loads(json.dumps(self._man))
        if man["dim"] is None:
            man["dim"] = dim
        elif man["dim"] != dim:
            raise ValueError(f"{self.folder}: the encoder gave {dim}-d embeddings, the table holds {man['dim']}-d")
        hashes = caption_hashes(enc)
        i = 0
        while i < len(enc):
            if not man["parts"] or man["parts"][-1]["rows"] >= _PART_ROWS:
                man["parts"].append({"rows": 0, "text_bytes": 0})
            k, p = len(man["parts"]) - 1, man["parts"][-1]
            n = min(len(enc) - i, _PART_ROWS - p["rows"])
            self._write_part(k, p, dim, enc[i:i + n], vecs[i:i + n], hashes[i:i + n])
            i += n
        self._commit(man)  # the new rows are committed now, all at once

    def _commit(self, man: dict[str, Any]) -> None:
        """Replace the manifest atomically (under the lock) and catch up with it."""
        man["version"] += 1
        tmp = self._manifest_path.with_name(f"manifest.json.tmp{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(json.dumps(man))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._manifest_path)
        self._refresh()

    def _write_part(self, k: int, p: dict[str, Any], dim: int, enc: list[bytes], vecs: np.ndarray,
                    hashes: np.ndarray) -> None:
        """Append rows to part `k` after its committed ones (cutting a crashed writer's leftovers) and update `p`."""
        ends = p["text_bytes"] + np.cumsum([len(e) for e in enc], dtype=np.int64)
        stem = self._stem(k)
        for ext, at, data in ((".emb", p["rows"] * dim * 4, vecs.tobytes()),
                              (".off", (p["rows"] + 1) * 8, ends.astype("<u8").tobytes()),
                              (".txt", p["text_bytes"], b"".join(enc)),
                              (".hash", p["rows"] * 8, hashes.astype("<u8").tobytes())):
            fd = os.open(stem.with_suffix(ext), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.ftruncate(fd, at)  # a new .off starts with one zero: row 0 starts at byte 0
                view, done = memoryview(data), 0
                while done < len(view):
                    done += os.pwrite(fd, view[done:], at + done)
                os.fdatasync(fd)  # on disk before the manifest says these rows exist
            finally:
                os.close(fd)
        p["rows"] += len(enc)
        p["text_bytes"] = int(ends[-1])


def table_for_anchor(spec: EncoderSpec, encoder: Any, *, root: str | os.PathLike | None = None,
                     batch_size: int = 256) -> TextEmbeddingTable:
    """The table of one frozen text anchor (`spec`: its encoder spec; `encoder(texts).pooled`)."""
    folder = Path(root) if root is not None else text_cache_root()
    folder = folder / anchor_fingerprint(spec)
    folder.mkdir(parents=True, exist_ok=True)
    desc = folder / "anchor.json"
    if not desc.is_file():
        from ..io import write_json

        write_json(desc, spec.to_dict())

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        return encoder(texts).pooled

    return TextEmbeddingTable(folder, encode, batch_size=batch_size)


__all__ = ["TextEmbeddingTable", "anchor_fingerprint", "table_for_anchor", "text_cache_root"]
