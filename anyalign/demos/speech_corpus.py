"""Synthesised speech corpora: (text, voice, wav) triples from sentence lists, split by sentence and voice family.

`synthesize_corpus(utterances, output, voices=..., heldout_voices=...)` speaks the utterances with libespeak-ng
(pip `espeakng-loader` ships the library and its voice data; driven through ctypes, no root needed) and, where the
Debian binary is installed, flite. A voice is `VOICE` (spoken by the `engine` argument's synthesiser) or
`ENGINE:VOICE` (`flite:slt`, `espeak:en-us+m3`), so one corpus mixes synthesisers. A voice FAMILY is the synthesiser
and base voice (`espeak:en-us` for every `en-us+VARIANT`, `flite:slt`): the folds' voices never share a family.

With `heldout_texts` > 0 the texts are split too, by a stable hash of each text: test texts are spoken only by the
held-out voices and training texts only by the training voices, so the test fold shares no sentence and no voice
family with training; `val_texts` with `val_voices` make a validation fold ("val") the same way, for tuning without
the test fold. `voices_per_text=k` speaks each text in k voices of its fold (drawn per text) instead of all.
`fortune_sentences()` gives thousands of distinct short English sentences from Debian `fortunes`, filtered by length
and the Debian `wamerican` word list. `Augment` resamples to 16 kHz and adds background noise and a telephone band
(8 kHz, 300-3400 Hz) to some recordings. Speaking rate, pitch and augmentation are drawn per recording from a
generator seeded by (seed, voice, text, take): texts, voices, folds and audio settings are a pure function of the
inputs. The samples are as reproducible as the engines: most voices give identical files on every run, variants with
breath noise (e.g. `+f2`) differ slightly between runs.

Output folder::

    wavs/<voice>/<text_id>-t<take>[-n<dB>][-tel].wav   mono 16-bit PCM at the engine's rate (espeak-ng 22,050 Hz,
                                         flite 16 kHz) or the `Augment` rate
    speech.jsonl                         every recording, in the project's jsonl format (see below)
    train.jsonl, test.jsonl, val.jsonl   the same rows split by fold (val.jsonl only with a validation fold)
    texts-<fold>.jsonl                   each distinct text of a fold once (`text`, `text_id`): retrieval galleries
    labels.csv                           `path,label,fold` of the labelled rows (for `anyalign eval zeroshot`)
    split.json, README.md                the voices, families and text counts of each fold and how the corpus was made

A row: `audio` (path relative to the jsonl), `text`, `label` (the input's label, e.g. the command word, or
null), `key` (`<voice>/<text_id>-t<take>`), `group` (the voice), `fold`, `text_id` (same for every recording of
one text), `voice`, `family`, `engine`, `rate`, `pitch`, `augment` ("" or e.g. "noise 18 dB, telephone"), and for
question inputs `conversations` (`<audio>` question -> the answer). Existing wavs are kept (a rerun resumes);
every file is written atomically. `add_transcripts` writes Whisper's own transcripts next to the rows (the
distillation targets of unlabelled audio).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ..io import atomic_path, write_json, write_jsonl
from .speech_texts import (
    FORTUNES_DIR,
    WORD_LIST,
    ZEROSHOT_WORDS,
    Utterance,
    fortune_sentences,
    iter_jsonl,
    read_utterances,
)
from .speech_voices import (
    DEFAULT_FLITE_VOICES,
    DEFAULT_TEST_VOICES,
    DEFAULT_TRAIN_VOICES,
    ENGINES,
    MIXED_TEST_VOICES,
    MIXED_TRAIN_VOICES,
    MIXED_VAL_VOICES,
    PITCH_RANGE,
    RATE_RANGE,
    Augment,
    EspeakEngine,
    FliteEngine,
    get_engine,
    parse_voice,
    voice_family,
)


@dataclass
class SpeechCorpus:
    """What `synthesize_corpus` made: the rows of `speech.jsonl`, counts, and the voice split."""

    path: Path
    rows: list[dict[str, Any]]
    train_voices: list[str]
    test_voices: list[str]
    n_new: int = 0
    n_kept: int = 0
    sample_rate: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def jsonl(self) -> Path:
        return self.path / "speech.jsonl"


# --- the corpus --------------------------------------------------------------------------------------------------
def _voice_dir(voice: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", voice)


def _rng(seed: int, *parts: Any) -> np.random.Generator:
    digest = hashlib.sha1("|".join(map(str, (seed, *parts))).encode()).digest()
    return np.random.default_rng(list(digest[:8]))


def _prosody(seed: int, voice: str, text_id: str, take: int) -> tuple[int, int]:
    rng = _rng(seed, voice, text_id, take)
    return int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)), int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))


def text_fold(text_id: str, *, heldout_texts: float, val_texts: float = 0.0, seed: int = 0) -> str:
    """The fold of a text under a sentence split: a stable hash of (seed, text id) against the fractions."""
    u = int(hashlib.sha1(f"{seed}|fold|{text_id}".encode()).hexdigest()[:12], 16) / float(16 ** 12)
    return "test" if u < heldout_texts else "val" if u < heldout_texts + val_texts else "train"


def _write_wav(path: Path, wave: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), wave, rate, subtype="PCM_16", format="WAV")


def _readable(path: Path) -> int:
    """The sample rate of a finished wav, 0 when missing or unreadable (it is then made again)."""
    try:
        info = sf.info(str(path))
        return int(info.samplerate) if info.frames > 0 else 0
    except (RuntimeError, sf.LibsndfileError):
        return 0


def _default_voices(engine: str) -> tuple[list[str], list[str]]:
    pool = DEFAULT_TRAIN_VOICES + DEFAULT_TEST_VOICES if engine == "espeak" else DEFAULT_FLITE_VOICES
    held = DEFAULT_TEST_VOICES if engine == "espeak" else DEFAULT_FLITE_VOICES[-1:]
    return [v for v in pool if v not in held], list(held)


def _check_folds(folds: dict[str, list[str]], engine: str) -> None:
    """Each voice in one fold only, and no voice family in two folds."""
    names = {"train": "--voices", "val": "--val-voices", "test": "--heldout-voices"}
    fams = {f: {voice_family(v, engine): v for v in vs} for f, vs in folds.items()}
    order = list(folds)
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            both = sorted(set(folds[a]) & set(folds[b]))
            if both:
                raise ValueError(f"{names[a]} and {names[b]} overlap ({', '.join(both)}): a voice is in one fold only")
            shared = sorted(set(fams[a]) & set(fams[b]))
            if shared:
                f = shared[0]
                raise ValueError(f"{names[a]} and {names[b]} share the voice family {f} ({fams[a][f]}, {fams[b][f]}):"
                                 f" held-out voices must come from families no other fold uses")


def synthesize_corpus(utterances: Sequence[Utterance], output: str | os.PathLike, *,
                      voices: Sequence[str] | None = None, heldout_voices: Sequence[str] | None = None,
                      engine: str = "espeak", seed: int = 0, progress: bool = True, heldout_texts: float = 0.0,
                      val_voices: Sequence[str] = (), val_texts: float = 0.0, voices_per_text: int | None = None,
                      augment: Augment | None = None) -> SpeechCorpus:
    """Speak the utterances in the folds' voices (train, optional val, held-out test) into `output`; see the
    module doc for the split by text (`heldout_texts`, `val_texts` fractions) and by voice family."""
    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if voices is None and heldout_voices is None:
        voices, heldout_voices = _default_voices(engine)
    folds = {"train": list(voices or []), "val": list(val_voices), "test": list(heldout_voices or [])}
    if not any(folds.values()):
        raise ValueError("no voices: pass --voices and/or --heldout-voices")
    if not (0 <= heldout_texts < 1 and 0 <= val_texts < 1 and heldout_texts + val_texts < 1):
        raise ValueError(f"--heldout-texts {heldout_texts} / --val-texts {val_texts}: expected fractions in [0, 1) "
                         f"with a sum below 1")
    if (val_texts > 0) != bool(folds["val"]):
        raise ValueError("a validation fold needs both --val-texts > 0 and --val-voices")
    if voices_per_text is not None and voices_per_text < 1:
        raise ValueError(f"--voices-per-text must be >= 1, got {voices_per_text}")
    _check_folds(folds, engine)
    engines: dict[str, Any] = {}
    for v in (v for vs in folds.values() for v in vs):
        eng, name = parse_voice(v, engine)
        if eng not in engines:
            engines[eng] = get_engine(eng)
        engines[eng].check_voice(name)
    split_texts = heldout_texts > 0 or val_texts > 0
    plan = []
    for utt in utterances:
        tf = text_fold(utt.text_id, heldout_texts=heldout_texts, val_texts=val_texts, seed=seed)
        for fold, fold_voices in folds.items():
            if split_texts and fold != tf or not fold_voices:
                continue
            chosen = fold_voices
            if voices_per_text is not None and voices_per_text < len(fold_voices):
                pick = _rng(seed, "voices", utt.text_id).permutation(len(fold_voices))[:voices_per_text]
                chosen = [fold_voices[i] for i in sorted(pick)]
            plan += [(v, fold, utt, t) for v in chosen for t in range(utt.takes)]
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    n_new = n_kept = 0
    rate_seen = 0
    for voice, fold, utt, take in tqdm(plan, desc="speaking", unit="clip", disable=not progress):
        eng, name = parse_voice(voice, engine)
        rate, pitch = _prosody(seed, voice, utt.text_id, take)
        rng = _rng(seed, "augment", voice, utt.text_id, take)
        snr, tel = augment.draw(rng) if augment is not None else (None, False)
        suffix, desc = Augment.tag(snr, tel)
        rel = Path("wavs") / _voice_dir(voice) / f"{utt.text_id}-t{take}{suffix}.wav"
        sr = _readable(out / rel)
        if sr:
            n_kept += 1
        else:
            wave = engines[eng].synthesize(utt.text, name, rate, pitch)
            sr = engines[eng].sample_rate
            if augment is not None:
                wave, sr = augment.apply(wave, sr, snr, tel, rng), augment.sample_rate
            _write_wav(out / rel, wave, sr)
            n_new += 1
        rate_seen = rate_seen or sr
        row: dict[str, Any] = {"audio": rel.as_posix(), "text": utt.text, "label": utt.label,
                               "key": f"{voice}/{utt.text_id}-t{take}", "group": voice, "fold": fold,
                               "text_id": utt.text_id, "voice": voice, "family": voice_family(voice, engine),
                               "engine": eng, "rate": rate, "pitch": pitch, "augment": desc}
        if utt.answer is not None:
            row["conversations"] = [{"from": "human", "value": "<audio>\nAnswer the spoken question."},
                                    {"from": "gpt", "value": utt.answer}]
        rows.append(row)
    settings = {"engine": engine, "seed": seed, "rate_range": list(RATE_RANGE), "pitch_range": list(PITCH_RANGE),
                "sample_rate": rate_seen, "utterances": len(utterances),
                "takes": sum(u.takes for u in utterances), "heldout_texts": heldout_texts, "val_texts": val_texts,
                "val_voices": folds["val"], "voices_per_text": voices_per_text,
                "augment": None if augment is None else {"sample_rate": augment.sample_rate, "noise": augment.noise,
                                                         "snr_db": list(augment.snr_db),
                                                         "telephone": augment.telephone}}
    corpus = SpeechCorpus(out, rows, folds["train"], folds["test"], n_new, n_kept, rate_seen, settings)
    _write_outputs(corpus, utterances)
    return corpus


def _write_outputs(corpus: SpeechCorpus, utterances: Sequence[Utterance]) -> None:
    out, rows, st = corpus.path, corpus.rows, corpus.settings
    folds = ["train", "test"] + (["val"] if st["val_voices"] else [])
    write_jsonl(out / "speech.jsonl", rows)
    for fold in folds:
        part = [r for r in rows if r["fold"] == fold]
        write_jsonl(out / f"{fold}.jsonl", part)
        texts = {r["text_id"]: {"text": r["text"], "text_id": r["text_id"], "label": r["label"]} for r in part}
        write_jsonl(out / f"texts-{fold}.jsonl", list(texts.values()))
    labelled = [r for r in rows if r["label"] is not None]
    if labelled:
        with atomic_path(out / "labels.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "fold"])
            w.writerows([r["audio"], r["label"], r["fold"]] for r in labelled)
    by_text = st["heldout_texts"] > 0 or st["val_texts"] > 0
    how = ("by text and voice family: each fold's texts are spoken only by its voices, and no voice family is in "
           "two folds" if by_text else "by voice: the test voices (and their families) never occur in the train "
           "fold; the texts are the same in every fold")
    fold_voices = {"train": corpus.train_voices, "val": st["val_voices"], "test": corpus.test_voices}
    split = {"split": how, "train_voices": corpus.train_voices, "test_voices": corpus.test_voices,
             "families": {f: sorted({r["family"] for r in rows if r["fold"] == f}) for f in folds},
             "counts": {f: sum(r["fold"] == f for r in rows) for f in folds},
             "texts": {f: len({r["text_id"] for r in rows if r["fold"] == f}) for f in folds}, **st}
    write_json(out / "split.json", split)
    lines = [f"fold `{f}`: {split['texts'][f]} texts, {split['counts'][f]} recordings, voices "
             f"{', '.join(fold_voices[f]) or '(none)'}" for f in folds]
    aug = st["augment"]
    readme = (f"# Synthesised speech corpus\n\n{len(utterances)} texts, {len(rows)} recordings "
              f"({corpus.sample_rate} Hz mono wav), speaking rate {RATE_RANGE[0]}-{RATE_RANGE[1]} words/min and pitch "
              f"{PITCH_RANGE[0]}-{PITCH_RANGE[1]} drawn per recording (seed {st['seed']})"
              + (f"; noise (p={aug['noise']}, SNR {aug['snr_db'][0]:g}-{aug['snr_db'][1]:g} dB) and telephone band "
                 f"(p={aug['telephone']}) augmentation" if aug else "") + ".\n\n"
              f"Split {how}.\n\n" + "\n".join(f"- {ln}" for ln in lines) + "\n\n"
              "Files: speech.jsonl (all), <fold>.jsonl, texts-<fold>.jsonl (distinct texts), labels.csv (labelled "
              "rows), split.json.\n")
    with atomic_path(out / "README.md") as tmp:
        Path(tmp).write_text(readme, encoding="utf-8")


def add_transcripts(corpus_dir: str | os.PathLike, whisper: str | os.PathLike, *, folds: Sequence[str] = ("train",),
                    limit: int | None = None, batch_size: int = 8, progress: bool = True) -> dict[str, Path]:
    """Whisper's own transcript of the recordings of `folds` (the first `limit` of each; its decoder,
    `anyalign.llm.transcribe`), written as `<fold>-transcribed.jsonl`: the rows with `text` = the transcript (the
    distillation target: no labels needed) and `reference` = the text that was spoken. Transcripts already written
    are reused."""
    from ..llm.transcribe import whisper_transcripts

    root = Path(corpus_dir)
    out: dict[str, Path] = {}
    for fold in folds:
        src = root / f"{fold}.jsonl"
        if not src.is_file():
            raise FileNotFoundError(f"{src}: no such fold file (folds of this corpus: "
                                    f"{', '.join(p.stem for p in root.glob('*.jsonl'))})")
        rows = [r for _, r in iter_jsonl(src)][:limit]
        dest = root / f"{fold}-transcribed.jsonl"
        done = {r["key"]: r["text"] for _, r in iter_jsonl(dest)} if dest.is_file() else {}
        todo = [r for r in rows if r["key"] not in done]
        if todo:
            said = whisper_transcripts(whisper, [root / r["audio"] for r in todo], batch_size=batch_size,
                                       quiet=not progress)
            done.update({r["key"]: t for r, t in zip(todo, said)})
        write_jsonl(dest, [{**r, "text": done[r["key"]], "reference": r["text"]} for r in rows])
        out[fold] = dest
    return out


__all__ = ["DEFAULT_FLITE_VOICES", "DEFAULT_TEST_VOICES", "DEFAULT_TRAIN_VOICES", "ENGINES", "FORTUNES_DIR",
           "MIXED_TEST_VOICES", "MIXED_TRAIN_VOICES", "MIXED_VAL_VOICES", "PITCH_RANGE", "RATE_RANGE", "WORD_LIST",
           "ZEROSHOT_WORDS", "Augment", "EspeakEngine", "FliteEngine", "SpeechCorpus", "Utterance", "add_transcripts",
           "fortune_sentences", "get_engine", "parse_voice", "read_utterances", "synthesize_corpus",
           "text_fold", "voice_family"]
