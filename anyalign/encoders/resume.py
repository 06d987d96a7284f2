"""Resume checks of feature extraction: finished shards are cleared of inputs that changed since they were written
(edited text rows, overwritten files), which are then extracted again; no other input is re-encoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.records import TarMember
from ..fingerprint import source_fingerprint
from ..io import atomic_path, write_json

logger = logging.getLogger(__name__)


def input_fingerprint(value: Any) -> str:
    """Content identity of one input: a file's `source_fingerprint` (size, mtime, inode), a tar member's shard size
    and mtime, a hash of a text row or of an array's bytes."""
    if isinstance(value, TarMember):
        st = os.stat(value.tar)
        return f"tar:{value.name}:{value.offset}:{value.size}:{st.st_size}:{st.st_mtime_ns}"
    if isinstance(value, (str, os.PathLike)):
        try:
            if Path(value).is_file():
                return f"file:{source_fingerprint(value)}"  # the project's one file identity
        except (OSError, ValueError):  # a sentence, not a path (too long, NUL bytes)
            pass
        return "text:" + hashlib.sha1(os.fspath(value).encode("utf-8", "surrogatepass")).hexdigest()
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        return f"array:{a.dtype}:{a.shape}:" + hashlib.sha1(a.tobytes()).hexdigest()
    return "repr:" + hashlib.sha1(repr(value).encode()).hexdigest()


def drop_changed(done: dict[int, tuple[Path, dict[str, Any]]], fingerprints: dict[str, str]
                 ) -> dict[int, tuple[Path, dict[str, Any]]]:
    """Remove from each finished shard the inputs whose fingerprint (key -> fingerprint of this run) changed;
    returns the updated `done`."""
    for index, (shard, side) in list(done.items()):
        old = zip(side["keys"], side["fingerprints"])
        changed = {k for k, fp in old if k in fingerprints and fingerprints[k] != fp}
        if changed:
            logger.warning("%s: %d input(s) changed since it was written (e.g. %s); extracting them again",
                           shard.name, len(changed), sorted(changed)[0])
            done[index] = (shard, _rewrite_without(shard, side, changed))
    return done


def _rewrite_without(shard: Path, side: dict[str, Any], changed: set[str]) -> dict[str, Any]:
    """Copy `shard` without the records of `changed` keys (atomically), then update its sidecar."""
    kept = 0
    with tarfile.open(shard) as src, atomic_path(shard) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) \
            as dst:
        groups: dict[str, list[tarfile.TarInfo]] = {}
        for m in src.getmembers():
            groups.setdefault(m.name.split(".", 1)[0], []).append(m)
        for members in groups.values():
            meta = next((m for m in members if m.name.endswith(".meta.json")), None)
            key = None
            if meta is not None:
                key = json.loads(src.extractfile(meta).read()).get("key")
            if key in changed:
                continue
            kept += 1
            for m in members:
                dst.addfile(m, src.extractfile(m))
    keys = [k for k in side["keys"] if k not in changed]
    fps = [fp for k, fp in zip(side["keys"], side["fingerprints"]) if k not in changed]
    new = {**side, "keys": keys, "fingerprints": fps, "n_ok": kept,
           "failures": [f for f in side.get("failures", []) if f.get("key") not in changed]}
    write_json(shard.with_suffix(".json"), new)
    return new


__all__ = ["drop_changed", "input_fingerprint"]
