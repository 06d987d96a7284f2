"""The input layer: every dataset file or folder becomes `Record`s, for extract, embed, classify, eval and train.

A `Record` holds one sample: raw media per modality (paths, tar members or arrays), the paired `text`, a `label`,
a `fold`, a `group` (what belongs together: a recording, a speaker), a unique `key` and the other fields as
`meta`. `read_records(path)` recognises the format; `kind=` names it. Formats (README, "Data formats"):

| kind | what |
| --- | --- |
| `jsonl` | one object per line: a media path per modality (`"image": "a.png"`, relative to the file) or   |
|         | `path`; `text`/`caption`, `label`, `key`, `fold`, `group`, `conversations`                          |
| `txt` | one item per line: a sentence for text encoders, a file path for media encoders |
| `csv` | header `path,label[,fold][,text][,group]` (`file`/`filename`, `class`/`category` also accepted) |
| `folder` | files found recursively; class folders (`root/<class>/...`) give the label |
| `glob` | a pattern such as `sounds/**/*.wav` |
| `esc50` / `urbansound8k` | the ESC-50 / UrbanSound8K folders with their metadata csv and folds |
| `uea` | a UEA time-series archive folder (`*_TRAIN.arff` / `.ts`): `[C, T]` windows, fold train/test |
| `webdataset` | `.tar` shards (or a folder of them): one sample per key, `.json`/`.txt`/`.cls` members as fields |

A new kind is one reader function decorated with `@register_data_kind(name)` (plugins register the same way).
Text is never taken for a path: `Record.input(modality)` gives a text encoder the `text`, a media encoder its path.
"""

from __future__ import annotations

import csv
import glob as globlib
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..registry import Registry

#: fields of a jsonl/csv row that are not media (everything else not named after a modality is kept as `meta`)
TEXT_FIELDS = ("text", "caption")
logger = logging.getLogger(__name__)
_SPECIAL = {"text", "caption", "label", "key", "id", "fold", "group", "conversations", "messages", "path", "source"}


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
    """One sample of any dataset (see the module docstring); `error` marks a row that could not be read."""

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


DATA_KINDS: Registry[list[Record]] = Registry("data kind")
_Reader = Callable[..., list[Record]]


def register_data_kind(name: str) -> Callable[[_Reader], _Reader]:
    """Register `fn(path: Path, *, modalities: Sequence[str]) -> list[Record]` as data kind `name`."""
    return DATA_KINDS.register(name)


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
    _load_plugin_kinds()
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


def _load_plugin_kinds() -> None:
    from ..plugins import load_plugins

    load_plugins()


def _resolve(base: Path, value: str) -> str:
    p = Path(os.path.expandvars(value)).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _row_record(row: dict[str, Any], base: Path, where: str, default_key: str,
                modalities: Sequence[str]) -> Record:
    media: dict[str, list[Any]] = {}
    for name in (*modalities, "path"):
        if name in row and name != "text" and row[name] is not None:
            values = row[name] if isinstance(row[name], list) else [row[name]]
            if not all(isinstance(v, str) for v in values):
                raise ValueError(f"{where}: field {name!r}: expected a file path (or a list of them)")
            media[name] = [_resolve(base, v) for v in values]
    text = row.get("text", row.get("caption"))
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{where}: field 'text': expected a string, got {text!r}")
    conv = row.get("conversations") or row.get("messages")
    meta = {k: v for k, v in row.items() if k not in _SPECIAL and k not in media}
    if "caption" in row and "text" in row:
        meta["caption"] = row["caption"]
    source = media[next(iter(media))][0] if media else where
    meta.setdefault("source", row.get("source", source))

    def opt(name: str) -> str | None:
        return None if row.get(name) is None else str(row[name])

    return Record(str(row.get("key", row.get("id", default_key))), media, text, opt("label"), opt("fold"),
                  opt("group"), conv, meta, where)


@register_data_kind("jsonl")
def read_jsonl(path: Path, *, modalities: Sequence[str] = ()) -> list[Record]:
    """One JSON object per line (see the module docstring); a line that is not one becomes an error record."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: jsonl file not found")
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    out = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(raw.decode("utf-8"))
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
            out.append(_row_record(row, path.parent, where, str(n - 1), modalities))
        except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
            reason = f"not valid JSON ({e})" if isinstance(e, json.JSONDecodeError) else \
                str(e).replace(f"{where}: ", "")
            out.append(_broken(f"line{n}", where, reason))
    return out


def _broken(key: str, where: str, reason: str) -> Record:
    return Record(f"!{key}", meta={"source": where}, where=where, error=reason)


@register_data_kind("txt")
def read_txt(path: Path, *, modalities: Sequence[str] = ()) -> list[Record]:
    """One item per non-empty line: `text` for text encoders, `path` (relative to the file) for media encoders."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read as UTF-8 text ({e})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            out.append(Record(str(len(out)), {"path": [_resolve(path.parent, line.strip())]}, line.strip(),
                              meta={"source": f"{path}:{n}"}, where=f"{path}:{n}"))
    return out


