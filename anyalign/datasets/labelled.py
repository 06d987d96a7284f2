"""Labelled file collections for classification benchmarks: class folders, csv manifests, ESC-50, UrbanSound8K.

`load_labelled(path)` recognises the layout and returns the items (file, class name, optional fold) with the
class names in their canonical order (ESC-50 / UrbanSound8K: by class id; otherwise sorted):

- a folder of class folders: `root/<class>/<file>` (files of any depth below the class folder);
- a csv manifest with a header `path,label[,fold]` (`file`/`filename` and `class`/`category` also accepted),
  paths relative to the csv's folder;
- ESC-50: `root/meta/esc50.csv` (`filename,fold,target,category,...`) with the clips in `root/audio/`;
- UrbanSound8K: `root/metadata/UrbanSound8K.csv` (`slice_file_name,...,fold,classID,class`) with the clips in
  `root/audio/fold<N>/`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

ESC50_CSV = Path("meta") / "esc50.csv"
US8K_CSV = Path("metadata") / "UrbanSound8K.csv"
PATH_COLUMNS = ("path", "file", "filename", "filepath")
LABEL_COLUMNS = ("label", "class", "category")


@dataclass(frozen=True)
class LabelledItem:
    """One labelled file."""

    path: Path
    label: str
    fold: str | None = None
    group: str | None = None  # what belongs together (recording, speaker): kept on one side of a probe split


@dataclass
class LabelledDataset:
    """Labelled files plus their class names (the order of `classes` defines the label ids)."""

    root: Path
    items: list[LabelledItem]
    classes: list[str]
    layout: str  # "folders" | "csv" | "esc50" | "urbansound8k"
    skipped: list[str] = field(default_factory=list)  # files left out (e.g. by extension), for the report

    def __len__(self) -> int:
        return len(self.items)

    @property
    def folds(self) -> list[str]:
        """The folds present, in natural order (empty when the layout has none)."""
        return sorted({it.fold for it in self.items if it.fold is not None}, key=_natural_key)

    @property
    def paths(self) -> list[Path]:
        return [it.path for it in self.items]

    @property
    def targets(self) -> list[int]:
        """Label ids (indices into `classes`)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[it.label] for it in self.items]

    def select_folds(self, folds: Iterable[str | int]) -> LabelledDataset:
        """Only the items of the given folds (classes keep their order and ids)."""
        wanted = [str(f) for f in folds]
        if not self.folds:
            raise ValueError(f"{self.root}: the {self.layout} layout has no folds; drop --fold")
        unknown = [f for f in wanted if f not in self.folds]
        if unknown:
            raise ValueError(f"{self.root}: no fold {', '.join(unknown)} (folds: {', '.join(self.folds)})")
        return replace(self, items=[it for it in self.items if it.fold in wanted])


def _natural_key(text: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = [h.strip() for h in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: cannot read csv ({e})") from None
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]
    return header, rows


def _need(path: Path, header: Sequence[str], columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path}: not an {what} metadata file: missing column(s) {', '.join(missing)} "
                         f"(header: {', '.join(header) or 'empty'})")


def _by_id(path: Path, rows: list[dict[str, str]], id_col: str, name_col: str) -> list[str]:
    """Class names ordered by their integer id, checking that each id names one class."""
    names: dict[int, str] = {}
    for n, row in enumerate(rows, 2):
        try:
            cid = int(row[id_col])
        except ValueError:
            raise ValueError(f"{path}:{n}: column {id_col!r}: expected an integer, got {row[id_col]!r}") from None
        if names.setdefault(cid, row[name_col]) != row[name_col]:
            raise ValueError(f"{path}:{n}: class id {cid} is both {names[cid]!r} and {row[name_col]!r}")
    return [names[i] for i in sorted(names)]


def esc50_dataset(root: Path) -> LabelledDataset:
    """ESC-50 from `root/meta/esc50.csv` (classes by their `target` id, five folds)."""
    meta = root / ESC50_CSV
    header, rows = _read_csv(meta)
    _need(meta, header, ("filename", "fold", "target", "category"), "ESC-50")
    items = [LabelledItem(root / "audio" / r["filename"], r["category"], r["fold"]) for r in rows]
    return LabelledDataset(root, items, _by_id(meta, rows, "target", "category"), "esc50")


