"""Caption diversity without new data: a pool of captions per class (or per free caption) to draw from.

A data source's `captions:` section fills the pool from `templates` (default: the source's `caption_templates`),
`synonyms` per class, and `paraphrases` written once offline by a frozen LLM and filtered in the anchor space
(`anyalign data paraphrase`): phrases for a class go through the templates, paraphrases of a free caption are whole
sentences. Zero-shot class prompts stay the source's own phrasing, so accuracy with and without the extra captions is
measured against the same class embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class CaptionSpec:
    """`data.*.captions`: where a source's training captions come from (all optional)."""

    templates: list[str] | None = None  # default: the source's caption_templates
    synonyms: dict[str, list[str]] = field(default_factory=dict)  # class name -> more phrases for it
    paraphrases: str | None = None  # a paraphrase file (`anyalign data paraphrase`), e.g. ${RECIPE_DIR}/data/x.json
    use_templates: bool = True  # False: only the first template (free captions: the caption as it is)


class CaptionPool:
    """Every caption one source can pair with a record; built once per source."""

    def __init__(self, spec: CaptionSpec | None, templates: list[str], label_text: dict[str, str], *,
                 where: str = "captions") -> None:
        self.spec = spec or CaptionSpec()
        self.templates = list(self.spec.templates or templates)
        self.label_text = dict(label_text)
        self.where = where
        for t in self.templates:
            try:
                t.format(label="x", caption="x")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"{where}.templates: {t!r} may only use {{label}} and {{caption}} ({e})") from None
        for label, phrases in self.spec.synonyms.items():
            if not isinstance(phrases, list) or not all(isinstance(p, str) and p.strip() for p in phrases):
                raise ValueError(f"{where}.synonyms.{label}: expected a list of phrases, got {phrases!r}")
        self.paraphrases: dict[str, list[str]] = {}
        if self.spec.paraphrases:
            from ..datasets.paraphrase import read_paraphrases

            path = Path(self.spec.paraphrases).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{where}.paraphrases: {path}: no such file (write it with `anyalign data "
                                        f"paraphrase RECIPE --output {path}`)")
            self.paraphrases = read_paraphrases(path)

    def phrase(self, label: Any) -> str:
        """The class's own phrase (`label_text`, else the lower-cased class name)."""
        return self.label_text.get(str(label), str(label).lower())

    def phrases(self, label: Any) -> list[str]:
        """The class phrase first, then its synonyms, then its LLM paraphrases."""
        return list(dict.fromkeys([self.phrase(label), *self.spec.synonyms.get(str(label), []),
                                   *self.paraphrases.get(str(label), [])]))

    def captions(self, rec: dict[str, Any]) -> list[str]:
        """All captions of a record, in a fixed order (the first is the plain one)."""
        label, caption = rec.get("label"), rec.get("caption")
        if caption is None and label is None:
            return []
        if caption is not None:  # a free caption: its templates, then its own paraphrases
            phrase = self.phrase(label) if label is not None else ""
            base = [t.format(caption=caption, label=phrase) for t in self.templates] if self.spec.use_templates \
                else [caption]
            extra = self.paraphrases.get(str(caption), [])
        else:
            phrases = self.phrases(label)
            templates = self.templates if self.spec.use_templates else self.templates[:1]
            base = [t.format(caption=p, label=p) for p in phrases for t in templates]
            extra = []
        return list(dict.fromkeys([*base, *extra]))

    def class_prompts(self, label: str) -> list[str]:
        """Zero-shot prompts of a class: the templates filled with its own phrase (the training phrasing)."""
        p = self.phrase(label)
        return [t.format(caption=p, label=p) for t in self.templates]

    def record(self, labels: list[str]) -> dict[str, Any]:
        """A JSON summary for the run folder: per class, every caption the pool can draw."""
        return {"templates": self.templates, "synonyms": self.spec.synonyms, "paraphrases": self.spec.paraphrases,
                "per_class": {label: self.captions({"label": label, "caption": None}) for label in labels}}


def captions_used(train_set: Any, eval_sets: list[Any] = ()) -> dict[str, Any]:
    """What a run paired its training items with and classified against (written to the run's `captions.json`):
    per training source its classes and every caption it can draw; per eval source the zero-shot class prompts."""
    train = []
    for si, src in enumerate(train_set.sources):
        labels = sorted({str(r["label"]) for i, r in train_set.records if i == si and r.get("label") is not None})
        train.append({"path": src.path, "classes": labels, **train_set.caption_pool(si).record(labels)})
    evals = [{"path": ds.sources[0].path, "classes": list(ds.labels), "class_prompts": ds.class_prompts()}
             for ds in eval_sets if ds.labels]
    return {"train": train, "eval": evals}


def keep_classes(records: list[dict[str, Any]], classes: list[str], where: str) -> list[dict[str, Any]]:
    """Only the records of `classes` (`data.*.classes`); a class absent from the data is an error."""
    present = {str(r.get("label")) for r in records if r.get("label") is not None}
    missing = [c for c in classes if c not in present]
    if missing:
        raise ValueError(f"{where}: classes {missing} not in the data (labels: {', '.join(sorted(present))})")
    wanted = set(classes)
    return [r for r in records if r.get("label") is not None and str(r["label"]) in wanted]


__all__ = ["CaptionPool", "CaptionSpec", "captions_used", "keep_classes"]
