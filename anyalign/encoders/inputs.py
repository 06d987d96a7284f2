"""Find the raw inputs of an extraction run: a folder, a `.jsonl`/`.txt` list, or webdataset `.tar` shards.

Every input becomes an `Item` (stable key, the value the encoder's `load` receives, metadata to store with its
features). The list is sorted/ordered deterministically so that cutting it into shards gives the same shards on
every rank and on every rerun. Inputs that cannot be for this encoder are refused up front with an error naming
the input and the file types the encoder reads; single undecodable files are left to `load` (counted failures).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import iter_jsonl
from .base import Encoder, InputError

logger = logging.getLogger(__name__)

#: small text members of a webdataset sample copied into the metadata (`.json` members are merged field by field)
_TEXT_META = ("txt", "text", "caption", "cls", "label")


@dataclass
class Item:
    """One input: a stable key, what the encoder's `load` receives, and metadata to store with it."""

    key: str
    value: Any
    meta: dict[str, Any]


@dataclass(frozen=True)
class TarMember:
    """A file inside a tar shard, read by offset (no scan of the archive per item)."""

    tar: str
    name: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def load_item(encoder: Encoder, value: Any) -> Any:
    """`encoder.load(value)`, unpacking a tar member to a temporary file first (decoders take paths)."""
    if not isinstance(value, TarMember):
        return encoder.load(value)
    fd, tmp = tempfile.mkstemp(prefix="anyalign-member-", suffix=Path(value.name).suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(value.read())
        return encoder.load(tmp)
    except InputError as e:  # name the member, not the scratch file
        raise InputError(str(e).replace(tmp, f"{value.tar}:{value.name}")) from None
    finally:
        os.unlink(tmp)


def _accepts(encoder: Any, name: str | os.PathLike) -> bool:
    return Path(name).suffix.lower() in encoder.extensions


def encoder_class(name: str, *, declared_inputs: bool = False) -> type[Encoder] | None:
    """The class a registered encoder factory returns (from its annotation); None when unknown. With
    `declared_inputs`, only a class that declares its modality and file types at class level, which lets inputs
    be checked before any weights load."""
    import typing

    from .registry import ENCODERS, _import_builtin

    _import_builtin(name)
    try:
        cls = typing.get_type_hints(ENCODERS.get(name)).get("return")
    except Exception:  # noqa: BLE001 - unresolvable annotations: check after loading instead
        return None
    if not (isinstance(cls, type) and issubclass(cls, Encoder)):
        return None
    if declared_inputs and not (cls.modality and (cls.extensions or cls.modality == "text")):
        return None
    return cls


def _wanted(encoder: Any) -> str:
    if encoder.modality == "text" and not encoder.extensions:
        return "a .jsonl list with a 'text' field, a .txt file with one sentence per line, or .tar shards with .txt"
    return ", ".join(encoder.extensions) or "(no file types declared by this encoder)"


def _suffix_summary(names: list[str]) -> str:
    counts = Counter(Path(n).suffix.lower() or "(no suffix)" for n in names)
    return ", ".join(f"{n} {s}" for s, n in counts.most_common(5)) or "nothing"


def discover_inputs(source: str | os.PathLike, encoder: Any) -> list[Item]:
    """List the items of a folder, `.jsonl`/`.txt` list, `.tar` shard or single file, checked against the encoder."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"--input {path}: no such file or folder")
    if path.is_dir():
        return _folder_items(path, encoder)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_items(path, encoder)
    if suffix == ".txt" and not _accepts(encoder, path):
        return _txt_items(path, encoder)
    if suffix == ".tar":
        return _tar_items([path], encoder)
    if _accepts(encoder, path):
        return [Item(path.name, str(path), {"source": str(path)})]
    raise ValueError(f"--input {path}: a {encoder.modality} encoder reads {_wanted(encoder)}; expected a folder of "
                     f"those, a .jsonl/.txt list or webdataset .tar shards")


def _folder_items(path: Path, encoder: Any) -> list[Item]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    media = [p for p in files if _accepts(encoder, p)]
    tars = [p for p in files if p.suffix.lower() == ".tar"]
    if not media and tars:
        return _tar_items(tars, encoder)
    if tars:
        logger.warning("--input %s: reading its %d media files; its %d .tar shards are not read (pass them as their "
                       "own --input)", path, len(media), len(tars))
    if not media:
        found = _suffix_summary([p.name for p in files])
        raise ValueError(f"--input {path}: no file this {encoder.modality} encoder reads; expected {_wanted(encoder)} "
                         f"(found {found})")
    return [Item(p.relative_to(path).as_posix(), str(p), {"source": str(p)}) for p in media]


def _jsonl_items(path: Path, encoder: Any) -> list[Item]:
    is_text = encoder.modality == "text"
    items: list[Item] = []
    seen: dict[str, int] = {}
    for n, row in iter_jsonl(path):
        if is_text and isinstance(row.get("text"), str):
            value: Any = row["text"]
            source = row.get("source", f"{path}:{n}")
        elif not is_text and isinstance(ref := row.get("path") or row.get(encoder.modality) or row.get("source"), str):
            value = source = str((path.parent / ref).resolve())  # the project's format names the field by modality
        else:
            want = "a 'text' field" if is_text else f"a 'path' (or '{encoder.modality}') field naming the file"
            raise ValueError(f"{path}:{n}: expected {want}")
        key = str(row.get("key", row.get("id", n - 1)))
        if key in seen:
            raise ValueError(f"{path}:{n}: key {key!r} repeats line {seen[key]}; keys must be unique")
        seen[key] = n
        items.append(Item(key, value, {**row, "source": source}))
    if not items:
        raise ValueError(f"--input {path}: the list is empty")
    if not is_text and encoder.extensions and not any(_accepts(encoder, it.value) for it in items):
        raise ValueError(f"--input {path}: no listed file is one this {encoder.modality} encoder reads; expected "
                         f"{_wanted(encoder)} (the list has {_suffix_summary([it.value for it in items])})")
    return items


def _txt_items(path: Path, encoder: Any) -> list[Item]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ValueError(f"--input {path}: the list is empty")
    if encoder.modality == "text":
        return [Item(str(i), ln, {"source": f"{path}:{i + 1}", "text": ln}) for i, ln in enumerate(lines)]
    values = [str((path.parent / ln).resolve()) for ln in lines]
    if encoder.extensions and not any(_accepts(encoder, v) for v in values):
        raise ValueError(f"--input {path}: no listed file is one this {encoder.modality} encoder reads; expected "
                         f"{_wanted(encoder)} (the list has {_suffix_summary(values)})")
    return [Item(str(i), v, {"source": v}) for i, v in enumerate(values)]


def _split_name(name: str) -> tuple[str, str]:
    """webdataset's sample key and extension: `dir/abc.seg.flac` -> (`dir/abc`, `seg.flac`)."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _tar_items(tars: list[Path], encoder: Any) -> list[Item]:
    """One item per media member of each webdataset sample; `.json` fields and short text members become meta."""
    is_text = encoder.modality == "text" and not encoder.extensions
    items: list[Item] = []
    names: list[str] = []
    for tar in tars:
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tarfile.open(tar) as tf:
                for m in tf:
                    if m.isfile():
                        names.append(m.name)
                        key, ext = _split_name(m.name)
                        samples.setdefault(key, {})[ext] = m
        except (tarfile.TarError, OSError) as e:
            raise ValueError(f"--input {tar}: cannot read as a tar shard ({e})") from None
        for key, members in samples.items():
            meta = _tar_meta(tar, members)
            if is_text:
                text = meta.get("txt", meta.get("text"))
                if isinstance(text, str):
                    items.append(Item(f"{tar.stem}/{key}", text, {**meta, "source": f"{tar}:{key}"}))
                continue
            media = [(ext, m) for ext, m in sorted(members.items()) if _accepts(encoder, m.name)]
            for ext, m in media:  # normally one per sample; several get the extension in their key
                item_key = f"{tar.stem}/{key}" if len(media) == 1 else f"{tar.stem}/{key}.{ext}"
                items.append(Item(item_key, TarMember(str(tar), m.name, m.offset_data, m.size),
                                  {**meta, "source": f"{tar}:{m.name}"}))
    if not items:
        raise ValueError(f"--input {', '.join(map(str, tars[:3]))}: no tar member this {encoder.modality} encoder "
                         f"reads; expected {_wanted(encoder)} (found {_suffix_summary(names)})")
    return items


def _tar_meta(tar: Path, members: dict[str, tarfile.TarInfo]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for ext, m in members.items():
        if ext not in ("json", *_TEXT_META) or m.size > 1 << 20:
            continue
        raw = TarMember(str(tar), m.name, m.offset_data, m.size).read()
        try:
            text = raw.decode("utf-8")
            value = json.loads(text) if ext == "json" else text.strip()
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"--input {tar}:{m.name}: expected UTF-8 {'JSON' if ext == 'json' else 'text'} ({e})") \
                from None
        if ext == "json" and isinstance(value, dict):
            meta.update(value)
        else:
            meta[ext] = value
    return meta
