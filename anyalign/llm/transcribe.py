"""Transcription: Whisper's own decoder as the ASR baseline (`anyalign transcribe`), and the WER of a causal LM's
transcripts through a speech adapter next to it on the same files (`anyalign eval transcription`); WER after
Whisper's English normaliser (`metrics.wer`), also per speaker group."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..datasets.records import Record
from ..metrics.wer import normalize_words, wer, word_errors

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


def load_whisper(whisper: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """(processor, WhisperForConditionalGeneration in float32, eval) of a Whisper checkpoint folder; None: the
    whisper-tiny.en asset (`python -m anyalign.assets whisper-tiny.en`)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    if whisper is None:
        from ..assets import asset_path

        whisper = asset_path("whisper-tiny.en")
    folder = Path(whisper).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--whisper {folder}: not a Whisper checkpoint folder (no config.json; "
                                f"`python -m anyalign.assets whisper-tiny.en` makes one)")
    processor = WhisperProcessor.from_pretrained(folder)
    asr = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    return processor, asr


def whisper_scores(whisper: str | os.PathLike | None, files: Sequence[Any], candidates: Sequence[str], *,
                   device: str | torch.device = "cpu", chunk: int = 256, quiet: bool = False) -> torch.Tensor:
    """`[N, K]`: Whisper's own decoder scoring each candidate transcript of each clip (teacher-forced log-likelihood
    per token, the first 30 s window): the ASR baseline for a lexicon (zero-shot words, a gallery of sentences),
    beside a words head's CTC scores."""
    from ..encoders.audio_io import load_audio

    processor, asr = load_whisper(whisper, device)
    fe, tok = processor.feature_extractor, processor.tokenizer
    prefix = tok("", add_special_tokens=True).input_ids[:-1]  # <|startoftranscript|><|notimestamps|> (.en models)
    ids = [prefix + tok(" " + c.strip(), add_special_tokens=False).input_ids + [tok.eos_token_id] for c in candidates]
    width = max(len(i) for i in ids)
    labels = torch.full((len(ids), width), -100, dtype=torch.long)
    for k, row in enumerate(ids):
        labels[k, :len(row)] = torch.tensor(row)
    inputs, targets = labels[:, :-1].clamp_min(0), labels[:, 1:]
    counted = (targets != -100) & (torch.arange(1, width)[None] >= len(prefix))  # the candidate's tokens and EOS
    out = torch.empty(len(files), len(ids))
    with _progress(len(files), "whisper scores", quiet) as bar, torch.inference_mode():
        for n, f in enumerate(files):
            feats = fe([load_audio(f, int(fe.sampling_rate))[: int(fe.n_samples)]], sampling_rate=fe.sampling_rate,
                       return_tensors="pt").input_features.to(device)
            enc = asr.model.encoder(feats).last_hidden_state  # [1, 1500, D]
            for lo in range(0, len(ids), chunk):
                x, y, m = inputs[lo:lo + chunk].to(device), targets[lo:lo + chunk].to(device), counted[lo:lo + chunk]
                logits = asr(encoder_outputs=(enc.expand(len(x), -1, -1),), decoder_input_ids=x).logits
                lp = logits.float().log_softmax(-1).gather(-1, y.clamp_min(0)[..., None])[..., 0].cpu()
                out[n, lo:lo + chunk] = (lp * m).sum(1) / m.sum(1)
            bar.update(1)
    return out


