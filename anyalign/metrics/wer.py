"""Word error rate as ASR papers report it: jiwer's word alignment after Whisper's English normaliser (transformers'
`EnglishTextNormalizer` with OpenAI's spelling map from `whisper-normalizer`); a corpus WER is total edits over total
reference words."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache


@lru_cache(maxsize=1)
def english_normalizer() -> Callable[[str], str]:
    """Whisper's English text normaliser (transformers' `EnglishTextNormalizer` with OpenAI's spelling map)."""
    from importlib.resources import files

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    try:
        mapping = json.loads((files("whisper_normalizer") / "normalizers" / "english.json").read_text("utf-8"))
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise ModuleNotFoundError("WER needs OpenAI's English spelling map: pip install whisper-normalizer "
                                  f"(a dependency of anyalign) ({e})") from None
    return EnglishTextNormalizer(mapping)


def normalize_text(text: str) -> str:
    """`text` as Whisper's English normaliser writes it (words separated by single spaces)."""
    return " ".join(english_normalizer()(text).split())


def normalize_words(text: str) -> list[str]:
    """The words of `text` after Whisper's English normaliser."""
    return normalize_text(text).split()


def _counts(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[int, int]:
    import jiwer

    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    out = jiwer.process_words(refs, hyps)
    return out.substitutions + out.deletions + out.insertions, out.substitutions + out.deletions + out.hits


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, number of reference words) of one utterance after normalisation."""
    return _counts([reference], [hypothesis])


def wer(references: Sequence[str] | str, hypotheses: Sequence[str] | str) -> float:
    """Corpus word error rate (total word edits / total reference words); one string each is one utterance."""
    if isinstance(references, str) and isinstance(hypotheses, str):
        references, hypotheses = [references], [hypotheses]
    if isinstance(references, str) or isinstance(hypotheses, str) or len(references) != len(hypotheses):
        raise ValueError(f"wer: expected as many hypotheses as references (got {len(hypotheses)} and "
                         f"{len(references)})")
    if not references:
        raise ValueError("wer: no references")
    errors, total = _counts(references, hypotheses)
    if total == 0:
        raise ValueError("wer: the references have no words (after Whisper's English normaliser)")
    return errors / total


__all__ = ["english_normalizer", "normalize_text", "normalize_words", "wer", "word_errors"]
