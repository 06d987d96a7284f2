"""webdataset `.tar` shards as records of the input layer (see `records.py`)."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .readers import broken, row_record
from .records import Record, TarMember, register_data_kind

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
