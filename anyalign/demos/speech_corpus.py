"""Synthesised speech corpora: (text, voice, wav) triples from sentence lists, split by voice.

`synthesize_corpus(utterances, output, voices=..., heldout_voices=...)` speaks every utterance in every voice
with libespeak-ng (pip `espeakng-loader` ships the library and its voice data; driven through ctypes, no root
needed) or, where the Debian binary is installed, flite. Each recording gets its own speaking rate and pitch,
drawn from a generator seeded by (seed, voice, text, take): texts, voices, folds, rate and pitch are a pure function
of the inputs. The samples are as reproducible as libespeak-ng: most voices give identical files on every run,
variants with breath noise (e.g. `+f2`) differ slightly between runs.

Output folder::

    wavs/<voice>/<text_id>-t<take>.wav   mono 16-bit PCM at the engine's rate (espeak-ng: 22,050 Hz)
    speech.jsonl                         every recording, in the project's jsonl format (see below)
    train.jsonl, test.jsonl              the same rows split by fold (for tools that do not filter folds yet)
    texts-train.jsonl, texts-test.jsonl  each distinct text of a fold once (`text`, `text_id`): retrieval galleries
    labels.csv                           `path,label,fold` of the labelled rows (for `anyalign eval zeroshot`)
    split.json, README.md                the voices of each fold and how the corpus was made

A row: `audio` (path relative to the jsonl), `text`, `label` (the input's label, e.g. the command word, or
null), `key` (`<voice>/<text_id>-t<take>`), `group` (the voice), `fold` ("train" or "test" by voice: test voices
never speak in training), `text_id` (same for every recording of one text), `voice`, `engine`, `rate`,
`pitch`, and for question inputs `conversations` (`<audio>` question -> the answer). Existing wavs are kept
(a rerun resumes); every file is written atomically.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ..io import atomic_path, iter_jsonl, write_json, write_jsonl

logger = logging.getLogger(__name__)

ENGINES = ("espeak", "flite")
#: default voices: espeak-ng English accents combined with voice variants (timbre, sex, age)
DEFAULT_TRAIN_VOICES = ("en-us+m1", "en-us+f1", "en+m2", "en+f2", "en-gb-scotland+m3", "en-gb-x-rp+f3",
                        "en-us-nyc+m4", "en-029+f4", "en-gb-x-gbclan+m6", "en-gb-x-gbcwmd+f5", "en-us+m7",
                        "en+klatt2")
#: held out by default: voice variants that no training voice uses, on four of the accents
DEFAULT_TEST_VOICES = ("en-us+m5", "en+steph", "en-gb-x-rp+m8", "en-us-nyc+klatt3")
DEFAULT_FLITE_VOICES = ("slt", "rms", "awb", "kal")
RATE_RANGE = (140, 200)  # espeak-ng words per minute (default 175)
PITCH_RANGE = (35, 65)  # espeak-ng pitch 0-100 (default 50)
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3  # espeak_PARAMETER
_AUDIO_OUTPUT_SYNCHRONOUS, _POS_CHARACTER, _CHARS_UTF8 = 2, 1, 1
_EE_NOT_FOUND = 2


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


# --- engines -----------------------------------------------------------------------------------------------------
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakEngine:
    """libespeak-ng from pip `espeakng-loader`, synchronous output collected by a callback (one per process)."""

    name = "espeak"
    _instance: EspeakEngine | None = None

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise ImportError("the espeak engine needs pip `espeakng-loader` (pip install espeakng-loader)") from None
        self.data_path = Path(espeakng_loader.get_data_path())
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path.parent).encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng: initialisation failed with data at {self.data_path}")
        self.lib, self.sample_rate = lib, int(rate)
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: the library holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> EspeakEngine:
        """The process-wide engine (libespeak-ng keeps global state)."""
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _collect(self, wav: Any, n: int, events: Any) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def variants(self) -> list[str]:
        return sorted(p.name for p in (self.data_path / "voices" / "!v").iterdir())

    def check_voice(self, voice: str) -> None:
        """Raise ValueError naming the voice when espeak-ng does not know its language or variant."""
        lang, _, variant = voice.partition("+")
        if variant and not (self.data_path / "voices" / "!v" / variant).is_file():
            some = ", ".join(self.variants()[:8])
            raise ValueError(f"voice {voice!r}: espeak-ng has no variant {variant!r} (e.g. {some} ...; see "
                             f"{self.data_path / 'voices' / '!v'})")
        if self.lib.espeak_SetVoiceByName(lang.encode()) == _EE_NOT_FOUND:
            raise ValueError(f"voice {voice!r}: espeak-ng has no voice {lang!r} (English ones: en, en-us, en-gb-x-rp, "
                             f"en-gb-scotland, en-us-nyc, en-029, ...)")

    def synthesize(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        """int16 samples `[N]` of `text` spoken by `voice` at `rate` words/minute and `pitch` (0-100)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"voice {voice!r}: espeak-ng cannot select it")
        self.lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
        self._chunks = []
        data = text.encode("utf-8")
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak-ng: synthesis of {text[:40]!r} failed (error {err})")
        if not self._chunks:
            raise RuntimeError(f"espeak-ng: no audio for {text[:40]!r} in voice {voice!r}")
        return np.concatenate(self._chunks)


