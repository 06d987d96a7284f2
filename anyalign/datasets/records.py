"""The input layer: every dataset file or folder becomes `Record`s, for extract, embed, classify, eval and train
(formats: README, "Data formats"). A new kind is one reader decorated with `@register_data_kind(name)` here, in
`readers.py` or in a plugin. Text is never taken for a path: `Record.input` gives a text encoder the
`text`, a media encoder its file."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..registry import Registry

logger = logging.getLogger(__name__)


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

    def __str__(self) -> str:
        return f"{self.tar}:{self.name}"


@dataclass(frozen=True)
class BrokenInput:
    """The input of a row or member that could not be read (bad JSON, wrong column count, non-UTF-8 text, a
    truncated shard): loading it fails with `reason`, so the run skips, counts and lists it like a corrupt file."""

    where: str
    reason: str

    def __str__(self) -> str:
        return self.where


@dataclass
class Record:
    """One sample of any dataset (fields: README, "Data formats"); `error` marks a row that could not be read."""

    key: str
    media: dict[str, list[Any]] = field(default_factory=dict)  # modality (or "path": untyped) -> raw inputs
    text: str | None = None
    label: str | None = None
    fold: str | None = None
    group: str | None = None
    conversations: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    where: str = ""  # file:line, for error messages
    error: str | None = None  # why the row could not be read (its input is then a BrokenInput)

    def inputs(self, modality: str) -> list[Any]:
        """The raw inputs of `modality`: its own field, else the untyped `path`; a text encoder reads `text`."""
        if self.error is not None:
            return [BrokenInput(self.where, self.error)]
        if modality in self.media:
            return self.media[modality]
        if modality == "text":
            return [self.text] if self.text is not None else []
        return self.media.get("path", [])

    def input(self, modality: str) -> Any:
        """The single raw input of `modality` (None when the record has none)."""
        found = self.inputs(modality)
        return found[0] if found else None

    def metadata(self) -> dict[str, Any]:
        """Fields to store beside a vector or feature: source, text/caption, label, fold, group and the rest."""
        out: dict[str, Any] = dict(self.meta)
        for name in ("text", "label", "fold", "group"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.text is not None:
            out.setdefault("caption", self.text)
        if self.conversations is not None:  # instruction data cached by `extract` still trains
            out["conversations"] = self.conversations
        return out


#: the built-in kinds are the `@register_data_kind` readers of `readers.py` (found by that line)
DATA_KINDS: Registry[list[Record]] = Registry("data kind", package=__package__, decorator="register_data_kind")
#: `@register_data_kind(name)` on `fn(path: Path, *, modalities: Sequence[str]) -> list[Record]` adds data kind `name`
register_data_kind = DATA_KINDS.register


def detect_kind(path: str | os.PathLike) -> str:
    """The kind of a dataset path, from its suffix or layout."""
    text = str(path)
    p = Path(path).expanduser()
    if any(c in text for c in "*?[") and not p.exists():
        return "glob"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such dataset file or folder")
    if not p.is_file() and not p.is_dir():
        raise ValueError(f"{p}: not a regular file or folder (a device, pipe or socket); expected a dataset file "
                         "or folder")
    if p.is_file():
        suffix = p.suffix.lower()
        kinds = {".jsonl": "jsonl", ".txt": "txt", ".csv": "csv", ".tar": "webdataset"}
        if suffix in kinds:
            return kinds[suffix]
        raise ValueError(f"{p}: not a dataset file (expected .jsonl, .txt, .csv or .tar, or a folder)")
    if (p / "meta" / "esc50.csv").is_file():
        return "esc50"
    if (p / "metadata" / "UrbanSound8K.csv").is_file():
        return "urbansound8k"
    if any(p.glob("*_TRAIN.arff")) or any(p.glob("*_TRAIN.ts")):
        return "uea"
    files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
    if files and all(f.suffix.lower() == ".tar" for f in files):
        return "webdataset"
    return "folder"


def read_records(path: str | os.PathLike, *, kind: str = "auto", modalities: Sequence[str] = ()) -> list[Record]:
    """All records of a dataset. `modalities`: field names that hold media in jsonl/csv rows (besides `path`)."""
    kind = detect_kind(path) if kind == "auto" else kind
    reader = DATA_KINDS.get(kind)
    # resolved, so every record's media source is absolute (indexes and `serve` find them from any directory)
    target = Path(path).expanduser().resolve() if kind != "glob" else Path(path)
    records = reader(target, modalities=tuple(modalities))
    broken = [r for r in records if r.error is not None]
    if broken:
        logger.warning("%s: %d unreadable row(s) or member(s) skipped (first: %s: %s)", path, len(broken),
                       broken[0].where, broken[0].error)
    seen: dict[str, str] = {}
    for r in records:
        if r.key in seen:
            raise ValueError(f"{r.where or path}: key {r.key!r} repeats {seen[r.key]}; keys must be unique")
        seen[r.key] = r.where or r.key
    return records


@dataclass
class LabelledDataset:
    """The labelled records of a dataset, one media file each (`media["path"]`), and the class names in their
    canonical order (ESC-50 / UrbanSound8K: by class id; otherwise sorted), which defines the label ids."""

    root: Path
    items: list[Record]
    classes: list[str]
    layout: str  # the data kind it was read as
    skipped: list[str] = field(default_factory=list)  # files left out by extension, for the report

    def __len__(self) -> int:
        return len(self.items)

    @property
    def folds(self) -> list[str]:
        """The folds present, in natural order (empty when the layout has none)."""
        return sorted({it.fold for it in self.items if it.fold is not None},
                      key=lambda f: tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", f)))

    @property
    def paths(self) -> list[Path]:
        return [Path(it.input("path")) for it in self.items]

    @property
    def targets(self) -> list[int]:
        """Label ids (indices into `classes`)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[it.label] for it in self.items]

    def select_folds(self, folds: Iterable[str | int]) -> LabelledDataset:
        """Only the items of the given folds (classes keep their order and ids)."""
        wanted, present = [str(f) for f in folds], self.folds  # `folds` scans every item: once
        if not present:
            raise ValueError(f"{self.root}: the {self.layout} layout has no folds; drop --fold")
        unknown = [f for f in wanted if f not in present]
        if unknown:
            raise ValueError(f"{self.root}: no fold {', '.join(unknown)} (folds: {', '.join(present)})")
        return replace(self, items=[it for it in self.items if it.fold in wanted])


