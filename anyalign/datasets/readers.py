"""The built-in readers of the input layer (one `@register_data_kind` function per format; see `records.py`):
line files (jsonl, txt), csv manifests, folders and globs, ESC-50, UrbanSound8K, UEA archives and webdataset shards."""

from __future__ import annotations

import csv
import glob as globlib
import json
import os
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .records import Record, TarMember, register_data_kind

PATH_COLUMNS = ("path", "file", "filename", "filepath")
LABEL_COLUMNS = ("label", "class", "category")

#: fields of a jsonl/csv row that are not media (everything else not named after a modality is kept as `meta`)
_SPECIAL = {"text", "caption", "label", "key", "id", "fold", "group", "conversations", "messages", "path", "source"}


def _resolve(base: Path, value: str) -> str:
    p = Path(os.path.expandvars(value)).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def row_record(row: dict[str, Any], base: Path, where: str, default_key: str,
               modalities: Sequence[str]) -> Record:
    """One jsonl row (or a tar sample's fields) as a record; media paths resolved against `base`."""
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
    """One JSON object per line (fields: README, "Data formats"); a line that is not one becomes an error record."""
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
            out.append(row_record(row, path.parent, where, str(n - 1), modalities))
        except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
            reason = f"not valid JSON ({e})" if isinstance(e, json.JSONDecodeError) else \
                str(e).replace(f"{where}: ", "")
            out.append(broken(f"line{n}", where, reason))
    return out


def broken(key: str, where: str, reason: str) -> Record:
    """A record standing for an unreadable row or member (read_records counts and logs them)."""
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


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of a csv file (cells stripped), with an error naming the file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = [[c.strip() for c in row] for row in csv.reader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: cannot read csv ({e})") from None
    return (table[0] if table else []), table[1:]


@register_data_kind("csv")
def read_csv(path: Path, *, modalities: Sequence[str] = ()) -> list[Record]:
    """A header row `path,label[,fold][,text][,group]` (or ESC-50's own csv)."""
    header, rows = _read_csv(path)
    if {"filename", "fold", "target", "category"} <= set(header) and path.parent.name == "meta":
        return read_esc50(path.parent.parent)  # the ESC-50 csv itself was given
    path_col = next((c for c in PATH_COLUMNS if c in header), None)
    label_col = next((c for c in LABEL_COLUMNS if c in header), None)
    if path_col is None or label_col is None:
        raise ValueError(f"{path}: a csv manifest needs a header with a path column ({'/'.join(PATH_COLUMNS)}) "
                         f"and a label column ({'/'.join(LABEL_COLUMNS)}), optionally 'fold'; "
                         f"got {', '.join(header) or 'no header'}")
    out = []
    for n, cells in enumerate(rows, 2):
        where = f"{path}:{n}"
        if not any(cells):
            continue
        if len(cells) != len(header):
            out.append(broken(f"row{n}", where, f"{len(cells)} columns, the header has {len(header)}"))
            continue
        row = {h: c for h, c in zip(header, cells) if c}  # empty cells are absent fields
        if path_col not in row or label_col not in row:
            out.append(broken(f"row{n}", where, f"empty {path_col!r} or {label_col!r}"))
            continue
        row["path"], row["label"] = row.pop(path_col), row.pop(label_col)
        file = Path(_resolve(path.parent, row["path"]))
        out.append(row_record(row, path.parent, where, _rel(file, path.parent), modalities))
    return out


def _rel(file: Path, root: Path) -> str:
    return Path(file).relative_to(root).as_posix() if Path(file).is_relative_to(root) else str(file)


def _metadata(root: Path, meta: Path, need: tuple[str, str, str, str], file: Callable[[dict[str, str]], Path],
              kind: str) -> list[Record]:
    """The clips of a benchmark's metadata csv (columns `need`: file name, fold, class id, class name), each record
    holding its `class_id` (the classes' canonical order), checking that each id names one class."""
    table = root / meta
    header, rows = _read_csv(table)
    missing = [c for c in need if c not in header]
    if missing:
        raise ValueError(f"{table}: not an {kind} metadata file: missing column(s) {', '.join(missing)} "
                         f"(header: {', '.join(header) or 'empty'})")
    _, fold_col, id_col, name_col = need
    names: dict[int, str] = {}
    out = []
    for n, cells in enumerate(rows, 2):
        row = dict(zip(header, [*cells, *[""] * (len(header) - len(cells))]))
        try:
            cid = int(row[id_col])
        except ValueError:
            raise ValueError(f"{table}:{n}: column {id_col!r}: expected an integer, got {row[id_col]!r}") from None
        if names.setdefault(cid, row[name_col]) != row[name_col]:
            raise ValueError(f"{table}:{n}: class id {cid} is both {names[cid]!r} and {row[name_col]!r}")
        f = file(row)
        out.append(Record(_rel(f, root), {"path": [str(f)]}, None, row[name_col], row[fold_col],
                          meta={"source": str(f), "class_id": cid}, where=f"{root} ({kind})"))
    return out


@register_data_kind("esc50")
def read_esc50(path: Path, *, modalities: Sequence[str] = ()) -> list[Record]:
    """ESC-50: `meta/esc50.csv` + `audio/`, five folds."""
    return _metadata(path, Path("meta") / "esc50.csv", ("filename", "fold", "target", "category"),
                     lambda r: path / "audio" / r["filename"], "ESC-50")


@register_data_kind("urbansound8k")
def read_urbansound8k(path: Path, *, modalities: Sequence[str] = ()) -> list[Record]:
    """UrbanSound8K: `metadata/UrbanSound8K.csv` + `audio/fold<N>/`, ten folds."""
    return _metadata(path, Path("metadata") / "UrbanSound8K.csv", ("slice_file_name", "fold", "classID", "class"),
                     lambda r: path / "audio" / f"fold{r['fold']}" / r["slice_file_name"], "UrbanSound8K")


@register_data_kind("folder")
def read_folder(path: Path, *, modalities: Sequence[str] = ()) -> list[Record]:
    """Every file below `path` (hidden ones skipped); files in class folders `path/<class>/...` get that label, files
    at the top level none."""
    files = sorted(f for f in path.rglob("*") if f.is_file() and not any(p.startswith(".") for p in
                                                                            f.relative_to(path).parts))
    return [Record(f.relative_to(path).as_posix(), {"path": [str(f)]},
                   label=f.relative_to(path).parts[0] if f.parent != path else None,
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
            out.append(broken(f"{tar.stem}/#unreadable", str(tar), f"cannot read as a tar shard after "
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
                out.append(broken(f"{tar.stem}/{key}", f"{tar}:{key}", error))
                continue
            text = fields.pop("txt", None) or fields.pop("text", None) or fields.pop("caption", None)
            label = fields.pop("cls", None) or fields.pop("label", None)
            try:
                rec = row_record({k: v for k, v in fields.items() if k not in modalities}, tar.parent,
                                  f"{tar}:{key}", f"{tar.stem}/{key}", ())
            except ValueError as e:
                out.append(broken(f"{tar.stem}/{key}", f"{tar}:{key}", str(e).replace(f"{tar}:{key}: ", "")))
                continue
            rec.key = f"{tar.stem}/{key}"
            rec.media = {"path": media} if media else {}
            rec.text = text if isinstance(text, str) else rec.text
            rec.label = str(label) if label is not None else rec.label
            rec.meta["source"] = f"{tar}:{key}"
            out.append(rec)
    return out