class FliteEngine:
    """The Debian `flite` binary (apt-get install flite); rate and pitch through its duration/F0 features."""

    name = "flite"

    def __init__(self) -> None:
        self.binary = shutil.which("flite")
        if self.binary is None:
            raise FileNotFoundError("--engine flite: the `flite` program is not installed (Debian: apt-get install "
                                    "flite); the default engine, espeak, needs only pip")
        self.sample_rate = 0  # known after the first file

    def check_voice(self, voice: str) -> None:
        out = subprocess.run([self.binary, "-lv"], capture_output=True, text=True, check=False).stdout
        known = out.split(":", 1)[-1].split()
        if voice not in known and not Path(voice).is_file():
            raise ValueError(f"voice {voice!r}: flite has no such voice (it has: {', '.join(known)})")

    def synthesize(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        stretch = 175.0 / rate  # duration_stretch > 1 is slower
        f0 = 80 + pitch * 1.2  # int_f0_target_mean in Hz
        with tempfile.TemporaryDirectory(prefix="anyalign-flite-") as tmp:
            out = Path(tmp) / "x.wav"
            cmd = [self.binary, "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}",
                   "--setf", f"int_f0_target_mean={f0:.1f}", "-t", text, "-o", str(out)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0 or not out.is_file():
                raise RuntimeError(f"flite: synthesis of {text[:40]!r} failed: {res.stderr.strip()[:200]}")
            wave, self.sample_rate = sf.read(str(out), dtype="int16")
        return wave


def get_engine(name: str) -> EspeakEngine | FliteEngine:
    """The synthesiser called `name` ("espeak" or "flite")."""
    if name == "espeak":
        return EspeakEngine.get()
    if name == "flite":
        return FliteEngine()
    raise ValueError(f"--engine {name!r}: expected one of {', '.join(ENGINES)}")


# --- the corpus --------------------------------------------------------------------------------------------------
def _voice_dir(voice: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", voice)


def _prosody(seed: int, voice: str, text_id: str, take: int) -> tuple[int, int]:
    digest = hashlib.sha1(f"{seed}|{voice}|{text_id}|{take}".encode()).digest()
    rng = np.random.default_rng(list(digest[:8]))
    return int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)), int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))


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


