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
import ctypes
import functools
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
#: default voices: espeak-ng English accents combined with voice variants (timbre, sex, age); the held-out voices
#: come from accents (voice families) that no training voice uses
DEFAULT_TRAIN_VOICES = ("en-us+m1", "en-us+f1", "en+m2", "en+f2", "en-gb-scotland+m3", "en-gb-x-rp+f3",
                        "en-gb-x-gbclan+m6", "en-gb-x-gbcwmd+f5", "en-us+m7", "en+klatt2", "en-gb-x-rp+m4",
                        "en-gb-scotland+f4")
DEFAULT_TEST_VOICES = ("en-us-nyc+m5", "en-us-nyc+f1", "en-029+m8", "en-029+klatt3")
DEFAULT_FLITE_VOICES = ("slt", "rms", "awb", "kal")
#: a corpus of many sentences (`anyalign data speech --fortunes N`): espeak-ng accents x variants plus flite voices;
#: the three folds share no voice family (synthesiser + base voice)
MIXED_TRAIN_VOICES = ("en-us+m1", "en-us+f1", "en-us+m3", "en-us+f3", "en+m2", "en+f2", "en+m4", "en+klatt2",
                      "en-gb-x-rp+m1", "en-gb-x-rp+f3", "en-gb-x-gbclan+m6", "en-gb-x-gbcwmd+f5", "flite:kal",
                      "flite:slt")
MIXED_VAL_VOICES = ("en-gb-scotland+m3", "en-gb-scotland+f2", "flite:rms")
MIXED_TEST_VOICES = ("en-029+m5", "en-029+f1", "en-us-nyc+m7", "en-us-nyc+f4", "flite:awb")
#: words the zero-shot checks speak (digits, colours): kept out of generated training sentences
ZEROSHOT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "red", "green",
                  "blue", "yellow", "black", "white", "orange", "purple", "brown", "pink")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORD_LIST = Path("/usr/share/dict/american-english")
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


# --- voices and families -----------------------------------------------------------------------------------------
def parse_voice(voice: str, engine: str = "espeak") -> tuple[str, str]:
    """(engine, voice name) of `ENGINE:VOICE` or of a bare `VOICE` spoken by `engine`."""
    eng, sep, name = voice.partition(":")
    if sep and eng in ENGINES:
        return eng, name
    return engine, voice


def voice_family(voice: str, engine: str = "espeak") -> str:
    """The voice's family, synthesiser + base voice: `espeak:en-us` for `en-us+m3`, `flite:slt` for `flite:slt`."""
    eng, name = parse_voice(voice, engine)
    return f"{eng}:{name.split('+', 1)[0] if eng == 'espeak' else name}"


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


# --- augmentation ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """Per-recording audio augmentation: resample to `sample_rate`; with probability `noise` add white noise at an
    SNR drawn from `snr_db`; with probability `telephone` pass through a telephone channel (8 kHz, 300-3400 Hz)."""

    sample_rate: int = 16000
    noise: float = 0.3
    snr_db: tuple[float, float] = (10.0, 30.0)
    telephone: float = 0.2

    def __post_init__(self) -> None:
        if not (0 <= self.noise <= 1 and 0 <= self.telephone <= 1):
            raise ValueError(f"augment: probabilities must lie in [0, 1], got noise={self.noise}, "
                             f"telephone={self.telephone}")
        if self.sample_rate < 8000:
            raise ValueError(f"augment: sample_rate must be >= 8000 Hz, got {self.sample_rate}")

    def draw(self, rng: np.random.Generator) -> tuple[float | None, bool]:
        """(SNR in dB or None, telephone band?) of one recording."""
        snr = float(np.round(rng.uniform(*self.snr_db))) if rng.random() < self.noise else None
        return snr, bool(rng.random() < self.telephone)

    def apply(self, wave: np.ndarray, rate: int, snr: float | None, telephone: bool,
              rng: np.random.Generator) -> np.ndarray:
        """int16 samples at `sample_rate` of the int16 `wave` at `rate`, with the drawn noise and channel."""
        from scipy.signal import resample_poly

        x = wave.astype(np.float32) / 32768.0
        if telephone:
            x = _resample(x, rate, 8000, resample_poly)
            spec = np.fft.rfft(x)
            freqs = np.fft.rfftfreq(len(x), 1 / 8000)
            spec[(freqs < 300) | (freqs > 3400)] = 0
            x = np.fft.irfft(spec, n=len(x)).astype(np.float32)
            rate = 8000
        x = _resample(x, rate, self.sample_rate, resample_poly)
        if snr is not None:
            power = float(np.mean(x ** 2)) + 1e-12
            x = x + rng.standard_normal(len(x)).astype(np.float32) * np.sqrt(power / 10 ** (snr / 10))
        peak = float(np.abs(x).max()) + 1e-9
        x = x * min(1.0, 0.95 / peak)
        return (x * 32767).astype(np.int16)


def _resample(x: np.ndarray, rate: int, target: int, resample_poly: Any) -> np.ndarray:
    if rate == target:
        return x
    g = np.gcd(int(rate), int(target))
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def _tag(snr: float | None, telephone: bool) -> tuple[str, str]:
    """(file name suffix, row description) of one recording's augmentation."""
    parts = ([f"-n{snr:.0f}"] if snr is not None else []) + (["-tel"] if telephone else [])
    desc = ([f"noise {snr:.0f} dB"] if snr is not None else []) + (["telephone"] if telephone else [])
    return "".join(parts), ", ".join(desc)


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
        suffix, desc = _tag(snr, tel)
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


def corpus_summary(corpus: SpeechCorpus) -> dict[str, Any]:
    """A short JSON-able description of a corpus (what the CLI prints)."""
    return {"path": str(corpus.path), "recordings": len(corpus.rows), "new": corpus.n_new, "kept": corpus.n_kept,
            "sample_rate": corpus.sample_rate, "train_voices": corpus.train_voices,
            "test_voices": corpus.test_voices}


__all__ = ["DEFAULT_TEST_VOICES", "DEFAULT_TRAIN_VOICES", "ENGINES", "MIXED_TEST_VOICES", "MIXED_TRAIN_VOICES",
           "MIXED_VAL_VOICES", "ZEROSHOT_WORDS", "Augment", "EspeakEngine", "FliteEngine", "SpeechCorpus", "Utterance",
           "add_transcripts", "corpus_summary", "fortune_sentences", "get_engine", "parse_voice", "read_utterances",
           "synthesize_corpus", "text_fold", "voice_family"]
