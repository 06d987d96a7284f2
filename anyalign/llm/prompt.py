"""Prompts with media placeholders (`<image>`, `<imu>`, ...) -> token-id plans, before any model runs.

Text between placeholders is tokenized segment by segment, so the tokenizer never needs new special tokens
and the LLM's embedding matrix never grows for soft tokens: a placeholder becomes a media slot that the splice
step later expands to as many positions as its adapter produces. A prompt without placeholders tokenizes
exactly as the plain tokenizer would (special-token prefix/suffix included), which keeps the zero-adapter path
identical to the unmodified LLM. (SentencePiece tokenizers that prepend a word-boundary marker to every call
will mark the text right after a placeholder as a word start; byte-level BPE tokenizers are unaffected.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..language_model import DEFAULT_MODALITIES, placeholder_pattern  # the syntax training shares


@dataclass(frozen=True)
class MediaSlot:
    """The `index`-th occurrence (reading order across the batch) of a `<modality>` placeholder."""

    modality: str
    index: int


@dataclass
class PromptPlan:
    """Per row: token-id lists and media slots in reading order, plus target ids (for the caption loss)."""

    rows: list[list[list[int] | MediaSlot]]
    targets: list[list[int]] | None
    counts: dict[str, int] = field(default_factory=dict)  # placeholders per modality over the whole batch

    def text_lengths(self) -> list[int]:
        """Tokens per row without media (prompt + target)."""
        out = []
        for i, row in enumerate(self.rows):
            n = sum(len(p) for p in row if isinstance(p, list))
            out.append(n + (len(self.targets[i]) if self.targets else 0))
        return out


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds around a text (e.g. `[bos]`, `[]`) when asked for special tokens."""
    probe = "hello"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain):])
    return [], []


def apply_template(tokenizer: Any, prompt: str) -> str:
    """Wrap a user prompt in the tokenizer's chat template (generation prompt added); placeholders stay text."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def plan_prompts(
    prompts: Sequence[str],
    tokenizer: Any,
    adapters: Iterable[str],
    *,
    targets: Sequence[str] | None = None,
    chat_template: bool = False,
) -> PromptPlan:
    """Template, split at placeholders and tokenize a batch of prompts (and targets) in one tokenizer call."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f"prompts: expected a non-empty list of strings, got {type(prompts).__name__}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}]: expected a string, got {type(p).__name__}")
    if targets is not None:
        if isinstance(targets, str) or len(targets) != len(prompts):
            raise ValueError(f"targets: expected a list of {len(prompts)} strings (one per prompt), got "
                             f"{len(targets) if not isinstance(targets, str) else 'a string'}")
        for i, t in enumerate(targets):
            if not isinstance(t, str):
                raise ValueError(f"targets[{i}]: expected a string, got {type(t).__name__}")
    adapters = set(adapters)
    pattern = placeholder_pattern(adapters)
    prefix, suffix = ([], []) if chat_template else special_affixes(tokenizer)

    texts: list[str] = []  # every non-empty text segment, tokenized together below
    layout: list[list[int | MediaSlot]] = []  # per row: index into `texts`, or a slot
    counts: dict[str, int] = {}
    for i, prompt in enumerate(prompts):
        text = apply_template(tokenizer, prompt) if chat_template else prompt
        parts = pattern.split(text)  # [text, modality, text, modality, ..., text]
        row: list[int | MediaSlot] = []
        for j, part in enumerate(parts):
            if j % 2:
                if part not in adapters:
                    raise ValueError(f"prompts[{i}]: placeholder <{part}> but no {part!r} adapter is loaded "
                                     f"(adapters: {sorted(adapters) or 'none'})")
                row.append(MediaSlot(part, counts.get(part, 0)))
                counts[part] = counts.get(part, 0) + 1
            elif part:
                row.append(len(texts))
                texts.append(part)
        layout.append(row)
    target_start = len(texts)
    if targets is not None:
        texts.extend(targets)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    rows: list[list[list[int] | MediaSlot]] = []
    for row in layout:
        out: list[list[int] | MediaSlot] = [list(prefix)] if prefix else []
        out += [p if isinstance(p, MediaSlot) else list(ids[p]) for p in row]
        if suffix:
            out.append(list(suffix))
        rows.append(out)
    target_ids = None
    if targets is not None:
        eos = tokenizer.eos_token_id
        target_ids = [list(ids[target_start + i]) + ([eos] if eos is not None else []) for i in range(len(targets))]
    return PromptPlan(rows, target_ids, counts)


def check_media(counts: Mapping[str, int], given: Mapping[str, int], adapters: Iterable[str]) -> None:
    """Placeholders and media must match one to one per modality; raise naming the modality otherwise."""
    adapters = set(adapters)
    for modality, n in given.items():
        if modality not in adapters:
            raise ValueError(f"{n} {modality} input(s) given but no {modality!r} adapter is loaded "
                             f"(adapters: {sorted(adapters) or 'none'})")
    for modality in sorted(set(counts) | set(given)):
        want, got = counts.get(modality, 0), given.get(modality, 0)
        if want != got:
            raise ValueError(f"the prompts contain {want} <{modality}> placeholder(s) but {got} {modality} "
                             f"input(s) were given; each placeholder needs exactly one input, in reading order")


__all__ = ["DEFAULT_MODALITIES", "MediaSlot", "PromptPlan", "apply_template", "check_media", "placeholder_pattern",
           "plan_prompts", "special_affixes"]
