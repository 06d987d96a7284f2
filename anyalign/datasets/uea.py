"""Reader for UEA multivariate time-series archives in ARFF form (e.g. BasicMotions, the smartwatch IMU set).

A UEA ARFF file has one relational attribute (the channels) and a class attribute; each data line is
`'c0_t0,c0_t1,...\\nc1_t0,...',Label`. scipy's ARFF reader does not parse relational attributes, hence this
small reader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class UEADataset:
    """Series `x` `[N, C, T]` float32, their `labels`, and the sorted class names."""

    x: np.ndarray
    labels: list[str]
    classes: list[str]
    sample_rate: float | None = None  # Hz, when the archive documents it

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> np.ndarray:
        """Integer class index per series (into `classes`)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)


# Sampling rates documented by the archives' own descriptions.
_KNOWN_RATES = {"BasicMotions": 10.0}


def load_uea(root: str | os.PathLike, split: str = "train") -> UEADataset:
    """Read `<root>/<Name>_<SPLIT>.arff` (the folder name is the data set name)."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: UEA data set folder not found")
    files = sorted(root.glob(f"*_{split.upper()}.arff"))
    if not files:
        raise FileNotFoundError(f"{root}: no *_{split.upper()}.arff file (expected a UEA archive folder)")
    path = files[0]
    series, labels, classes = _read_arff(path)
    name = path.name.rsplit("_", 1)[0]
    return UEADataset(series, labels, sorted(classes), _KNOWN_RATES.get(name))


def _read_arff(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    classes: list[str] = []
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    for lineno, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        low = line.lower()
        if not in_data:
            if low.startswith("@attribute") and "{" in line and "relational" not in low:
                classes = [c.strip().strip("'\"") for c in line[line.index("{") + 1 : line.rindex("}")].split(",")]
            elif low.startswith("@data"):
                in_data = True
            continue
        try:
            body, label = line.rsplit(",", 1)
            rows = body.strip().strip("'\"").split("\\n")
            arr = np.array([[float(v) for v in r.split(",")] for r in rows], dtype=np.float32)  # [C, T]
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: malformed UEA data line ({e})") from None
        series.append(arr)
        labels.append(label.strip().strip("'\""))
    if not series:
        raise ValueError(f"{path}: no data lines after @data")
    shapes = {s.shape for s in series}
    if len(shapes) != 1:
        raise ValueError(f"{path}: series have different shapes {sorted(shapes)}; expected equal-length series")
    unknown = set(labels) - set(classes) if classes else set()
    if unknown:
        raise ValueError(f"{path}: labels {sorted(unknown)} are not among the declared classes {classes}")
    return np.stack(series), labels, classes or sorted(set(labels))