def read_labelled(path: str | os.PathLike, *, modality: str | None = None, extensions: Sequence[str] | None = None,
                  folds: Iterable[str | int] | None = None) -> LabelledDataset:
    """The labelled files of any dataset `read_records` reads (class folders, csv, ESC-50, UrbanSound8K, jsonl, tar
    shards ...), strictly: an unreadable row is an error. `modality` names the media field of jsonl rows (e.g. "imu"
    for `{"imu": "w.npy", "label": ...}`); `extensions` keeps files with these suffixes (others go to `skipped`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset not found (expected a folder of class folders, a csv manifest, "
                                f"an ESC-50 / UrbanSound8K folder or a labelled jsonl / tar dataset)")
    kind = detect_kind(path)
    records = read_records(path, kind=kind, modalities=[modality] if modality else ())
    bad = next((r for r in records if r.error is not None), None)
    if bad is not None:
        raise ValueError(f"{bad.where}: {bad.error}")
    wanted = [e.lower() for e in extensions] if extensions is not None else None
    items, skipped, ids = [], [], {}
    for r in records:
        value = r.input(modality) if modality else r.input("path")
        if r.label is None or not isinstance(value, str):
            continue
        if wanted is not None and Path(value).suffix.lower() not in wanted:
            skipped.append(value)
            continue
        items.append(replace(r, media={"path": [value]}))
        ids.setdefault(r.label, r.meta.get("class_id", 0))
    if not items:
        hint = f" with suffix {', '.join(extensions)}" if extensions else ""
        raise ValueError(f"{path}: no labelled files found{hint} ({kind} layout: expected "
                         f"{'<class>/<file>' if kind == 'folder' else 'rows with a label and a media file'})")
    classes = sorted(ids, key=lambda c: (ids[c], c))
    if len(classes) < 2:
        raise ValueError(f"{path}: found only one class ({classes[0]!r}); classification needs at least two")
    ds = LabelledDataset(path if path.is_dir() else path.parent, items, classes, kind, skipped)
    return ds.select_folds(folds) if folds is not None else ds


__all__ = ["DATA_KINDS", "BrokenInput", "LabelledDataset", "Record", "TarMember", "detect_kind", "read_labelled",
           "read_records", "register_data_kind"]
