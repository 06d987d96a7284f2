"""`anyalign data paraphrase`: write the LLM paraphrase file of one data source of a recipe (read back by
`anyalign.align.captions`). A data recipe of the demos: it drives a recipe's data (align), the evaluation phrasings
(zeroshot) and a generator LLM (datasets/paraphrase.py), so it sits above them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..align.captions import CaptionPool, CaptionSpec
from ..align.sources import read_source
from ..datasets.uea import DEFAULT_UEA_TEMPLATES

#: how much nearer (cosine) a rewrite must be to its own class than to any other class to be kept
DEFAULT_MARGIN = 0.05


def paraphrase_source(recipe: Any, output: str | Path, *, part: str = "train", index: int = 0,
                      llm: str | Path, gguf_file: str | None = None, n: int = 8, seed: int = 0,
                      margin: float = DEFAULT_MARGIN, min_own: float = 0.5, eval_phrasings: str | Path | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Write the paraphrase file of one data source of a recipe: the frozen LLM rewrites every class phrase (and
    synonym), the recipe's text anchor filters the rewrites (`anyalign.datasets.paraphrase.filter_paraphrases`:
    margin, other class named, evaluation phrasing repeated; `eval_phrasings` is a phrasing file as read by
    `anyalign eval zeroshot --labels-file`, all of its sets but `training`). Returns a summary with the counts of
    dropped rewrites per reason."""
    import dataclasses

    import torch.nn.functional as F

    from ..datasets.paraphrase import filter_summary, load_generator, paraphrase_classes, write_paraphrases
    from ..zeroshot.protocols import read_phrasings

    sources = getattr(recipe.data, part)
    if not 0 <= index < len(sources):
        raise ValueError(f"data.{part}[{index}]: the recipe has {len(sources)} {part} source(s)")
    src = sources[index]
    if "text" not in recipe.anchors:
        raise ValueError("anchors.text: the paraphrase filter needs the recipe's text anchor")
    spec = dataclasses.replace(src.captions or CaptionSpec(), paraphrases=None)  # the file is being (re)written
    records = read_source(src, [src.modality or "imu", *recipe.adapters])
    labels = sorted({str(r["label"]) for r in records if r.get("label") is not None})
    if len(labels) < 2:
        raise ValueError(f"data.{part}[{index}] ({src.path}): paraphrases are per class; found {len(labels)} "
                         f"class(es)")
    templates = DEFAULT_UEA_TEMPLATES if src.kind == "uea" and src.caption_templates == ["{caption}"] \
        else src.caption_templates
    pool = CaptionPool(spec, templates, src.label_text, where=f"data.{part}[{index}].captions")
    phrases = {label: pool.phrases(label) for label in labels}
    held = []
    if eval_phrasings is not None:
        sets = read_phrasings(eval_phrasings, labels)
        held = sorted({p for name, per in sets.items() if name != "training" for ps in per.values() for p in ps})
    template = pool.templates[0].replace("{label}", "{}").replace("{caption}", "{}")
    anchor = recipe.anchors["text"].encoder
    text = anchor.build()

    def embed(texts: list[str]) -> Any:
        return F.normalize(text(texts).pooled.float(), dim=-1)

    model, tok = load_generator(llm, gguf_file=gguf_file)
    kept, dropped = paraphrase_classes(model, tok, phrases, embed, n=n, seed=seed, margin=margin, min_own=min_own,
                                       template=template, progress=progress, eval_phrasings=held)
    write_paraphrases(output, phrases, kept, dropped,
                      generator={"llm": str(llm), "gguf_file": gguf_file, "n": n, "seed": seed},
                      filter_info={"anchor": anchor.to_dict() if hasattr(anchor, "to_dict") else str(anchor),
                                   "template": template, "margin": margin, "min_own": min_own,
                                   "eval_phrasings": str(eval_phrasings) if eval_phrasings else None,
                                   "n_eval_phrases": len(held)})
    return {"output": str(output), "classes": labels, **filter_summary(kept, dropped)}


__all__ = ["DEFAULT_MARGIN", "paraphrase_source"]
