"""Transcription evaluation: the word error rate of a causal LM's transcripts through a speech adapter
(LLaSM / Qwen-Audio style), next to Whisper's own decoder on the same recordings.

    report = evaluate_transcription(read_records("speech/test.jsonl", modalities=["audio"]), model,
                                    whisper="~/.cache/anyalign-assets/audio-models/whisper-tiny.en")

Both systems see the same audio files; WER is the corpus rate (`metrics.wer`), also per speaker group (voice) so a
held-out-voice split can be read off directly. `anyalign eval transcription` is the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..datasets.records import Record
from ..metrics.wer import wer, word_errors

if TYPE_CHECKING:
    from .model import MultimodalLM

DEFAULT_PROMPT = "<audio>\nWhat was said?"


def _progress(total: int, desc: str, quiet: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="clip", disable=quiet)


def llm_transcripts(model: MultimodalLM, files: Sequence[Any], *, prompt: str = DEFAULT_PROMPT,
                    modality: str = "audio", batch_size: int = 8, max_new_tokens: int = 48,
                    quiet: bool = False) -> list[str]:
    """Greedy transcripts of `files` by `model` (one `<modality>` placeholder in `prompt`), batched."""
    out: list[str] = []
    with _progress(len(files), "llm transcripts", quiet) as bar:
        for i in range(0, len(files), batch_size):
            chunk = list(files[i:i + batch_size])
            out += model.generate([prompt] * len(chunk), inputs={modality: chunk}, max_new_tokens=max_new_tokens,
                                  do_sample=False)
            bar.update(len(chunk))
    return [t.strip() for t in out]


def whisper_transcripts(whisper: str | os.PathLike, files: Sequence[Any], *, batch_size: int = 8,
                        max_new_tokens: int = 96, device: str | torch.device = "cpu",
                        quiet: bool = False) -> list[str]:
    """Greedy transcripts of `files` by a Whisper checkpoint folder's own decoder (the reference system)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from ..encoders.audio_io import load_audio

    folder = Path(whisper).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--whisper {folder}: not a Whisper checkpoint folder (no config.json)")
    processor = WhisperProcessor.from_pretrained(folder)
    asr = WhisperForConditionalGeneration.from_pretrained(folder, torch_dtype=torch.float32).to(device).eval()
    rate = processor.feature_extractor.sampling_rate
    out: list[str] = []
    with _progress(len(files), "whisper transcripts", quiet) as bar, torch.inference_mode():
        for i in range(0, len(files), batch_size):
            chunk = list(files[i:i + batch_size])
            waves = [load_audio(f, rate) for f in chunk]
            feats = processor.feature_extractor(waves, sampling_rate=rate, return_tensors="pt").input_features
            ids = asr.generate(feats.to(device), max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
            out += processor.batch_decode(ids, skip_special_tokens=True)
            bar.update(len(chunk))
    return [t.strip() for t in out]


def _summary(rows: list[dict[str, Any]], field: str) -> dict[str, Any]:
    refs = [r["reference"] for r in rows]
    hyps = [r[field] for r in rows]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"] or "-", []).append(r)
    exact = sum(not word_errors(r["reference"], r[field])[0] for r in rows)
    return {"wer": wer(refs, hyps), "exact_match": exact / len(rows),
            "per_group": {g: wer([r["reference"] for r in rs], [r[field] for r in rs]) for g, rs in groups.items()}}


def evaluate_transcription(records: Sequence[Record], model: MultimodalLM, *, prompt: str = DEFAULT_PROMPT,
                           modality: str = "audio", whisper: str | os.PathLike | None = None,
                           batch_size: int = 8, max_new_tokens: int = 48, quiet: bool = False) -> dict[str, Any]:
    """WER of `model`'s transcripts of `records` (each with an audio input and its `text`), and of Whisper's own
    decoder on the same files when `whisper` names a checkpoint; per group (voice), with every transcript."""
    usable = [r for r in records if r.text and r.inputs(modality)]
    if not usable:
        raise ValueError(f"no record has both a {modality} input and a `text` reference transcript")
    files = [r.input(modality) for r in usable]
    rows = [{"key": r.key, "group": r.group, "file": str(f), "reference": r.text}
            for r, f in zip(usable, files)]
    for row, hyp in zip(rows, llm_transcripts(model, files, prompt=prompt, modality=modality, batch_size=batch_size,
                                              max_new_tokens=max_new_tokens, quiet=quiet)):
        row["llm"] = hyp
    report: dict[str, Any] = {"n": len(rows), "prompt": prompt, "llm": _summary(rows, "llm")}
    if whisper is not None:
        for row, hyp in zip(rows, whisper_transcripts(whisper, files, batch_size=batch_size, device=model.device,
                                                      quiet=quiet)):
            row["whisper"] = hyp
        report["whisper"] = {"checkpoint": str(whisper), **_summary(rows, "whisper")}
        report["wer_ratio_llm_to_whisper"] = (report["llm"]["wer"] / report["whisper"]["wer"]
                                              if report["whisper"]["wer"] > 0 else None)
    report["skipped"] = len(records) - len(usable)
    report["rows"] = rows
    return report


__all__ = ["DEFAULT_PROMPT", "evaluate_transcription", "llm_transcripts", "whisper_transcripts"]
