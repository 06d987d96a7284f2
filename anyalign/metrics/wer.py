"""Word error rate: word-level edit distance between reference and hypothesis transcripts, after normalisation.

Normalisation (a simplified form of the usual ASR scoring): lower case; apostrophes inside words are kept
("o'clock", "don't"); every other character that is not a letter or digit separates words.
WER over a corpus is the total number of substitutions + deletions + insertions divided by the total number of
reference words (not the mean of per-utterance rates).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NON_WORD = re.compile(r"[^a-z0-9']+")


def normalize_words(text: str) -> list[str]:
    """Lower-cased words of `text` without punctuation (apostrophes inside words kept)."""
    words = _NON_WORD.sub(" ", text.lower()).split()
    return [w.strip("'") for w in words if w.strip("'")]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, number of reference words) of one utterance after normalisation."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    prev = list(range(len(hyp) + 1))  # Levenshtein distance, one row at a time
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1], len(ref)


def wer(references: Sequence[str] | str, hypotheses: Sequence[str] | str) -> float:
    """Corpus word error rate (total word edits / total reference words); one string each is one utterance."""
    if isinstance(references, str) and isinstance(hypotheses, str):
        references, hypotheses = [references], [hypotheses]
    if isinstance(references, str) or isinstance(hypotheses, str) or len(references) != len(hypotheses):
        raise ValueError(f"wer: expected as many hypotheses as references (got {len(hypotheses)} and "
                         f"{len(references)})")
    errors = total = 0
    for ref, hyp in zip(references, hypotheses):
        e, n = word_errors(ref, hyp)
        errors, total = errors + e, total + n
    if total == 0:
        raise ValueError("wer: the references have no words")
    return errors / total


__all__ = ["normalize_words", "wer", "word_errors"]
