"""File io shared by the whole package: safetensors weights, JSON configs, atomic writes, pretrained sources.

Nothing here unpickles: `.pt`/`.pth`/`.bin` files are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the weight helpers only: index and JSON I/O need none
    import torch

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: temp files are created 0600, finished ones get the usual permissions


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success rename it over `path`, on error remove it (readers never see a
    half-written file or folder, and a failed write leaves the old one intact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, (0o777 if is_dir else 0o666) & ~_UMASK)
        if is_dir:
            replace_dir(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as e:  # the partial output goes; an error about the staging copy names the output instead
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        name = str(getattr(e, "filename", None) or "")
        if isinstance(e, OSError) and (e.filename is None or str(tmp) in name):  # disk full, permission denied ...
            if isinstance(e, shutil.Error) or e.strerror is None:  # copytree's list of failures: the first reason
                reasons = e.args[0] if e.args and isinstance(e.args[0], list) else [(None, None, str(e))]
                e = _errno_of(str(reasons[0][2]) if reasons else str(e))
            raise OSError(e.errno, e.strerror or str(e), name.replace(str(tmp), str(path)) or str(path)) from None
        if isinstance(e, ValueError) and str(tmp) in str(e):
            raise type(e)(str(e).replace(str(tmp), str(path))) from None
        raise


def _errno_of(text: str) -> OSError:
    """An OSError for a failure known only by its message (`[Errno 28] No space left on device: ...`)."""
    import errno

    for code in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM):
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code))
    return OSError(errno.EIO, text)


def replace_dir(folder: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put the finished `folder` at `path`: an existing `path` is moved aside first and removed only afterwards."""
    folder, path = Path(folder), Path(path)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(folder, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def is_artifact(path: str | os.PathLike, *, marker: str, marker_keys: Iterable[str] = (),
                own: str | None = None) -> bool:
    """True when folder `path` is wholly an artifact of one kind written by anyalign: `marker` is a JSON object
    holding `marker_keys` (the content, not only the name, is checked) and every entry's name matches the regex
    `own` (None: any), so a user's folder that merely holds a file of that name is not one."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink() or not (path / marker).is_file():
        return False
    try:
        data = json.loads((path / marker).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or any(k not in data for k in marker_keys):
        return False
    return own is None or all(re.fullmatch(own, p.name) for p in path.iterdir())


def check_replaceable(path: str | os.PathLike, *, marker: str, what: str, overwrite: bool = False,
                      marker_keys: Iterable[str] = (), own: str | None = None) -> None:
    """Refuse to replace `path` unless it is absent, an empty folder, or wholly an artifact of this kind (see
    `is_artifact`): no command deletes what it did not write. `overwrite` lifts the refusal."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink() and (
            not any(path.iterdir()) or is_artifact(path, marker=marker, marker_keys=marker_keys, own=own)):
        return
    if path.is_file() or path.is_symlink():
        kind = "a file"
    else:
        foreign = sorted(p.name for p in path.iterdir() if own is not None and not re.fullmatch(own, p.name))
        kind = (f"a folder holding files that are not an {what}'s ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''})" if foreign else f"a folder that is not an {what}")
    if not overwrite:
        raise ValueError(f"{path}: exists and is {kind}; refusing to replace it (choose another output, or pass "
                         f"--overwrite)")


def check_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], *, what: str = "output") -> None:
    """Refuse an `output` that is, contains or lies inside one of `inputs` (checked before anything is read:
    replacing it would destroy the input, or the next run would read its own output)."""
    out = Path(os.path.realpath(output))
    for item in inputs:
        src = Path(os.path.realpath(item))
        if out == src:
            relation = "is"
        elif src.is_relative_to(out):
            relation = "contains"
        elif out.is_relative_to(src) and src.is_dir():
            relation = "lies inside"
        else:
            continue
        raise ValueError(f"{what} {output}: {relation} the input {item}; write to a folder outside the inputs")


def cache_dir(name: str) -> Path:
    """`$ANYALIGN_CACHE/<name>`, else `~/.cache/anyalign/<name>`: where anyalign keeps what it can rebuild."""
    return Path(os.environ.get("ANYALIGN_CACHE") or Path.home() / ".cache" / "anyalign").expanduser() / name


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as pretty JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Write one JSON object per line (UTF-8, non-ASCII kept), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, with an error naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected a JSON file)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def save_weights(path: str | os.PathLike, state: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors, atomically (contiguous, de-aliased copies)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a state dict from safetensors, or from a torch file without unpickling arbitrary objects."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device=str(device))
        except Exception as e:  # noqa: BLE001 - a truncated or corrupt file: name it in one line
            raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt: {e})") from None
    if path.suffix in WEIGHT_SUFFIXES:
        try:
            obj = torch.load(path, map_location=device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - surface a readable reason
            raise ValueError(f"{path}: cannot read as a weights-only torch checkpoint ({e})") from None
        for key in ("state_dict", "model", "module"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
        return obj
    raise ValueError(f"{path}: unsupported weights format; expected one of {', '.join(WEIGHT_SUFFIXES)}")


@dataclass(frozen=True)
class PretrainedSource:
    """Where pretrained weights come from: a local file, a local folder, or a hub id (`hf-hub:org/name`)."""

    kind: str  # "file" | "dir" | "hub" | "tag"
    location: str


def resolve_pretrained(source: str | os.PathLike) -> PretrainedSource:
    """Classify a `pretrained=` argument: local paths win; `hf-hub:` prefixes and `org/name` ids are hub ids;
    anything else is a library tag (e.g. the open_clip tag `laion2b_s34b_b79k`)."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        return PretrainedSource("file", str(path))
    if path.is_dir():
        return PretrainedSource("dir", str(path))
    if text.startswith("hf-hub:"):
        return PretrainedSource("hub", text[len("hf-hub:") :])
    if text.startswith((".", "/", "~")) or text.endswith(WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"pretrained={text!r}: no such file or folder")
    if text.count("/") == 1:
        return PretrainedSource("hub", text)
    return PretrainedSource("tag", text)


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path

