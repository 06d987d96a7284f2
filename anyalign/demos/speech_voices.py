"""Speech synthesisers and voices of the synthesised speech corpora (`speech_corpus.py`): libespeak-ng through ctypes
(pip `espeakng-loader`) and the Debian `flite` binary, the default voice folds, voice families (synthesiser + base
voice), and the per-recording `Augment` (resampling, background noise, telephone band)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

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
RATE_RANGE = (140, 200)  # espeak-ng words per minute (default 175)
PITCH_RANGE = (35, 65)  # espeak-ng pitch 0-100 (default 50)
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3  # espeak_PARAMETER
_AUDIO_OUTPUT_SYNCHRONOUS, _POS_CHARACTER, _CHARS_UTF8 = 2, 1, 1
_EE_NOT_FOUND = 2


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

    @staticmethod
    def tag(snr: float | None, telephone: bool) -> tuple[str, str]:
        """(file name suffix, row description) of one recording's augmentation."""
        parts = ([f"-n{snr:.0f}"] if snr is not None else []) + (["-tel"] if telephone else [])
        desc = ([f"noise {snr:.0f} dB"] if snr is not None else []) + (["telephone"] if telephone else [])
        return "".join(parts), ", ".join(desc)


def _resample(x: np.ndarray, rate: int, target: int, resample_poly: Any) -> np.ndarray:
    if rate == target:
        return x
    g = np.gcd(int(rate), int(target))
    return resample_poly(x, target // g, rate // g).astype(np.float32)


__all__ = ["DEFAULT_FLITE_VOICES", "DEFAULT_TEST_VOICES", "DEFAULT_TRAIN_VOICES", "ENGINES", "MIXED_TEST_VOICES",
           "MIXED_TRAIN_VOICES", "MIXED_VAL_VOICES", "PITCH_RANGE", "RATE_RANGE", "Augment", "EspeakEngine",
           "FliteEngine", "get_engine", "parse_voice", "voice_family"]
