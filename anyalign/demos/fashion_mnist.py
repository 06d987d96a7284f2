"""Fashion-MNIST (Zalando, MIT): 70,000 real 28x28 grey product photos in 10 classes, fetched from Debian's
`dataset-fashion-mnist` without root (`apt-get download` + `dpkg -x`, as `fetch-assets` does for the sounds) and
cached once as PNG files plus a jsonl in the project's input format::

    $ANYALIGN_ASSETS/image/fashion-mnist/
        images/train/00000.png ... images/test/09999.png
        fashion_mnist.jsonl     {"image", "label", "key", "fold"} per line (paths relative here; no caption: the
                                class name is all the text there is, so recipes build captions from labels)
        <fold>-<n>pc[-s<seed>].jsonl / .csv   class-balanced subsets (`subset`), for extraction and evaluation

The folder is written atomically (a temporary sibling renamed into place), so it is either complete or absent.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import atomic_path

logger = logging.getLogger(__name__)

DEB_PACKAGE = "dataset-fashion-mnist"
DEB_MEMBER = "usr/share/datasets/fashion-mnist"
#: class names in label-id order (the dataset's own names)
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MANIFEST = "fashion_mnist.jsonl"
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def default_root() -> Path:
    """`$ANYALIGN_ASSETS/image/fashion-mnist` (default assets root `~/.cache/anyalign-assets`)."""
    from ..assets import assets_root

    return assets_root() / "image" / "fashion-mnist"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a (gzipped) IDX file: uint8 images `[N, H, W]` or labels `[N]`."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} values, the file holds {arr.size}")
    return arr.reshape(dims)


def fetch_deb(dest: str | os.PathLike) -> Path:
    """Download the Debian package and unpack its IDX files into `dest`; returns that folder."""
    from ..assets import download_deb

    return download_deb(DEB_PACKAGE, DEB_MEMBER, dest, "*.gz")


def _find_source(source: str | os.PathLike | None, scratch: Path) -> Path:
    for candidate in ([Path(source)] if source else []) + [Path("/usr/share/datasets/fashion-mnist")]:
        if all((candidate / name).is_file() for pair in _FILES.values() for name in pair):
            return candidate
    if source:
        raise FileNotFoundError(f"{source}: no Fashion-MNIST idx.gz files ({', '.join(_FILES['train'])}, ...)")
    return fetch_deb(scratch)


def ensure_fashion_mnist(root: str | os.PathLike | None = None, *, source: str | os.PathLike | None = None) -> Path:
    """The cached Fashion-MNIST folder (see the module docstring), made on first use; returns its path."""
    from PIL import Image

    root = Path(root) if root is not None else default_root()
    if (root / MANIFEST).is_file():
        return root
    with tempfile.TemporaryDirectory() as scratch, atomic_path(root, is_dir=True) as tmp:
        src = _find_source(source, Path(scratch))
        rows = []
        for fold, (images_name, labels_name) in _FILES.items():
            images, labels = read_idx(src / images_name), read_idx(src / labels_name)
            if len(images) != len(labels):
                raise ValueError(f"{src}: {len(images)} {fold} images but {len(labels)} labels")
            (tmp / "images" / fold).mkdir(parents=True)
            for i, (img, y) in enumerate(zip(images, labels)):
                rel = f"images/{fold}/{i:05d}.png"
                Image.fromarray(img, mode="L").save(tmp / rel, optimize=False)
                label = CLASSES[int(y)]
                rows.append({"image": rel, "label": label, "key": f"{fold}/{i:05d}", "fold": fold})
        (tmp / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in rows))
        logger.info("Fashion-MNIST: %d images -> %s", len(rows), root)
    return root


def read_manifest(root: str | os.PathLike) -> list[dict]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run ensure_fashion_mnist first)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def subset(root: str | os.PathLike, fold: str, per_class: int, *, seed: int = 0,
           classes: Sequence[str] | None = None) -> Path:
    """A class-balanced random subset of one fold, written beside the manifest as `<fold>-<n>pc[-s<seed>].jsonl`
    (for `anyalign extract`) and `.csv` (`path,label,fold`, for `anyalign eval zeroshot`); returns the jsonl."""
    root = Path(root)
    if fold not in _FILES:
        raise ValueError(f"fold: expected one of {', '.join(_FILES)}, got {fold!r}")
    wanted = list(classes) if classes is not None else CLASSES
    unknown = sorted(set(wanted) - set(CLASSES))
    if unknown:
        raise ValueError(f"classes: unknown Fashion-MNIST class(es) {unknown}; expected some of {CLASSES}")
    stem = f"{fold}-{per_class}pc" + (f"-s{seed}" if seed else "") + ("" if classes is None else
                                                                     f"-{len(wanted)}cls")
    out = root / f"{stem}.jsonl"
    if out.is_file() and out.with_suffix(".csv").is_file():
        return out
    rows = [r for r in read_manifest(root) if r["fold"] == fold]
    rng = np.random.default_rng(seed)
    picked = []
    for c in wanted:
        idx = [i for i, r in enumerate(rows) if r["label"] == c]
        if len(idx) < per_class:
            raise ValueError(f"per_class={per_class}: class {c!r} has only {len(idx)} {fold} images")
        picked += sorted(rng.choice(idx, per_class, replace=False).tolist())
    chosen = [rows[i] for i in sorted(picked)]
    with atomic_path(out) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    with atomic_path(out.with_suffix(".csv")) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "fold"])
        w.writerows([r["image"], r["label"], r["fold"]] for r in chosen)
    return out


__all__ = ["CLASSES", "MANIFEST", "default_root", "ensure_fashion_mnist", "fetch_deb", "read_idx", "read_manifest",
           "subset"]