def whisper_transcripts(whisper: str | os.PathLike | None, files: Sequence[Any], *, batch_size: int = 8,
                        max_new_tokens: int = 160, device: str | torch.device = "cpu",
                        quiet: bool = False) -> list[str]:
    """Greedy transcripts of `files` by a Whisper checkpoint folder's own decoder (the reference system), batched.

    Each clip is decoded in Whisper's 30 s windows (the last one as long as what is left, so nothing is dropped),
    each padded to 30 s as Whisper was trained (its decoder loops on the encoder's unpadded output); the window
    transcripts are joined with a space (a word cut by a window boundary may be misheard)."""
    from ..encoders.audio_io import load_audio, split_windows

    processor, asr = load_whisper(whisper, device)
    fe = processor.feature_extractor
    rate, size = int(fe.sampling_rate), int(fe.n_samples)
    out: list[str] = []
    with _progress(len(files), "whisper transcripts", quiet) as bar, torch.inference_mode():
        for i in range(0, len(files), batch_size):
            chunk = list(files[i:i + batch_size])
            windows = [split_windows(load_audio(f, rate), size, min_fraction=0.0) for f in chunk]
            flat = [w for ws in windows for w in ws]
            said: list[str] = []
            for j in range(0, len(flat), batch_size):
                feats = fe(flat[j:j + batch_size], sampling_rate=rate, return_tensors="pt").input_features
                ids = asr.generate(feats.to(device), max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
                said += [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
            k = 0
            for ws in windows:
                out.append(" ".join(t for t in said[k:k + len(ws)] if t))
                k += len(ws)
            bar.update(len(chunk))
    return out


def audio_items(sources: Sequence[str | os.PathLike], *, reference: str | None = "text",
                modality: str = "audio") -> list[dict[str, Any]]:
    """The audio inputs of `sources` (audio files, folders, jsonl/csv/txt lists or globs, in order) as rows
    `{key, audio, reference}`; `reference` names the record field holding the spoken text (None: no reference)."""
    from ..datasets.records import read_records
    from ..encoders.audio_io import AUDIO_EXTENSIONS

    rows: list[dict[str, Any]] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
            rows.append({"key": str(source), "audio": str(path.resolve()), "reference": None})
            continue
        if not path.exists() and not any(c in str(source) for c in "*?["):
            raise FileNotFoundError(f"{source}: no such audio file, folder or list")
        found = 0
        for rec in read_records(source, modalities=[modality]):
            value = rec.input(modality)
            if value is None or (isinstance(value, (str, Path)) and Path(value).suffix.lower()
                                 not in AUDIO_EXTENSIONS):
                continue
            ref = None
            if reference is not None:
                ref = rec.text if reference in ("text", "caption") else rec.meta.get(reference)
            rows.append({"key": rec.key if len(sources) == 1 else f"{source}:{rec.key}",
                         "audio": value if not isinstance(value, Path) else str(value),
                         "reference": ref if isinstance(ref, str) and ref.strip() else None})
            found += 1
        if not found:
            raise ValueError(f"{source}: found no audio input (expected files with one of "
                             f"{', '.join(AUDIO_EXTENSIONS)}, or jsonl rows with an `{modality}` or `path` field)")
    return rows


def transcribe(sources: Sequence[str | os.PathLike], whisper: str | os.PathLike | None = None, *,
               reference: str | None = "text", batch_size: int = 8, max_new_tokens: int = 160,
               device: str | torch.device = "cpu", quiet: bool = False) -> dict[str, Any]:
    """Whisper's own transcripts of every audio input of `sources`; with reference texts, the corpus WER (Whisper's
    English normaliser + jiwer, `metrics.wer`) over the rows that have one."""
    rows = audio_items(sources, reference=reference)
    said = whisper_transcripts(whisper, [r["audio"] for r in rows], batch_size=batch_size,
                               max_new_tokens=max_new_tokens, device=device, quiet=quiet)
    for row, text in zip(rows, said):
        row["transcript"] = text
    scored = [r for r in rows if r["reference"] is not None]
    report: dict[str, Any] = {"whisper": str(whisper) if whisper is not None else "whisper-tiny.en", "n": len(rows),
                              "n_scored": len(scored), "wer": None}
    if scored:
        refs, hyps = [r["reference"] for r in scored], [r["transcript"] for r in scored]
        report["wer"] = wer(refs, hyps)
        report["reference_words"] = sum(len(normalize_words(t)) for t in refs)
        report["normaliser"] = "whisper-english"
    report["rows"] = rows
    return report


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


__all__ = ["DEFAULT_PROMPT", "audio_items", "evaluate_transcription", "llm_transcripts", "load_whisper",
           "transcribe", "whisper_transcripts"]
