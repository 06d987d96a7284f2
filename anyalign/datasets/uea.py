"""UEA multivariate time-series archives (e.g. BasicMotions): `<Name>_TRAIN/TEST.arff` (read with `scipy.io.arff`)
or the sktime `.ts` twins; missing values (`?`) become NaN."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: caption templates for activity labels (training captions and zero-shot prompts of IMU data)
DEFAULT_UEA_TEMPLATES = ["a person {label}.", "someone is {label}.", "a recording of a person {label}.",
                         "wearable sensor data of somebody {label}.", "a person who is {label}."]

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


# Sampling rates documented by the archives' own descriptions ("sampled once every tenth of a second").
_KNOWN_RATES = {"BasicMotions": 10.0}


def load_uea(root: str | os.PathLike, split: str = "train") -> UEADataset:
    """Read `<root>/<Name>_<SPLIT>.arff` (or `.ts`) of a UEA archive folder into `[N, C, T]` float32 series."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: UEA data set folder not found")
    tag = split.upper()
    files = sorted(root.glob(f"*_{tag}.arff")) or sorted(root.glob(f"*_{tag}.ts"))
    if not files:
        raise FileNotFoundError(f"{root}: no *_{tag}.arff or *_{tag}.ts file (expected a UEA archive folder)")
    path = files[0]
    series, labels, declared = _read_arff(path) if path.suffix == ".arff" else _read_ts(path)
    if not series:
        raise ValueError(f"{path}: no series after @data")
    shapes = {s.shape for s in series}
    if len(shapes) != 1:
        raise ValueError(f"{path}: series have different shapes {sorted(shapes)}; expected equal-length series")
    unknown = set(labels) - set(declared) if declared else set()
    if unknown:
        raise ValueError(f"{path}: labels {sorted(unknown)} are not among the declared classes {declared}")
    name = path.name.rsplit("_", 1)[0]
    return UEADataset(np.stack(series), labels, sorted(declared or set(labels)), _KNOWN_RATES.get(name))


def _read_arff(path: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Series `[C, T]`, labels and declared classes of a UEA ARFF file (relational channels + nominal class)."""
    from scipy.io import arff  # here: importing the package (every recipe does) must not cost scipy.io

    try:
        data, meta = arff.loadarff(str(path))
    except Exception as e:  # noqa: BLE001 - scipy raises ParseArffError, ValueError, IndexError... name the file
        detail = str(e) or "no @relation/@attribute header or no @data section"
        raise ValueError(f"{path}: not a readable ARFF file ({type(e).__name__}: {detail})") from None
    types = dict(zip(meta.names(), meta.types()))
    rel = [n for n, t in types.items() if t == "relational"]
    nominal = [n for n, t in types.items() if t == "nominal"]
    if len(rel) != 1 or not nominal:
        raise ValueError(f"{path}: expected one relational attribute (the channels) and a nominal class attribute, "
                         f"got {types}")
    label_attr = nominal[-1]
    series = [np.array(r.tolist(), dtype=np.float32).reshape(len(r), -1) for r in data[rel[0]]]  # [C, T] each
    labels = [v.decode() if isinstance(v, bytes) else str(v) for v in data[label_attr]]
    return series, labels, list(meta[label_attr][1])


def _read_ts(path: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Series `[C, T]`, labels and declared classes of an sktime `.ts` file (no timestamps)."""
    declared: list[str] = []
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                low = line.lower()
                if low.startswith("@timestamps") and low.split()[-1] == "true":
                    raise ValueError(f"{path}:{lineno}: .ts files with timestamps are not supported")
                if low.startswith("@classlabel"):
                    declared = line.split()[2:]
                in_data = low.startswith("@data")
                continue
            *dims, label = line.split(":")
            try:
                arr = np.array([[float("nan") if v == "?" else float(v) for v in d.split(",")] for d in dims],
                               dtype=np.float32)  # [C, T]
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: malformed .ts data line ({e})") from None
            if not dims or arr.ndim != 2:
                raise ValueError(f"{path}:{lineno}: expected 'v,v,...:v,v,...:label' with equal-length channels")
            series.append(arr)
            labels.append(label.strip())
    return series, labels, declared
