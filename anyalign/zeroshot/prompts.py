"""Class labels and prompt templates for zero-shot classification (checked, then turned into sentences).

A template holds one `{}` for the class phrase ("the sound of a {}"). Several templates form an ensemble whose
text embeddings are averaged per class (CLIP / CLAP prompt ensembling). The phrase of a class name is the name
with `_` and `-` read as spaces (ESC-50 `chirping_birds` -> "chirping birds").
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

DEFAULT_TEMPLATES: dict[str, list[str]] = {
    "audio": ["the sound of {}.", "a sound of {}.", "a recording of {}.", "this is the sound of {}.", "{}"],
    "image": ["a photo of a {}.", "a picture of a {}.", "an image of the {}.", "a close-up photo of a {}.", "{}"],
    "video": ["a video of {}.", "a video of a person {}.", "a clip showing {}.", "footage of {}.", "{}"],
}
FALLBACK_TEMPLATES = ["{}"]
#: audio encoders that hear speech: their adapters are bound to what was SAID, so the prompt is the words themselves
SPEECH_ENCODERS = ("whisper",)
SPEECH_TEMPLATES = ["{}", "{}."]


def default_templates(modality: str, encoder: str | None = None) -> list[str]:
    """The default prompt ensemble of a query modality (a bare `{}` for modalities without one); a speech encoder's
    audio (`encoder` in SPEECH_ENCODERS) gets the spoken words themselves, not "the sound of {}". IMU uses the
    caption templates adapters are trained with, so zero-shot prompts match training captions."""
    if modality == "audio" and encoder in SPEECH_ENCODERS:
        return list(SPEECH_TEMPLATES)
    if modality == "imu":
        from ..datasets.uea import DEFAULT_UEA_TEMPLATES

        return [t.replace("{label}", "{}") for t in DEFAULT_UEA_TEMPLATES]
    return list(DEFAULT_TEMPLATES.get(modality, FALLBACK_TEMPLATES))


def label_phrase(label: str) -> str:
    """The words a class name stands for: `dog_bark` -> "dog bark"; otherwise unchanged."""
    return re.sub(r"\s+", " ", re.sub(r"[_]+", " ", label)).strip()


def parse_labels(text: str | None = None, file: str | os.PathLike | None = None) -> list[str]:
    """Labels from a comma-separated string and/or a file (one label per line, `#` comments), validated."""
    labels: list[str] = []
    if text is not None:
        labels += [part.strip() for part in text.split(",")]
        if any(not part for part in labels):
            raise ValueError(f"--labels {text!r}: empty label (two commas in a row or a trailing comma)")
    if file is not None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: labels file not found (expected one label per line)")
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                labels.append(line)
    return check_labels(labels, source=str(file) if file is not None and text is None else "labels")


def check_labels(labels: Sequence[str], *, source: str = "labels") -> list[str]:
    """Reject an empty list, blank labels and duplicates (case-insensitive), naming the offenders."""
    labels = [str(label).strip() for label in labels]
    if not labels:
        raise ValueError(f"{source}: no labels given (pass --labels 'dog barking,rain' or --labels-file)")
    if any(not label for label in labels):
        raise ValueError(f"{source}: blank label in {labels!r}")
    if len(labels) < 2:
        raise ValueError(f"{source}: zero-shot classification needs at least two labels, got {labels!r}")
    seen: dict[str, str] = {}
    dups = []
    for label in labels:
        key = label_phrase(label).casefold()
        if key in seen:
            dups.append(f"{seen[key]!r} and {label!r}" if seen[key] != label else repr(label))
        seen.setdefault(key, label)
    if dups:
        raise ValueError(f"{source}: duplicate label(s): {', '.join(dups)}; each class must be named once")
    return labels


def check_templates(templates: Sequence[str]) -> list[str]:
    """Each template must contain exactly one `{}` placeholder; duplicates are dropped."""
    out: list[str] = []
    for t in templates:
        if t.count("{}") != 1 or re.search(r"\{(?!\})|(?<!\{)\}", t.replace("{}", "")):
            raise ValueError(f"template {t!r}: expected exactly one '{{}}' placeholder for the label "
                             f"(e.g. 'the sound of a {{}}') and no other braces")
        if t not in out:
            out.append(t)
    if not out:
        raise ValueError("no prompt templates given")
    return out


def class_prompts(labels: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Per class, every template filled with the class phrase: `[C][K]` sentences."""
    return [[t.replace("{}", label_phrase(label)) for t in templates] for label in labels]


__all__ = ["DEFAULT_TEMPLATES", "SPEECH_ENCODERS", "SPEECH_TEMPLATES", "check_labels", "check_templates",
           "class_prompts", "default_templates", "label_phrase", "parse_labels"]
