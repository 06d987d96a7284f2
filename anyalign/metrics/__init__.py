"""Evaluation metrics that need no model: word error rate of transcripts (`wer`), generalised zero-shot metrics and
calibration (`gzsl`)."""

from .wer import english_normalizer, normalize_text, normalize_words, wer, word_errors

__all__ = ["english_normalizer", "normalize_text", "normalize_words", "wer", "word_errors"]
