"""The inputs of an extraction run, from the input layer (`anyalign.datasets.records`) or a single file, as `Item`s in
a deterministic order (same shards on every rank and rerun); inputs the encoder cannot read are refused up front.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..datasets.records import BrokenInput, TarMember
from .base import Encoder, InputError


@dataclass
class Item:
    """One input: a stable key, what the encoder's `load` receives, and metadata to store with it."""

    key: str
    value: Any
    meta: dict[str, Any]


def load_item(encoder: Encoder, value: Any) -> Any:
    """`encoder.load(value)`, unpacking a tar member to a temporary file first (decoders take paths)."""
    if isinstance(value, BrokenInput):  # a row or member the input layer could not read: a counted failure
        raise InputError(value.reason)
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


def _wanted(encoder: Any) -> str:
    if encoder.modality == "text" and not encoder.extensions:
        return "a .jsonl list with a 'text' field, a .txt file with one sentence per line, or .tar shards with .txt"
    return ", ".join(encoder.extensions) or "(no file types declared by this encoder)"


def _suffix_summary(names: list[str]) -> str:
    counts = Counter(Path(n).suffix.lower() or "(no suffix)" for n in names)
    return ", ".join(f"{n} {s}" for s, n in counts.most_common(5)) or "nothing"


def discover_inputs(source: str | os.PathLike, encoder: Any) -> list[Item]:
    """The items of any input-layer format (`anyalign.datasets.records`) or a single file, for this encoder."""
    from ..datasets.records import read_records

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"--input {path}: no such file or folder")
    suffix = path.suffix.lower()
    if path.is_file() and _accepts(encoder, path) and suffix not in (".jsonl", ".txt", ".csv", ".tar"):
        return [Item(path.name, str(path), {"source": str(path)})]
    records = read_records(path, modalities=[encoder.modality])
    is_text = encoder.modality == "text" and not encoder.extensions
    items: list[Item] = []
    names: list[str] = []
    wrong_type = 0
    listed = suffix in (".jsonl", ".txt", ".csv")  # rows that name their files: one this encoder cannot read fails
    for rec in records:
        values = rec.inputs(encoder.modality)
        names += [str(getattr(v, "name", v)) for v in values if not isinstance(v, (str, BrokenInput)) or not is_text]
        keep = values if is_text else [v for v in values if isinstance(v, BrokenInput) or
                                       _accepts(encoder, str(getattr(v, "name", v)))]
        if listed and not is_text and values and not keep:
            wrong_type += 1
            keep = [BrokenInput(str(values[0]), f"not a file the {encoder.modality} encoder reads (expected "
                                                f"{_wanted(encoder)})")]
        suffixes = [Path(str(getattr(v, "name", v))).suffix.lstrip(".") for v in keep]
        for j, (v, sfx) in enumerate(zip(keep, suffixes)):
            key = rec.key if len(keep) == 1 else f"{rec.key}.{sfx}" if suffixes.count(sfx) == 1 else \
                f"{rec.key}.{j}.{sfx}"  # two files of one type in a row: numbered, not a duplicate key
            items.append(Item(key, v, {**rec.metadata(), "source": rec.meta.get("source") if is_text else str(v)}))
    if wrong_type == len(items):  # not one row names a file of this encoder's type: the wrong encoder or list
        items = []
    if not items:
        if is_text:
            raise ValueError(f"--input {path}: found no text; expected {_wanted(encoder)}")
        listed = "no listed file is one" if suffix in (".jsonl", ".txt", ".csv") else "no file"
        raise ValueError(f"--input {path}: {listed} this {encoder.modality} encoder reads; expected "
                         f"{_wanted(encoder)} (found {_suffix_summary(names)})")
    return items


def failure_reason(e: BaseException) -> str:
    """How a failed input is worded in failure lists: `"Type: message"`."""
    return f"{type(e).__name__}: {e}"


class SafeDecode(Dataset):
    """`load(values[i])` per item, returned as `(i, decoded, None)` or `(i, None, "reason")`, so a long run never dies
    on one corrupt file: the caller counts and lists the failures."""

    def __init__(self, values: Sequence[Any], load: Callable[[Any], Any],
                 errors: tuple[type[BaseException], ...] = (Exception,),
                 describe: Callable[[int, BaseException], str] | None = None) -> None:
        """`describe(i, error)` words a failure (default: `"Type: message"`); it must be picklable for workers."""
        self.values, self.load, self.errors, self.describe = values, load, errors, describe

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        try:
            return i, self.load(self.values[i]), None
        except self.errors as e:
            return i, None, self.describe(i, e) if self.describe is not None else failure_reason(e)
