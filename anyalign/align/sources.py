"""Reading one data source of a recipe into records: `{"media": {m: [item]}, "caption", "label", "key",
"conversation"}`, from the input layer (`anyalign.datasets`) or from cached feature shards, with the recipe's
deterministic train/eval split by a hash of each key."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .captions import keep_classes
from .config import DataSource


def _split_part(key: str, holdout: float, split: str) -> bool:
    """Deterministic train/eval split by a hash of the key."""
    if holdout <= 0:
        return True
    h = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return (h < holdout) == (split == "eval")


def _stem_caption(path: Path) -> str:
    return re.sub(r"[-_.]+", " ", path.stem).strip()


def source_modality(src: DataSource) -> str | None:
    """The modality a source feeds: its `modality`, a UEA archive's default (imu), or a feature manifest's."""
    if src.modality or src.kind not in ("uea", "features"):
        return src.modality
    if src.kind == "uea":
        return "imu"
    from ..features import read_manifest

    return read_manifest(src.path).get("modality")


def read_source(src: DataSource, media_names: Sequence[str]) -> list[dict[str, Any]]:
    """Records of one source: `{"media": {m: [item]}, "caption", "label", "key", "conversation"}`."""
    path = Path(src.path).expanduser()
    if src.kind == "files":
        if not src.modality:
            raise ValueError(f"data source {path}: kind 'files' needs a modality")
        files = sorted(p for p in path.glob(src.glob) if p.is_file())
        records = [{"media": {src.modality: [str(p)]}, "caption": _stem_caption(p), "label": None, "key": p.name}
                   for p in files if _split_part(p.name, src.holdout, src.split)]
    elif src.kind == "features":
        records = _read_features(path, src)
    else:
        records = _read_records(path, src, media_names)
    if src.classes is not None:  # the unseen-class protocol trains on a subset of the classes
        records = keep_classes(records, src.classes, f"data source {path} ({src.kind}, split {src.split})")
    if src.limit is not None:
        records = records[: src.limit]
    if not records:
        raise ValueError(f"data source {path} ({src.kind}, split {src.split}): no examples")
    return records


def _read_records(path: Path, src: DataSource, media_names: Sequence[str]) -> list[dict[str, Any]]:
    """Examples from any input-layer format (jsonl, csv, folders, tar shards, UEA ...): media per modality (an
    untyped `path` counts for `src.modality`), a caption (`text`) or label, or a LLaVA-style `conversations` list
    with `<modality>` placeholders. UEA archives keep `split` as their fold; `folds` keeps only those folds."""
    from ..datasets.records import read_records

    names = [src.modality] if src.kind == "uea" and src.modality else list(media_names)
    records = []
    for rec in read_records(path, kind=src.kind, modalities=names):
        where = rec.where or f"{path} ({rec.key})"
        if rec.error is not None:  # an unreadable row or member: skipped (read_records logs the count)
            continue
        media = {m: rec.media[m] for m in media_names if m in rec.media}
        if not media and src.modality and "path" in rec.media:
            media = {src.modality: rec.media["path"]}
        if src.kind == "uea" and rec.fold != ("test" if src.split in ("test", "eval") else "train"):
            continue
        if src.folds is not None and rec.fold not in src.folds:
            continue
        if not media:
            raise ValueError(f"{where}: no media field (expected one of {', '.join(media_names)}"
                             + (", or 'path' with the source's modality)" if not src.modality else ")"))
        if src.task == "instruct" and not rec.conversations:
            raise ValueError(f"{where}: instruct data needs a 'conversations' list")
        caption = rec.meta.get("caption", rec.text)
        if src.task != "instruct" and caption is None and rec.label is None:
            raise ValueError(f"{where}: expected a 'text'/'caption' (or 'label') field")
        if src.kind == "uea" or _split_part(rec.key, src.holdout, src.split):
            records.append({"media": media, "caption": caption, "label": rec.label, "key": rec.key,
                            "conversation": rec.conversations, "where": where, "group": rec.group})
    return records


def _read_features(path: Path, src: DataSource) -> list[dict[str, Any]]:
    """Records of a feature folder. The source's `modality` names the adapter the features feed and may differ from
    the encoder's input kind in the manifest (`modality: speech` over Whisper features of `audio`): the items and the
    conversations' `<audio>` placeholders are then renamed to `<speech>`. build.py checks the encoder matches."""
    from ..features import load_features, read_manifest

    manifest = read_manifest(path)
    stored = manifest.get("modality")
    m = src.modality or stored
    records = []
    for r in load_features(path, dtype=None):  # float16 as stored: half the memory, made float32 once per batch
        meta = r.meta or {}
        key = str(r.key)
        if _split_part(key, src.holdout, src.split):
            conv = meta.get("conversations") or meta.get("messages")
            if conv and stored and m != stored:
                conv = [_rename_placeholder(t, stored, m) for t in conv]
            records.append({"media": {m: [r]},
                            "caption": meta.get("caption", meta.get("text")),  # as jsonl rows: caption or text
                            "label": meta.get("label"), "key": key, "conversation": conv})
    return records


def _rename_placeholder(turn: Any, old: str, new: str) -> Any:
    """A conversation turn with `<old>` placeholders written `<new>` (other turns and fields unchanged)."""
    if not isinstance(turn, dict):
        return turn
    return {k: v.replace(f"<{old}>", f"<{new}>") if k in ("value", "content") and isinstance(v, str) else v
            for k, v in turn.items()}


__all__ = ["read_source", "source_modality"]
