"""`anyalign data paraphrase`: write the LLM paraphrase file of one data source of a recipe (see captions.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..datasets.uea import DEFAULT_UEA_TEMPLATES
from .captions import CaptionPool, CaptionSpec
from .data import read_source


def paraphrase_source(recipe: Any, output: str | Path, *, part: str = "train", index: int = 0,
                      llm: str | Path, gguf_file: str | None = None, n: int = 8, seed: int = 0, margin: float = 0.0,
                      min_own: float = 0.5, progress: bool = True) -> dict[str, Any]:
    """Write the paraphrase file of one data source of a recipe: the frozen LLM rewrites every class phrase (and
    synonym), the recipe's text anchor filters the rewrites (`anyalign.datasets.paraphrase`). Returns a summary."""
    import dataclasses

    import torch.nn.functional as F

    from ..datasets.paraphrase import load_generator, paraphrase_classes, write_paraphrases

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
    template = pool.templates[0].replace("{label}", "{}").replace("{caption}", "{}")
    anchor = recipe.anchors["text"].encoder
    text = anchor.build()

    def embed(texts: list[str]) -> Any:
        return F.normalize(text(texts).pooled.float(), dim=-1)

    model, tok = load_generator(llm, gguf_file=gguf_file)
    kept, dropped = paraphrase_classes(model, tok, phrases, embed, n=n, seed=seed, margin=margin, min_own=min_own,
                                       template=template, progress=progress)
    write_paraphrases(output, phrases, kept, dropped,
                      generator={"llm": str(llm), "gguf_file": gguf_file, "n": n, "seed": seed},
                      filter_info={"anchor": anchor.to_dict() if hasattr(anchor, "to_dict") else str(anchor),
                                   "template": template, "margin": margin, "min_own": min_own})
    return {"output": str(output), "classes": labels, "kept": sum(map(len, kept.values())),
            "dropped": sum(map(len, dropped.values())), "per_class": {k: len(v) for k, v in kept.items()}}


__all__ = ["paraphrase_source"]