@register_data_kind("csv")
def read_csv(path: Path, *, modalities: Sequence[str] = ()) -> list[Record]:
    """A header row `path,label[,fold][,text][,group]` (or ESC-50's own csv)."""
    from .labelled import _LABEL_COLUMNS, _PATH_COLUMNS, _manifest

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: cannot read csv ({e})") from None
    header = [h.strip() for h in table[0]] if table else []
    if {"filename", "fold", "target", "category"} <= set(header) and path.parent.name == "meta":
        return _labelled(_manifest(path), "esc50")  # the ESC-50 csv itself was given
    path_col = next((c for c in _PATH_COLUMNS if c in header), None)
    label_col = next((c for c in _LABEL_COLUMNS if c in header), None)
    if path_col is None or label_col is None:
        _manifest(path)  # raises the error that names the expected columns
    out = []
    for n, cells in enumerate(table[1:], 2):
        where = f"{path}:{n}"
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            out.append(_broken(f"row{n}", where, f"{len(cells)} columns, the header has {len(header)}"))
            continue
        row = {h: c.strip() for h, c in zip(header, cells)}
        if not row[path_col] or not row[label_col]:
            out.append(_broken(f"row{n}", where, f"empty {path_col!r} or {label_col!r}"))
            continue
        file = Path(row[path_col]).expanduser()
        file = file if file.is_absolute() else path.parent / file
        out.append(Record(_rel(file, path.parent), {"path": [str(file)]}, row.get("text") or None, row[label_col],
                          row.get("fold") or None, row.get("group") or None, meta={"source": str(file)}, where=where))
    return out


def _rel(file: Path, root: Path) -> str:
    return Path(file).relative_to(root).as_posix() if Path(file).is_relative_to(root) else str(file)


def _labelled(ds: Any, kind: str) -> list[Record]:
    return [Record(_rel(it.path, ds.root), {"path": [str(it.path)]}, None, it.label, it.fold,
                   meta={"source": str(it.path)}, where=f"{ds.root} ({kind})") for it in ds.items]


@register_data_kind("esc50")
def read_esc50(path: Path, *, modalities: Sequence[str] = ()) -> list[Record]:
    """ESC-50: `meta/esc50.csv` + `audio/`, five folds."""
    from .labelled import _esc50

    return _labelled(_esc50(path), "esc50")


@register_data_kind("urbansound8k")
def read_urbansound8k(path: Path, *, modalities: Sequence[str] = ()) -> list[Record]:
    """UrbanSound8K: `metadata/UrbanSound8K.csv` + `audio/fold<N>/`, ten folds."""
    from .labelled import _urbansound8k

    return _labelled(_urbansound8k(path), "urbansound8k")


@register_data_kind("folder")
def read_folder(path: Path, *, modalities: Sequence[str] = ()) -> list[Record]:
    """Every file below `path` (hidden ones skipped); files in class folders `path/<class>/...` get that label."""
    files = sorted(f for f in path.rglob("*") if f.is_file() and not any(p.startswith(".") for p in
                                                                            f.relative_to(path).parts))
    classed = bool(files) and all(len(f.relative_to(path).parts) > 1 for f in files)
    return [Record(f.relative_to(path).as_posix(), {"path": [str(f)]},
                   label=f.relative_to(path).parts[0] if classed else None,
                   meta={"source": str(f)}, where=str(f)) for f in files]


@register_data_kind("glob")
def read_glob(path: Path, *, modalities: Sequence[str] = ()) -> list[Record]:
    """Files matching a pattern (`**` recurses)."""
    files = sorted(Path(p) for p in globlib.glob(os.path.expanduser(str(path)), recursive=True) if Path(p).is_file())
    if not files:
        raise ValueError(f"{path}: the pattern matches no file")
    return [Record(str(f), {"path": [str(f.resolve())]}, meta={"source": str(f.resolve())}, where=str(f))
            for f in files]


@register_data_kind("uea")
def read_uea(path: Path, *, modalities: Sequence[str] = ()) -> list[Record]:
    """A UEA archive: both splits as records of `[C, T]` float32 windows (fold = train/test)."""
    from .uea import load_uea

    modality = modalities[0] if modalities else "imu"
    out = []
    for split in ("train", "test"):
        ds = load_uea(path, split=split)
        out += [Record(f"{path.name}/{split}/{i}", {modality: [ds.x[i]]}, label=str(ds.labels[i]), fold=split,
                       meta={"source": f"{path.name}/{split}/{i}"}, where=f"{path} ({split} {i})")
                for i in range(len(ds.labels))]
    return out


_TAR_FIELDS = ("json", "txt", "text", "caption", "cls", "label")


