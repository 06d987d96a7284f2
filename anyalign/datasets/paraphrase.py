"""Training-caption paraphrases written once, offline, by a frozen causal LM, then filtered in the anchor space.

Generation (`generate_paraphrases`) asks any `AutoModelForCausalLM` (the project's SmolLM2-135M-Instruct GGUF,
or any other) for `n` sampled rewrites of each source caption. The filter (`filter_paraphrases`) embeds every
candidate with the frozen anchor text encoder (passed in as a function, so this module stays below the encoders)
and drops those that repeat an evaluation phrasing, name another class, or are not nearer their own class's
captions than any other class's by a margin (each drop records its reason). The result is one JSON file
(`write_paraphrases` / `read_paraphrases`), kept beside the recipe and reviewed like code::

    {"format": "anyalign-paraphrases", "version": 1, "generator": {...}, "filter": {...},
     "summary": {"kept", "dropped", "dropped_by_reason": {reason: count}, "per_class": {...}},
     "entries": {"<class or caption>": {"sources": [...], "kept": [...],
                                        "dropped": [{"text", "reason", "own", "other", "nearest", ...}]}}}
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_path

logger = logging.getLogger(__name__)

FORMAT = "anyalign-paraphrases"
VERSION = 1
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


def load_generator(name_or_path: str | os.PathLike, *, gguf_file: str | None = None) -> tuple[Any, Any]:
    """An `AutoModelForCausalLM` and its tokenizer from a local folder (optionally a GGUF file in it), float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"--llm {path}: no such model folder")
    if gguf_file is None:
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if not (path / "config.json").is_file():
            if not ggufs:
                raise FileNotFoundError(f"--llm {path}: no config.json and no .gguf file in the folder")
            gguf_file = ggufs[0]
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kwargs).eval()
    return model, tok


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


def read_paraphrase_file(path: str | os.PathLike) -> dict[str, Any]:
    """The whole paraphrase document, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: paraphrase file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON paraphrase file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: expected a paraphrase file with \"format\": \"{FORMAT}\" "
                         f"(written by `anyalign data paraphrase`)")
    if int(doc.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: paraphrase file version {doc['version']} is newer than this anyalign ({VERSION})")
    entries = doc.get("entries")
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: field 'entries': expected a mapping of class/caption -> {{kept: [...]}}")
    for k, e in entries.items():
        if not isinstance(e, dict) or not isinstance(e.get("kept", []), list) \
                or not all(isinstance(t, str) for t in e.get("kept", [])):
            raise ValueError(f"{path}: entries.{k}.kept: expected a list of sentences")
    return doc


def read_paraphrases(path: str | os.PathLike) -> dict[str, list[str]]:
    """Kept paraphrases per key (class name or original caption)."""
    return {k: list(e.get("kept", [])) for k, e in read_paraphrase_file(path)["entries"].items()}


__all__ = ["FORMAT", "PROMPT", "REASONS", "VERSION", "clean", "filter_paraphrases", "filter_summary",
           "generate_paraphrases", "load_generator", "paraphrase_classes", "read_paraphrase_file", "read_paraphrases",
           "write_paraphrases"]