def synthesize_corpus(utterances: Sequence[Utterance], output: str | os.PathLike, *,
                      voices: Sequence[str] | None = None, heldout_voices: Sequence[str] | None = None,
                      engine: str = "espeak", seed: int = 0, progress: bool = True) -> SpeechCorpus:
    """Speak every utterance in every voice (train voices + held-out voices) into `output`; see the module doc."""
    eng = get_engine(engine)
    if voices is None and heldout_voices is None:
        pool = DEFAULT_TRAIN_VOICES + DEFAULT_TEST_VOICES if engine == "espeak" else DEFAULT_FLITE_VOICES
        heldout_voices = DEFAULT_TEST_VOICES if engine == "espeak" else DEFAULT_FLITE_VOICES[-1:]
        voices = [v for v in pool if v not in heldout_voices]
    voices, heldout_voices = list(voices or []), list(heldout_voices or [])
    both = sorted(set(voices) & set(heldout_voices))
    if both:
        raise ValueError(f"--voices and --heldout-voices overlap ({', '.join(both)}): a voice is in one fold only")
    if not voices and not heldout_voices:
        raise ValueError("no voices: pass --voices and/or --heldout-voices")
    for v in voices + heldout_voices:
        eng.check_voice(v)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    plan = [(v, "train" if v in voices else "test", u, t) for v in voices + heldout_voices for u in utterances
            for t in range(u.takes)]
    rows: list[dict[str, Any]] = []
    n_new = n_kept = 0
    rate_seen = 0
    for voice, fold, utt, take in tqdm(plan, desc=f"speaking ({engine})", unit="clip", disable=not progress):
        rel = Path("wavs") / _voice_dir(voice) / f"{utt.text_id}-t{take}.wav"
        rate, pitch = _prosody(seed, voice, utt.text_id, take)
        sr = _readable(out / rel)
        if sr:
            n_kept += 1
        else:
            wave = eng.synthesize(utt.text, voice, rate, pitch)
            sr = eng.sample_rate
            _write_wav(out / rel, wave, sr)
            n_new += 1
        rate_seen = rate_seen or sr
        row: dict[str, Any] = {"audio": rel.as_posix(), "text": utt.text, "label": utt.label,
                               "key": f"{voice}/{utt.text_id}-t{take}", "group": voice, "fold": fold,
                               "text_id": utt.text_id, "voice": voice, "engine": engine, "rate": rate, "pitch": pitch}
        if utt.answer is not None:
            row["conversations"] = [{"from": "human", "value": "<audio>\nAnswer the spoken question."},
                                    {"from": "gpt", "value": utt.answer}]
        rows.append(row)
    settings = {"engine": engine, "seed": seed, "rate_range": list(RATE_RANGE), "pitch_range": list(PITCH_RANGE),
                "sample_rate": rate_seen, "utterances": len(utterances),
                "takes": sum(u.takes for u in utterances)}
    corpus = SpeechCorpus(out, rows, voices, heldout_voices, n_new, n_kept, rate_seen, settings)
    _write_outputs(corpus, utterances)
    return corpus


def _write_outputs(corpus: SpeechCorpus, utterances: Sequence[Utterance]) -> None:
    out, rows = corpus.path, corpus.rows
    write_jsonl(out / "speech.jsonl", rows)
    for fold in ("train", "test"):
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
    split = {"split": "by voice: the test voices never occur in the train fold", "train_voices": corpus.train_voices,
             "test_voices": corpus.test_voices,
             "counts": {f: sum(r["fold"] == f for r in rows) for f in ("train", "test")}, **corpus.settings}
    write_json(out / "split.json", split)
    readme = (f"# Synthesised speech corpus\n\n{len(utterances)} texts spoken by {len(corpus.train_voices)} train and "
              f"{len(corpus.test_voices)} held-out voices with {corpus.settings['engine']} "
              f"({corpus.sample_rate} Hz mono wav), speaking rate {RATE_RANGE[0]}-{RATE_RANGE[1]} words/min and pitch "
              f"{PITCH_RANGE[0]}-{PITCH_RANGE[1]} drawn per recording (seed {corpus.settings['seed']}).\n\n"
              f"Split by voice: fold `train` = {', '.join(corpus.train_voices) or '(none)'}; fold `test` = "
              f"{', '.join(corpus.test_voices) or '(none)'}. Test voices never occur in training; the texts are the "
              f"same in both folds.\n\nFiles: speech.jsonl (all), train.jsonl / test.jsonl (by fold), "
              f"texts-<fold>.jsonl (distinct texts), labels.csv (labelled rows), split.json.\n")
    with atomic_path(out / "README.md") as tmp:
        Path(tmp).write_text(readme, encoding="utf-8")


def corpus_summary(corpus: SpeechCorpus) -> dict[str, Any]:
    """A short JSON-able description of a corpus (what the CLI prints)."""
    return {"path": str(corpus.path), "recordings": len(corpus.rows), "new": corpus.n_new, "kept": corpus.n_kept,
            "sample_rate": corpus.sample_rate, "train_voices": corpus.train_voices,
            "test_voices": corpus.test_voices}


__all__ = ["DEFAULT_TEST_VOICES", "DEFAULT_TRAIN_VOICES", "ENGINES", "EspeakEngine", "FliteEngine", "SpeechCorpus",
           "Utterance", "corpus_summary", "get_engine", "read_utterances", "synthesize_corpus"]
