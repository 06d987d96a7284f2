"""`anyalign data paraphrase`: the LLM paraphrase file of one data source of a recipe (read back by
`anyalign.align.captions`): a frozen causal LM writes `n` sampled rewrites of each class phrase, the recipe's text
anchor drops those that repeat an evaluation phrasing, name another class or are not nearer their own class by a
margin (each drop records its reason). The file format is `anyalign.datasets.paraphrase`'s."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..align.captions import CaptionPool, CaptionSpec
from ..align.sources import read_source
from ..datasets.paraphrase import FORMAT, VERSION
from ..datasets.uea import DEFAULT_UEA_TEMPLATES
from ..io import atomic_path

#: a few-shot completion prompt: tiny instruct models (SmolLM2-135M) follow it far better than an instruction
PROMPT = """Each line gives a phrase, then another way to say the same thing.
eating => having a meal
a sofa => a couch
laughing => giggling
a car => an automobile
swimming => doing laps in the pool
a mug => a cup
{text} =>"""
MAX_WORDS = 20


def _prompt_text(tokenizer: Any, text: str, prompt: str, chat: bool) -> str:
    content = prompt.format(text=text)
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    return content


def clean(text: str) -> str | None:
    """The first line (first sentence) of a generation, without quotes or a chatty preamble; None if unusable."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(sure[,!.]?|here(?: is|'s)[^:]*:|rewritten[^:]*:|answer:|description:)\s*", "", line,
                  flags=re.IGNORECASE).strip()
    line = line.strip(" \"'`*,;")
    m = re.match(r"(.+?[.!?])(\s|$)", line)
    line = (m.group(1) if m else line).strip(" \"'`*")
    line = re.sub(r"[\"'`]+([.!?])$", r"\1", line)
    if not line or len(line.split()) > MAX_WORDS or not re.search(r"[A-Za-z]", line):
        return None
    return line


