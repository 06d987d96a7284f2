"""The texts of the synthesised speech corpora (`speech_corpus.py`): an `Utterance` per text, read from sentence
lists (`read_utterances`) or drawn from Debian `fortunes` (`fortune_sentences`, filtered by length and the
`wamerican` word list)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: words the zero-shot checks speak (digits, colours): kept out of generated training sentences
ZEROSHOT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "red", "green",
                  "blue", "yellow", "black", "white", "orange", "purple", "brown", "pink")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORD_LIST = Path("/usr/share/dict/american-english")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for each non-empty line of a JSON-lines file, with errors naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: jsonl file not found")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        yield n, row


@dataclass(frozen=True)
class Utterance:
    """One text to speak: its label (e.g. the command word), an answer (spoken questions) and takes per voice."""

    text: str
    label: str | None = None
    answer: str | None = None
    takes: int = 1

    @property
    def text_id(self) -> str:
        """Stable id of the text (the same in every voice and corpus)."""
        return "t" + hashlib.sha1(self.text.encode()).hexdigest()[:10]


# --- reading text lists ------------------------------------------------------------------------------------------
def read_utterances(paths: Iterable[str | os.PathLike], *, takes: int = 1) -> list[Utterance]:
    """Utterances from `.txt` (one per line, `#` comments) and `.jsonl` files (`text`, optional `label`,
    `answer`, `takes`); duplicate texts are an error naming both places."""
    out: list[Utterance] = []
    seen: dict[str, str] = {}
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: sentence list not found (expected a .txt or .jsonl file)")
        if p.suffix.lower() == ".jsonl":
            rows = [(f"{p}:{n}", row) for n, row in iter_jsonl(p)]
        elif p.suffix.lower() == ".txt":
            lines = p.read_text(encoding="utf-8").splitlines()
            rows = [(f"{p}:{n}", {"text": ln.split("#", 1)[0].strip()}) for n, ln in enumerate(lines, 1)]
            rows = [(w, r) for w, r in rows if r["text"]]
        else:
            raise ValueError(f"{p}: expected a .txt (one sentence per line) or .jsonl (text, label, answer) file")
        for where, row in rows:
            unknown = sorted(set(row) - {"text", "label", "answer", "takes"})
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where}: expected a non-empty 'text' string, got {text!r}")
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (expected text, label, answer, "
                                 f"takes)")
            n = row.get("takes", takes)
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"{where}: 'takes' must be an integer >= 1, got {n!r}")
            text = " ".join(text.split())
            if text in seen:
                raise ValueError(f"{where}: {text!r} repeats {seen[text]}; each text is spoken once per voice")
            seen[text] = where
            out.append(Utterance(text, row.get("label"), row.get("answer"), n))
    if not out:
        raise ValueError("no sentences to speak: the lists are empty")
    return out


# --- sentence sources --------------------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PLAIN = re.compile(r"^[A-Z][A-Za-z ,;'-]*[A-Za-z][.!?]$")


def _word_set(path: Path) -> set[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: word list not found (Debian: apt-get install wamerican)")
    return {w.strip().casefold() for w in path.read_text(encoding="utf-8", errors="ignore").splitlines()}


def fortune_sentences(n: int | None = None, *, root: str | os.PathLike = FORTUNES_DIR, min_words: int = 3,
                      max_words: int = 20, words: str | os.PathLike | None = WORD_LIST,
                      exclude_words: Iterable[str] = ZEROSHOT_WORDS, seed: int = 0) -> list[Utterance]:
    """Up to `n` distinct single sentences of `min_words`-`max_words` words from the fortune files under `root`
    (Debian `fortunes`): plain punctuation, every word in the word list `words` (Debian `wamerican`; None: no
    check), no capital after the first word but "I" (no names), none of `exclude_words`; a seeded shuffle picks
    which when there are more (in text-id order)."""
    if min_words < 1 or max_words < min_words:
        raise ValueError(f"word range {min_words}-{max_words}: expected 1 <= min_words <= max_words")
    out = list(_fortune_pool(str(root), min_words, max_words, None if words is None else str(words),
                             tuple(sorted({w.casefold() for w in exclude_words}))))
    if n is not None and n < len(out):
        pick = np.random.default_rng(seed).permutation(len(out))[:n]
        out = [out[i] for i in sorted(pick)]
    return out


@functools.lru_cache(maxsize=4)
def _fortune_pool(root: str, min_words: int, max_words: int, words: str | None,
                  banned: tuple[str, ...]) -> tuple[Utterance, ...]:
    """Every sentence `fortune_sentences` accepts, in text-id order (parsed once per process)."""
    folder = Path(root)
    files = sorted(p for p in folder.glob("*") if p.is_file() and not p.suffix) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{folder}: no fortune files (Debian: apt-get install fortunes)")
    vocab = _word_set(Path(words)) if words is not None else None
    seen: set[str] = set()
    out: list[Utterance] = []
    for f in files:
        for entry in f.read_text(encoding="utf-8", errors="ignore").split("\n%\n"):
            body = entry.split("\n\t\t--", 1)[0].split("\n--", 1)[0]  # drop attributions
            for sent in _SENTENCE_END.split(" ".join(body.split())):
                if not _PLAIN.match(sent) or "--" in sent or "''" in sent:
                    continue
                toks = [t.strip(",;.!?'-") for t in sent.split()]
                if not min_words <= len(toks) <= max_words or not all(toks):
                    continue
                if any(t[0].isupper() and t.split("'")[0] != "I" for t in toks[1:]):
                    continue  # names and verse capitals
                low = [t.casefold() for t in toks]
                if set(banned).intersection(low) or (vocab is not None and not all(
                        t in vocab or t.removesuffix("'s") in vocab for t in low)):
                    continue
                key = " ".join(low)
                if key not in seen:
                    seen.add(key)
                    out.append(Utterance(sent))
    return tuple(sorted(out, key=lambda u: u.text_id))


__all__ = ["FORTUNES_DIR", "WORD_LIST", "ZEROSHOT_WORDS", "Utterance", "fortune_sentences", "read_utterances"]
