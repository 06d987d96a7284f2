"""Training-caption paraphrases written once, offline, by a frozen causal LM, then filtered in the anchor space.

Generation (`generate_paraphrases`) asks any `AutoModelForCausalLM` (the project's SmolLM2-135M-Instruct GGUF,
or any other) for `n` sampled rewrites of each source caption. The filter (`filter_paraphrases`) embeds every
candidate with the frozen anchor text encoder (passed in as a function, so this module stays below the encoders)
and drops those closer to another class's captions than to their own. The result is one JSON file
(`write_paraphrases` / `read_paraphrases`), kept beside the recipe and reviewed like code::

    {"format": "anyalign-paraphrases", "version": 1, "generator": {...}, "filter": {...},
     "entries": {"<class or caption>": {"sources": [...], "kept": [...],
                                        "dropped": [{"text", "own", "other", "nearest"}]}}}
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


@torch.no_grad()
def filter_paraphrases(candidates: Mapping[str, Sequence[str]], references: Mapping[str, Sequence[str]],
                       embed: Callable[[list[str]], torch.Tensor], *, margin: float = 0.0, min_own: float = -1.0,
                       template: str = "{}") -> tuple[dict[str, list[str]], dict[str, list[dict[str, Any]]]]:
    """Keep a candidate of key k when its best cosine to k's reference captions beats its best cosine to every
    other key's references by more than `margin` (and is at least `min_own`). Candidates and references are
    embedded as `template.format(text)` (e.g. "a photo of a {}." for class phrases). Returns (kept, dropped with
    scores) per key."""
    keys = list(references)
    if len(keys) < 2:
        raise ValueError("the paraphrase filter needs the captions of at least two classes to compare against")
    missing = [k for k in candidates if k not in references]
    if missing:
        raise ValueError(f"paraphrase candidates for {missing[:3]} have no reference captions")
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
        for j, t in enumerate(texts):
            if own[j] > other[j] + margin and own[j] >= min_own:
                kept[k].append(t)
            else:
                dropped[k].append({"text": t, "own": round(float(own[j]), 4), "other": round(float(other[j]), 4),
                                   "nearest": keys[int(nearest[j])]})
    return kept, dropped


def paraphrase_classes(model: Any, tokenizer: Any, sources: Mapping[str, Sequence[str]],
                       embed: Callable[[list[str]], torch.Tensor], *, n: int = 8, seed: int = 0, margin: float = 0.0,
                       min_own: float = -1.0, template: str = "{}", progress: bool = False,
                       **generate_options: Any) -> tuple[dict[str, list[str]], dict[str, list[dict[str, Any]]]]:
    """Generate rewrites of every source phrase of every key (class), then filter them against all keys'
    sources (see `filter_paraphrases`); returns (kept, dropped) per key."""
    flat = [s for ss in sources.values() for s in ss]
    generated = generate_paraphrases(model, tokenizer, flat, n=n, seed=seed, progress=progress, **generate_options)
    candidates = {k: list(dict.fromkeys(c for s in ss for c in generated[s])) for k, ss in sources.items()}
    own = {k: {s.casefold() for s in ss} for k, ss in sources.items()}
    candidates = {k: [c for c in cs if c.casefold() not in own[k]] for k, cs in candidates.items()}
    return filter_paraphrases(candidates, sources, embed, margin=margin, min_own=min_own, template=template)


def write_paraphrases(path: str | os.PathLike, sources: Mapping[str, Sequence[str]],
                      kept: Mapping[str, Sequence[str]], dropped: Mapping[str, Sequence[dict[str, Any]]], *,
                      generator: dict[str, Any] | None = None, filter_info: dict[str, Any] | None = None) -> Path:
    """Write the reviewed paraphrase file atomically (see the module docstring)."""
    path = Path(path)
    doc = {"format": FORMAT, "version": VERSION, "generator": generator or {}, "filter": filter_info or {},
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


__all__ = ["FORMAT", "PROMPT", "VERSION", "clean", "filter_paraphrases", "generate_paraphrases", "load_generator",
           "paraphrase_classes", "read_paraphrase_file", "read_paraphrases", "write_paraphrases"]