def urbansound8k_dataset(root: Path) -> LabelledDataset:
    """UrbanSound8K from `root/metadata/UrbanSound8K.csv` (classes by their `classID`, ten folds)."""
    meta = root / US8K_CSV
    header, rows = _read_csv(meta)
    _need(meta, header, ("slice_file_name", "fold", "classID", "class"), "UrbanSound8K")
    items = [LabelledItem(root / "audio" / f"fold{r['fold']}" / r["slice_file_name"], r["class"], r["fold"])
             for r in rows]
    return LabelledDataset(root, items, _by_id(meta, rows, "classID", "class"), "urbansound8k")


def manifest_dataset(path: Path) -> LabelledDataset:
    """A csv manifest `path,label[,fold]` (or ESC-50's own csv); an error names the columns it needs."""
    header, rows = _read_csv(path)
    if {"filename", "fold", "target", "category"} <= set(header) and path.parent.name == "meta":
        return esc50_dataset(path.parent.parent)  # the ESC-50 csv itself was given
    path_col = next((c for c in PATH_COLUMNS if c in header), None)
    label_col = next((c for c in LABEL_COLUMNS if c in header), None)
    if path_col is None or label_col is None:
        raise ValueError(f"{path}: a csv manifest needs a header with a path column ({'/'.join(PATH_COLUMNS)}) "
                         f"and a label column ({'/'.join(LABEL_COLUMNS)}), optionally 'fold'; "
                         f"got {', '.join(header) or 'no header'}")
    items = []
    for n, row in enumerate(rows, 2):
        if not row.get(path_col) or not row.get(label_col):
            raise ValueError(f"{path}:{n}: empty {path_col!r} or {label_col!r}")
        file = Path(row[path_col]).expanduser()
        items.append(LabelledItem(file if file.is_absolute() else path.parent / file, row[label_col],
                                  row.get("fold") or None))
    return LabelledDataset(path.parent, items, sorted({it.label for it in items}), "csv")


def _folders(root: Path, extensions: Sequence[str] | None) -> LabelledDataset:
    items, skipped = [], []
    class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: d.name)
    for d in class_dirs:
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                file = Path(dirpath) / name
                if extensions is not None and file.suffix.lower() not in extensions:
                    skipped.append(str(file))
                    continue
                items.append(LabelledItem(file, d.name))
    classes = sorted({it.label for it in items})
    return LabelledDataset(root, items, classes, "folders", skipped)


def load_labelled(path: str | os.PathLike, *, extensions: Sequence[str] | None = None,
                  folds: Iterable[str | int] | None = None) -> LabelledDataset:
    """Read a labelled dataset in any supported layout (see the module docstring); other formats of the input
    layer (jsonl, tar shards) through `anyalign.datasets.records.read_labelled`.

    Args:
        extensions: class-folder layout only: keep files with these suffixes (lower case, with dot); others
            are listed in `skipped`.
        folds: keep only these folds (ESC-50 / UrbanSound8K / a manifest with a fold column).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset not found (expected a folder of class folders, a csv manifest, "
                                f"or an ESC-50 / UrbanSound8K folder)")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"{path}: expected a csv manifest (path,label[,fold]) or a dataset folder")
        ds = manifest_dataset(path)
    elif (path / ESC50_CSV).is_file():
        ds = esc50_dataset(path)
    elif (path / US8K_CSV).is_file():
        ds = urbansound8k_dataset(path)
    else:
        ds = _folders(path, [e.lower() for e in extensions] if extensions is not None else None)
    if not ds.items:
        hint = f" with suffix {', '.join(extensions)}" if extensions and ds.layout == "folders" else ""
        raise ValueError(f"{path}: no labelled files found{hint} ({ds.layout} layout: expected "
                         f"{'<class>/<file>' if ds.layout == 'folders' else 'rows in the metadata csv'})")
    if len(ds.classes) < 2:
        raise ValueError(f"{path}: found only one class ({ds.classes[0]!r}); classification needs at least two")
    if folds is not None:
        ds = ds.select_folds(folds)
    return ds


__all__ = ["ESC50_CSV", "LABEL_COLUMNS", "PATH_COLUMNS", "US8K_CSV", "LabelledDataset", "LabelledItem",
           "esc50_dataset", "load_labelled", "manifest_dataset", "urbansound8k_dataset"]
