"""Evaluation metrics that need no model: word error rate of transcripts."""

from .wer import normalize_words, wer, word_errors

__all__ = ["normalize_words", "wer", "word_errors"]