@torch.no_grad()
def generate_paraphrases(model: Any, tokenizer: Any, sources: Sequence[str], *, n: int = 4, seed: int = 0,
                         max_new_tokens: int = 12, temperature: float = 0.8, top_p: float = 0.95,
                         prompt: str = PROMPT, chat: bool = False, progress: bool = False) -> dict[str, list[str]]:
    """Up to `n` distinct cleaned rewrites per source phrase (sampled; deterministic in `seed`). `prompt` holds
    `{text}`; `chat` wraps it in the tokenizer's chat template instead of plain completion."""
    from tqdm.auto import tqdm

    if n < 1:
        raise ValueError(f"n: expected >= 1 paraphrases per caption, got {n}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: dict[str, list[str]] = {}
    for i, src in enumerate(tqdm(list(dict.fromkeys(sources)), desc="paraphrase", disable=not progress)):
        enc = tokenizer(_prompt_text(tokenizer, src, prompt, chat), return_tensors="pt", add_special_tokens=False)
        torch.manual_seed(seed * 1_000_003 + i)
        ids = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, num_return_sequences=n,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
        texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        seen = {src.casefold().strip(" .")}
        kept = []
        for t in texts:
            c = clean(t)
            if c is not None and c.casefold().strip(" .") not in seen:
                seen.add(c.casefold().strip(" ."))
                kept.append(c)
        out[src] = kept
    return out


#: why a rewrite was dropped, in the order the rules are applied (a rewrite gets the first that applies)
REASONS = ("repeats_evaluation_phrasing", "names_other_class", "not_nearer_own_class", "far_from_own_class")
_ARTICLE = re.compile(r"^(a|an|the)\s+")


def _norm(text: str) -> str:
    """Lower-cased words only (`walking_upstairs.` -> `walking upstairs`), for whole-word comparisons."""
    return " ".join(re.findall(r"[a-z0-9]+", text.casefold()))


def _has(text: str, phrase: str) -> bool:
    """Whether normalised `phrase` occurs in normalised `text` as whole words."""
    return bool(phrase) and f" {phrase} " in f" {text} "


def _names(key: str, phrases: Sequence[str]) -> set[str]:
    """A class's names: its key (`walking_upstairs` -> `walking upstairs`) and its phrases, normalised."""
    return {n for n in (_norm(key), *(_norm(p) for p in phrases)) if n}


@torch.no_grad()
def filter_paraphrases(candidates: Mapping[str, Sequence[str]], references: Mapping[str, Sequence[str]],
                       embed: Callable[[list[str]], torch.Tensor], *, margin: float = 0.0, min_own: float = -1.0,
                       template: str = "{}", eval_phrasings: Sequence[str] = (),
                       class_names: Mapping[str, Sequence[str]] | None = None,
                       ) -> tuple[dict[str, list[str]], dict[str, list[dict[str, Any]]]]:
    """Keep a candidate of key k only if every rule passes, else drop it with the first failing rule's `reason`:

    1. `repeats_evaluation_phrasing`: it equals an evaluation phrase (articles aside), or contains one that k's own
       references do not already contain (evaluation wordings must stay unseen in training);
    2. `names_other_class`: it contains, as whole words, another key's name or reference phrase (or a name in
       `class_names`), unless that name is part of one of k's own names (`walking` inside `walking upstairs`);
    3. `not_nearer_own_class`: its best cosine to k's references does not beat its best cosine to every other
       key's references by more than `margin`;
    4. `far_from_own_class`: its best cosine to k's references is below `min_own`.

    Candidates and references are embedded as `template.format(text)` (e.g. "a person {}."). Returns (kept,
    dropped) per key; each dropped item holds its text, reason, scores and what it matched."""
    keys = list(references)
    if len(keys) < 2:
        raise ValueError("the paraphrase filter needs the captions of at least two classes to compare against")
    missing = [k for k in candidates if k not in references]
    if missing:
        raise ValueError(f"paraphrase candidates for {missing[:3]} have no reference captions")
    names = {k: _names(k, [*references[k], *(class_names or {}).get(k, [])]) for k in keys}
    evals = {_norm(p) for p in eval_phrasings} - {""}
    ref_texts = [t for k in keys for t in references[k]]
    owner = torch.tensor([i for i, k in enumerate(keys) for _ in references[k]])
    refs = torch.nn.functional.normalize(embed([template.format(t) for t in ref_texts]).float(), dim=-1)  # [R, E]
    kept: dict[str, list[str]] = {}
    dropped: dict[str, list[dict[str, Any]]] = {}
    for k, texts in candidates.items():
        kept[k], dropped[k] = [], []
        texts = list(texts)
        if not texts:
            continue
        emb = torch.nn.functional.normalize(embed([template.format(t) for t in texts]).float(), dim=-1)  # [N, E]
        sim = emb @ refs.t()  # [N, R]
        per_key = torch.full((len(texts), len(keys)), -2.0).scatter_reduce(
            1, owner.expand(len(texts), -1), sim, reduce="amax")  # [N, K] best match per key
        own_i = keys.index(k)
        own = per_key[:, own_i]
        others = per_key.clone()
        others[:, own_i] = -2.0
        other, nearest = others.max(1)
        own_names = names[k]
        foreign = sorted(((n, o) for o in keys if o != k for n in names[o]
                          if not any(_has(mine, n) for mine in own_names)), key=lambda x: (-len(x[0]), x))
        own_sources = [_norm(t) for t in references[k]]
        for j, t in enumerate(texts):
            info: dict[str, Any] = {"text": t, "own": round(float(own[j]), 4), "other": round(float(other[j]), 4),
                                    "nearest": keys[int(nearest[j])]}
            norm = _norm(t)
            bare = _ARTICLE.sub("", norm)
            repeat = next((e for e in sorted(evals) if _ARTICLE.sub("", e) == bare
                           or (_has(norm, e) and not any(_has(s, e) for s in own_sources))), None)
            named = next(((n, o) for n, o in foreign if _has(norm, n)), None)
            if repeat is not None:
                info.update(reason=REASONS[0], phrasing=repeat)
            elif named is not None:
                info.update(reason=REASONS[1], names=named[0], nearest=named[1])
            elif not own[j] > other[j] + margin:
                info.update(reason=REASONS[2], margin=margin)
            elif not own[j] >= min_own:
                info.update(reason=REASONS[3], min_own=min_own)
            else:
                kept[k].append(t)
                continue
            dropped[k].append(info)
    return kept, dropped


def filter_summary(kept: Mapping[str, Sequence[str]],
                   dropped: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Counts of kept and dropped rewrites, dropped ones per reason, in total and per key."""
    def reasons(items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        return {r: n for r in REASONS if (n := sum(d.get("reason") == r for d in items))}

    every = [d for ds in dropped.values() for d in ds]
    return {"kept": sum(map(len, kept.values())), "dropped": len(every), "dropped_by_reason": reasons(every),
            "per_class": {k: {"kept": len(kept.get(k, [])), "dropped": len(dropped.get(k, [])),
                              "dropped_by_reason": reasons(dropped.get(k, []))} for k in kept}}


def paraphrase_classes(model: Any, tokenizer: Any, sources: Mapping[str, Sequence[str]],
                       embed: Callable[[list[str]], torch.Tensor], *, n: int = 8, seed: int = 0, margin: float = 0.0,
                       min_own: float = -1.0, template: str = "{}", progress: bool = False,
                       eval_phrasings: Sequence[str] = (), class_names: Mapping[str, Sequence[str]] | None = None,
                       **generate_options: Any) -> tuple[dict[str, list[str]], dict[str, list[dict[str, Any]]]]:
    """Generate rewrites of every source phrase of every key (class), then filter them against all keys'
    sources and the rules of `filter_paraphrases`; returns (kept, dropped) per key."""
    flat = [s for ss in sources.values() for s in ss]
    generated = generate_paraphrases(model, tokenizer, flat, n=n, seed=seed, progress=progress, **generate_options)
    candidates = {k: list(dict.fromkeys(c for s in ss for c in generated[s])) for k, ss in sources.items()}
    own = {k: {s.casefold() for s in ss} for k, ss in sources.items()}
    candidates = {k: [c for c in cs if c.casefold() not in own[k]] for k, cs in candidates.items()}
    return filter_paraphrases(candidates, sources, embed, margin=margin, min_own=min_own, template=template,
                              eval_phrasings=eval_phrasings, class_names=class_names)


def write_paraphrases(path: str | os.PathLike, sources: Mapping[str, Sequence[str]],
                      kept: Mapping[str, Sequence[str]], dropped: Mapping[str, Sequence[dict[str, Any]]], *,
                      generator: dict[str, Any] | None = None, filter_info: dict[str, Any] | None = None) -> Path:
    """Write the reviewed paraphrase file atomically (see the module docstring)."""
    path = Path(path)
    doc = {"format": FORMAT, "version": VERSION, "generator": generator or {}, "filter": filter_info or {},
           "summary": filter_summary(kept, dropped),
           "entries": {k: {"sources": list(sources.get(k, [])), "kept": list(kept.get(k, [])),
                           "dropped": list(dropped.get(k, []))} for k in kept}}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return path


#: how much nearer (cosine) a rewrite must be to its own class than to any other class to be kept
DEFAULT_MARGIN = 0.05


def paraphrase_source(recipe: Any, output: str | Path, *, part: str = "train", index: int = 0,
                      llm: str | Path, gguf_file: str | None = None, n: int = 8, seed: int = 0,
                      margin: float = DEFAULT_MARGIN, min_own: float = 0.5, eval_phrasings: str | Path | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Write the paraphrase file of one data source of a recipe: the frozen LLM rewrites every class phrase (and
    synonym), the recipe's text anchor filters the rewrites (`filter_paraphrases`:
    margin, other class named, evaluation phrasing repeated; `eval_phrasings` is a phrasing file as read by
    `anyalign eval zeroshot --labels-file`, all of its sets but `training`). Returns a summary with the counts of
    dropped rewrites per reason."""
    import dataclasses

    import torch.nn.functional as F

    from ..llm.bundle import load_llm
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

    if gguf_file is None and not (Path(llm) / "config.json").is_file():  # a GGUF-only folder: its first GGUF
        gguf_file = next((p.name for p in sorted(Path(llm).glob("*.gguf"))), None)
    model, tok, _ = load_llm(llm, gguf_file=gguf_file)
    kept, dropped = paraphrase_classes(model, tok, phrases, embed, n=n, seed=seed, margin=margin, min_own=min_own,
                                       template=template, progress=progress, eval_phrasings=held)
    write_paraphrases(output, phrases, kept, dropped,
                      generator={"llm": str(llm), "gguf_file": gguf_file, "n": n, "seed": seed},
                      filter_info={"anchor": anchor.to_dict() if hasattr(anchor, "to_dict") else str(anchor),
                                   "template": template, "margin": margin, "min_own": min_own,
                                   "eval_phrasings": str(eval_phrasings) if eval_phrasings else None,
                                   "n_eval_phrases": len(held)})
    return {"output": str(output), "classes": labels, **filter_summary(kept, dropped)}


__all__ = ["DEFAULT_MARGIN", "PROMPT", "REASONS", "clean", "filter_paraphrases", "filter_summary",
           "generate_paraphrases", "paraphrase_classes", "paraphrase_source", "write_paraphrases"]
