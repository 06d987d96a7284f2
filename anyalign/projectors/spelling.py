"""Spelling a CTC head's transcript with the words of a word list (the words head's free transcripts).

Why: a text encoder embeds misspellings ("befor mareage") far from the words meant. Each heard word becomes the
list word within edit distance 2 with the best sentence CTC likelihood plus unigram prior (the heard spelling kept
at an out-of-list penalty): open vocabulary as far as the list goes, with no language model.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

OUT_OF_LIST_PENALTY = 5.0  # log-prior below an unseen list word for keeping a spelling that is not in the list
MAX_EDITS = 2


def normalize_text(text: str, alphabet: str) -> str:
    """`text` as the head writes it: lower case, ASCII, hyphens as spaces, only `alphabet`, single spaces."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().replace("-", " ")
    text = "".join(c if c in alphabet else " " for c in text)
    return re.sub(r"\s+", " ", text).strip()


class WordSpeller:
    """A word list with unigram log-priors, bucketed by length for the edit-distance search."""

    def __init__(self, counts: Mapping[str, float], *, prior_weight: float = 1.0) -> None:
        if not counts:
            raise ValueError("word speller: the word list is empty")
        total = sum(counts.values()) + 0.5 * len(counts)
        self.log_prior = {w: math.log((c + 0.5) / total) for w, c in counts.items()}
        self.unseen = math.log(0.5 / total) - OUT_OF_LIST_PENALTY
        self.prior_weight = prior_weight
        self.by_length: dict[int, list[str]] = defaultdict(list)
        for w in counts:
            self.by_length[len(w)].append(w)

    @classmethod
    def from_file(cls, path: str | os.PathLike, alphabet: str) -> WordSpeller:
        """Read `path` (one word per line, optionally `word count`); words are normalised to `alphabet`."""
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"{file}: word list not found (ctc projector option 'vocabulary')")
        counts: dict[str, float] = defaultdict(float)
        for i, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            word = normalize_text(parts[0], alphabet)
            if not word or " " in word:
                continue
            try:
                counts[word] += float(parts[1]) if len(parts) > 1 else 0.0
            except ValueError:
                raise ValueError(f"{file}:{i}: expected 'word' or 'word count', got {line!r}") from None
        return cls(counts)

    def near(self, word: str) -> list[str]:
        """List words within `MAX_EDITS` edits of `word` (Levenshtein), and `word` itself."""
        from rapidfuzz.distance import Levenshtein
        from rapidfuzz.process import extract

        out = {word}
        for n in range(max(1, len(word) - MAX_EDITS), len(word) + MAX_EDITS + 1):
            bucket = self.by_length.get(n)
            if bucket:
                out.update(m[0] for m in extract(word, bucket, scorer=Levenshtein.distance, score_cutoff=MAX_EDITS,
                                                 limit=None))
        return sorted(out)

    def spell(self, heard: str, log_likelihood: Callable[[Sequence[str]], torch.Tensor]) -> str:
        """`heard` with each word replaced by its most likely list neighbour; `log_likelihood(texts)` gives the
        CTC log-likelihood `[K]` of candidate sentences for the clip."""
        words = heard.split()
        for i in range(len(words)):
            cands = self.near(words[i])
            if len(cands) == 1 and cands[0] in self.log_prior:
                continue
            sentences = [" ".join([*words[:i], c, *words[i + 1:]]) for c in cands]
            prior = torch.tensor([self.log_prior.get(c, self.unseen) for c in cands])
            score = log_likelihood(sentences).nan_to_num(nan=-math.inf, posinf=-math.inf) + self.prior_weight * prior
            words[i] = cands[int(score.argmax())]
        return " ".join(words)


__all__ = ["WordSpeller", "normalize_text"]