@register_data_kind("webdataset")
def read_webdataset(path: Path, *, modalities: Sequence[str] = ()) -> list[Record]:
    """webdataset shards: members sharing a key form one sample; media members go under `path` (several:
    `path` lists them), `.json` members are merged into the fields, `.txt`/`.caption` is the text, `.cls` the label."""
    tars = [path] if path.is_file() else sorted(path.glob("*.tar"))
    out: list[Record] = []
    for tar in tars:
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        size = tar.stat().st_size
        try:
            with tarfile.open(tar) as tf:
                for m in tf:
                    if m.isfile():
                        folder, base = os.path.split(m.name)
                        stem, _, ext = base.partition(".")
                        samples.setdefault(f"{folder}/{stem}" if folder else stem, {})[ext.lower()] = m
        except (tarfile.TarError, OSError, EOFError) as e:  # a truncated or corrupt shard: keep what was read
            out.append(_broken(f"{tar.stem}/#unreadable", str(tar), f"cannot read as a tar shard after "
                               f"{sum(map(len, samples.values()))} members ({e})"))
        for key, members in samples.items():
            fields: dict[str, Any] = {}
            media = []
            error = None
            for ext, m in sorted(members.items()):
                member = TarMember(str(tar), m.name, m.offset_data, m.size)
                if m.offset_data + m.size > size:
                    error = f"member {m.name} is truncated ({m.size} bytes declared)"
                elif ext in _TAR_FIELDS and m.size <= 1 << 20:
                    try:
                        raw = member.read().decode("utf-8")
                        value = json.loads(raw) if ext == "json" else raw.strip()
                    except (UnicodeDecodeError, json.JSONDecodeError) as e:
                        error = f"member {m.name}: expected UTF-8 {ext} ({e})"
                        continue
                    fields.update(value if ext == "json" and isinstance(value, dict) else {ext: value})
                else:
                    media.append(member)
            if error is not None:
                out.append(_broken(f"{tar.stem}/{key}", f"{tar}:{key}", error))
                continue
            text = fields.pop("txt", None) or fields.pop("text", None) or fields.pop("caption", None)
            label = fields.pop("cls", None) or fields.pop("label", None)
            try:
                rec = _row_record({k: v for k, v in fields.items() if k not in modalities}, tar.parent,
                                  f"{tar}:{key}", f"{tar.stem}/{key}", ())
            except ValueError as e:
                out.append(_broken(f"{tar.stem}/{key}", f"{tar}:{key}", str(e).replace(f"{tar}:{key}: ", "")))
                continue
            rec.key = f"{tar.stem}/{key}"
            rec.media = {"path": media} if media else {}
            rec.text = text if isinstance(text, str) else rec.text
            rec.label = str(label) if label is not None else rec.label
            rec.meta["source"] = f"{tar}:{key}"
            out.append(rec)
    return out


def _from_records(path: Path, modality: str | None) -> Any:
    """A labelled dataset from any other input-layer format (jsonl, tar shards, a glob) by the records' labels."""
    from .labelled import LabelledDataset, LabelledItem

    items = []
    for rec in read_records(path, modalities=[modality] if modality else ()):
        value = rec.input(modality) if modality else (rec.inputs("path") or [None])[0]
        if rec.label is not None and isinstance(value, str):
            items.append(LabelledItem(Path(value), rec.label, rec.fold, rec.group))
    return LabelledDataset(path if path.is_dir() else path.parent, items, sorted({it.label for it in items}),
                           path.suffix.lstrip(".") or "records")


def read_labelled(path: str | os.PathLike, *, modality: str | None = None, extensions: Sequence[str] | None = None,
                  folds: Iterable[str | int] | None = None) -> Any:
    """A `LabelledDataset` (files, labels, folds) from any labelled format: class folders, csv, ESC-50 and
    UrbanSound8K (`labelled.load_labelled`), or jsonl / tar shards by their records' labels. `modality` names the
    media field of jsonl rows (e.g. "imu" for `{"imu": "w.npy", "label": ...}`)."""
    from .labelled import load_labelled

    path = Path(path).expanduser()
    if path.suffix.lower() in (".jsonl", ".tar") or (path.is_dir() and detect_kind(path) == "webdataset"):
        ds = _from_records(path, modality)
        if not ds.items:
            raise ValueError(f"{path}: no record with a label and a {modality or 'media'} file")
        return ds.select_folds(folds) if folds is not None else ds
    return load_labelled(path, extensions=extensions, folds=folds)


def labelled_subset(records: Iterable[Record], where: str) -> list[Record]:
    """The records that carry a label (an error naming `where` when none does)."""
    out = [r for r in records if r.label is not None]
    if not out:
        raise ValueError(f"{where}: no record has a label (jsonl: a 'label' field; csv: a label column; folders: "
                         f"class subfolders)")
    return out


__all__ = ["DATA_KINDS", "BrokenInput", "Record", "TarMember", "TEXT_FIELDS", "detect_kind", "labelled_subset",
           "read_labelled", "read_records", "register_data_kind"]
