"""A labelled corpus of real named sounds for the sound adapter (aisfx -> MiniLM space), with an explicit split.

The sounds are the named real recordings that exist offline (`python -m anyalign.assets sound-sets`): the 34
freedesktop UI sounds, Sonic Pi's 165 samples and ten CC0 animal recordings. Each has one recording, so a caption is
derived from its name (`caption_for`: rules per Sonic Pi prefix plus a hand-made table, `CAPTIONS`, for names a rule
cannot read, e.g. `dialog-error` -> "a short error alert tone") and a category (`category_for`, 16 categories such
as kick drum, tabla, animal, alert).

Split (`build_sound_corpus`), two protocols in one corpus:

* held out (fold `heldout`): a fraction of the sounds, chosen by a stable hash of `<set>/<name stem>` (numbered
  siblings such as `tabla_ghe2` / `tabla_ghe3` share a stem, so they are held out together), never appear in
  training in any form; they are the clean originals. Protocol (b): category-level zero-shot on them (chance
  1/#categories) and caption retrieval among them (chance 1/#held-out sounds).
* seen sounds: fold `train` holds the clean original plus `train_variants` perturbed copies, each perturbed by
  its own seeded generator (random excerpt of at most `max_seconds`, delay, speed +-3 %, low-pass, noise at 30-45
  dB SNR, level); fold `test` holds `test_variants` differently seeded, stronger copies (speed +-6 %, low-pass
  6-12 kHz, noise at 12-22 dB SNR, a short echo). Protocol (a): text -> sound and sound -> text retrieval among
  all seen sounds on the test copies (chance 1/#seen sounds): "the same sounds, recorded differently".

Rows (`sounds.jsonl`; `train.jsonl`, `test.jsonl`, `heldout.jsonl` by fold): `audio` (path relative to the file, or
absolute for the clean originals), `text` and `label` (both the sound's caption: every sound is its own class, so
copies of one sound are positives of each other in training and the trainer's zero-shot metric is sound -> text
among the fold's captions), `category`, `category_text`, `key` (`<set>/<name>/v<k>`), `group` and `sound`
(`<set>/<name>`), `set`, `fold`, `variant` and `perturbation`. Also `captions-<fold>.jsonl` (each sound's caption
once: the retrieval gallery), `categories-heldout.csv` (`path,label` for `anyalign eval zeroshot`),
`categories.json`, `split.json`, `README.md`. Perturbed copies are written once as 16-bit FLAC at 44.1 kHz (the
trainer augments only time series, and cached features need the audio fixed before `anyalign extract`).
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

from ..io import atomic_path, write_json, write_jsonl

SAMPLE_RATE = 44100  # aisfx's rate: copies are written at it so extraction does not resample them again
SETS: dict[str, tuple[str, str]] = {  # set -> (asset name, file suffix)
    "freedesktop": ("sounds", ".oga"), "sonic-pi": ("sonic-pi-samples", ".flac"), "animals": ("animal-sounds", ".mp3")}

#: category -> the phrase a zero-shot prompt uses ("the sound of {phrase}")
CATEGORIES: dict[str, str] = {
    "alert": "an alert, notification or phone tone", "voice": "a voice speaking", "animal": "an animal",
    "ambient": "an ambient drone or texture", "bass": "a synth bass note", "kick": "a kick drum",
    "snare": "a snare drum", "cymbal": "a cymbal", "tom": "a tom drum", "electronic": "an electronic blip or beep",
    "glitch": "a glitchy robotic sound", "guitar": "a guitar", "loop": "a rhythmic drum loop",
    "percussion": "a percussive hit or sound effect", "tabla": "a tabla drum", "vinyl": "a vinyl record noise"}

#: hand-made captions for names the rules cannot read (freedesktop ids, animals, odd Sonic Pi names)
CAPTIONS: dict[str, str] = {
    "alarm-clock-elapsed": "an alarm clock ringing", "audio-channel-front-center": "a voice saying front center",
    "audio-channel-front-left": "a voice saying front left", "audio-channel-front-right": "a voice saying front right",
    "audio-channel-rear-center": "a voice saying rear center", "audio-channel-rear-left": "a voice saying rear left",
    "audio-channel-rear-right": "a voice saying rear right", "audio-channel-side-left": "a voice saying side left",
    "audio-channel-side-right": "a voice saying side right", "audio-test-signal": "a test signal hiss",
    "audio-volume-change": "a short volume change pop", "bell": "a bell ringing once",
    "camera-shutter": "a camera shutter click", "complete": "a task complete chime",
    "device-added": "a device connected chime", "device-removed": "a device disconnected chime",
    "dialog-error": "a short error alert tone", "dialog-information": "an information alert tone",
    "dialog-warning": "a warning alert tone", "message-new-instant": "a new instant message ping",
    "message": "a message notification tone", "network-connectivity-established": "a network connected chime",
    "network-connectivity-lost": "a network lost chime", "phone-incoming-call": "a phone ringing",
    "phone-outgoing-busy": "a phone busy signal", "phone-outgoing-calling": "a phone calling tone",
    "power-plug": "a power plugged in chime", "power-unplug": "a power unplugged chime",
    "screen-capture": "a screenshot shutter sound", "service-login": "a login chime",
    "service-logout": "a logout chime",
    "suspend-error": "a suspend error tone", "trash-empty": "paper crumpling as the trash is emptied",
    "window-attention": "a window attention ping", "window-question": "a question alert tone",
    "cat": "a cat meowing", "cow": "a cow mooing", "dog": "dogs barking", "duck": "ducks quacking",
    "frog": "frogs croaking", "horse": "a horse neighing", "owl": "an owl hooting", "pig": "a pig grunting",
    "rooster": "a rooster crowing", "sheep": "a sheep bleating",
    "misc_burp": "a burp", "misc_cineboom": "a cinematic boom", "misc_crow": "a crow cawing",
    "perc_door": "a knock on a door", "perc_till": "a cash register till", "perc_swash": "a percussive swash",
    "drum_roll": "a snare drum roll", "drum_heavy_kick": "a heavy kick drum", "drum_cowbell": "a cowbell hit",
    "loop_amen": "the amen break drum loop", "loop_amen_full": "the full amen break drum loop",
    "loop_3d_printer": "a 3d printer whirring in a loop", "loop_tabla": "a tabla rhythm loop",
    "loop_safari": "a safari percussion loop", "loop_drone_g_97": "a drone loop in g",
    "loop_industrial": "an industrial rhythm loop", "loop_electric": "an electric rhythm loop",
    "vinyl_backspin": "a vinyl record backspin", "vinyl_hiss": "vinyl record hiss and crackle",
    "vinyl_rewind": "a vinyl record rewinding", "vinyl_scratch": "a vinyl record scratch",
    "glitch_bass_g": "a glitchy bass note in g", "guit_e_fifths": "guitar fifths on e",
    "guit_e_slide": "a guitar slide on e", "guit_em9": "a guitar e minor nine chord",
    "guit_harmonics": "guitar harmonics", "ambi_piano": "an ambient piano", "bass_dnb_f": "a drum and bass bass note",
}

#: Sonic Pi prefix -> (category, noun the caption ends with)
_PREFIX: dict[str, tuple[str, str]] = {
    "ambi": ("ambient", "ambient sound"), "bass": ("bass", "bass note"), "bd": ("kick", "bass drum kick"),
    "sn": ("snare", "snare drum"), "elec": ("electronic", "electronic sound"), "glitch": ("glitch", "glitch sound"),
    "guit": ("guitar", "guitar"), "loop": ("loop", "drum loop"), "mehackit": ("glitch", "sound"),
    "misc": ("percussion", "sound"), "perc": ("percussion", "percussion hit"), "tabla": ("tabla", "tabla stroke"),
    "vinyl": ("vinyl", "vinyl noise")}
_WORDS = {"woosh": "whoosh", "hi": "high", "lo": "low", "haus": "house", "klub": "club", "dnb": "drum and bass",
          "voxy": "vocal", "filt": "filtered", "em9": "e minor nine"}
_ELEC_KICK_SNARE = {"hollow_kick": "kick", "soft_kick": "kick", "filt_snare": "snare", "hi_snare": "snare",
                    "lo_snare": "snare", "mid_snare": "snare", "snare": "snare", "cymbal": "cymbal", "fuzz_tom": "tom"}


def _words(parts: Sequence[str]) -> list[str]:
    out = []
    for p in parts:
        m = re.fullmatch(r"([a-z]+)(\d+)", p)  # "robot3" -> "robot 3" (numbered takes)
        out.extend([_WORDS.get(m.group(1), m.group(1)), m.group(2)] if m else [_WORDS.get(p, p)])
    return out


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou8" else "a ") + phrase  # "an 808 ..."


def category_for(set_name: str, name: str) -> str:
    """The category of sound `name` of set `set_name` (a key of `CATEGORIES`)."""
    if set_name == "animals" or name == "misc_crow":
        return "animal"
    if set_name == "freedesktop":
        return "voice" if name.startswith("audio-channel-") else "alert"
    prefix, _, rest = name.partition("_")
    if prefix == "drum":
        for word, cat in (("kick", "kick"), ("bass", "kick"), ("snare", "snare"), ("roll", "snare"),
                          ("cymbal", "cymbal"), ("splash", "cymbal"), ("tom", "tom"), ("cowbell", "percussion")):
            if word in rest.split("_"):
                return cat
    if prefix == "elec" and rest in _ELEC_KICK_SNARE:
        return _ELEC_KICK_SNARE[rest]
    if prefix == "mehackit" and rest.startswith("phone"):
        return "alert"
    if prefix == "glitch" and rest.startswith("bass"):
        return "bass"
    if prefix in _PREFIX:
        return _PREFIX[prefix][0]
    raise ValueError(f"{set_name}/{name}: no category rule for this sound name")


def caption_for(set_name: str, name: str) -> str:
    """A readable caption of sound `name` (the table `CAPTIONS`, else a rule per Sonic Pi prefix)."""
    if name in CAPTIONS:
        return CAPTIONS[name]
    if set_name != "sonic-pi":
        return _article(" ".join(_words(re.split(r"[-_]", name))))
    prefix, _, rest = name.partition("_")
    parts = [p for p in rest.split("_") if p]
    if prefix == "bass" and parts and re.fullmatch(r"[a-g]", parts[-1]):
        parts = parts[:-1]  # the note name: bass_hard_c -> "a hard bass note"
    if prefix == "drum":  # drum_tom_hi_hard -> "a hard high tom drum hit"
        nouns = [p for p in parts if p in ("bass", "cymbal", "snare", "splash", "tom", "kick")]
        mods = [p for p in parts if p not in nouns]
        noun = " ".join(nouns) + (" cymbal" if nouns == ["splash"] else "")
        return _article(" ".join(_words(mods[::-1]) + [noun, "drum hit" if "cymbal" not in noun else "hit"]))
    if prefix == "mehackit":  # mehackit_robot3 -> "a robot voice effect number 3"
        kind, n = re.fullmatch(r"([a-z]+)(\d*)", parts[0]).groups()
        return f"a {kind} {'ring' if kind == 'phone' else 'voice'} effect number {n or 1}"
    if prefix == "tabla":  # tabla_ghe3 -> "a tabla ghe 3 stroke" (bols are the names of tabla strokes)
        return f"a tabla {' '.join(_words(parts))} stroke"
    category, noun = _PREFIX[prefix]
    return _article(" ".join(_words(parts) + [noun]))


def find_sounds(root: str | os.PathLike | None = None, sets: Sequence[str] = tuple(SETS)) -> list[dict[str, Any]]:
    """The named sounds of `sets` found in the asset cache: `{"sound", "set", "name", "path", "caption",
    "category"}`, sorted by `sound`; a missing set raises FileNotFoundError naming the fetch command."""
    from ..assets import asset_path

    out = []
    for s in sets:
        asset, suffix = SETS[s]
        folder = asset_path(asset, root)
        files = sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"{folder}: no {suffix} sounds; run `python -m anyalign.assets {asset}` (or "
                                    f"`python -m anyalign.assets sound-sets`)")
        for p in files:
            out.append({"sound": f"{s}/{p.stem}", "set": s, "name": p.stem, "path": str(p.resolve()),
                        "caption": caption_for(s, p.stem), "category": category_for(s, p.stem)})
    return sorted(out, key=lambda r: r["sound"])


def name_stem(sound: str) -> str:
    """The sound's name without a trailing number (`sonic-pi/tabla_ghe2` -> `sonic-pi/tabla_ghe`): numbered
    siblings are takes of one sound, so they share a stem and always fall on the same side of the split."""
    head, _, name = sound.rpartition("/")
    stem = re.sub(r"[-_ ]*\d+$", "", name) or name
    return f"{head}/{stem}" if head else stem


def is_heldout(sound: str, fraction: float, seed: int = 0) -> bool:
    """Whether `sound` is held out: a stable hash of (seed, its name stem) below `fraction` (same on every
    machine; `tabla_ghe2` and `tabla_ghe3` are held out together or trained together)."""
    h = int.from_bytes(hashlib.sha1(f"{seed}|{name_stem(sound)}".encode()).digest()[:8], "big") / 2 ** 64
    return h < fraction


# --- perturbations -----------------------------------------------------------------------------------------------
TRAIN_STRENGTH = {"speed": 0.03, "lowpass_hz": (14000, 20000), "snr_db": (30, 45), "delay_s": 0.1, "echo": 0.0}
TEST_STRENGTH = {"speed": 0.06, "lowpass_hz": (6000, 12000), "snr_db": (12, 22), "delay_s": 0.2, "echo": 0.3}


def _rng(*parts: Any) -> np.random.Generator:
    return np.random.default_rng(list(hashlib.sha1("|".join(map(str, parts)).encode()).digest()[:8]))


def perturb(wave: np.ndarray, rng: np.random.Generator, strength: dict[str, Any], *,
            max_seconds: float = 3.0, rate: int = SAMPLE_RATE) -> tuple[np.ndarray, dict[str, float]]:
    """One perturbed copy of a mono waveform: random excerpt of at most `max_seconds`, speed change, low-pass,
    delay, optional echo, white noise at a drawn SNR and a level change; returns it (peak <= 0.99) and the draws."""
    from scipy.signal import butter, sosfilt

    from ..encoders.audio_io import resample

    n_max = int(max_seconds * rate)
    start = int(rng.integers(0, len(wave) - n_max + 1)) if len(wave) > n_max else 0
    x = wave[start:start + n_max].astype(np.float64)
    speed = float(rng.uniform(-strength["speed"], strength["speed"]))
    x = resample(x.astype(np.float32), rate * (1.0 + speed), rate).astype(np.float64)  # faster = shorter, higher
    cutoff = float(rng.uniform(*strength["lowpass_hz"]))
    if cutoff < rate / 2 * 0.95:
        x = sosfilt(butter(6, cutoff, fs=rate, output="sos"), x)
    delay = float(rng.uniform(0, strength["delay_s"]))
    x = np.concatenate([np.zeros(int(delay * rate)), x])
    echo = float(rng.uniform(0, strength["echo"])) if strength["echo"] else 0.0
    if echo:
        lag = int(rate * rng.uniform(0.05, 0.15))
        x = x + echo * np.concatenate([np.zeros(lag), x[:-lag]]) if len(x) > lag else x
    snr = float(rng.uniform(*strength["snr_db"]))
    power = float(np.mean(x ** 2)) or 1e-12
    x = x + rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), x.shape)
    level = float(rng.uniform(0.3, 0.99))
    x = x * level / max(float(np.abs(x).max()), 1e-9)
    draws = {"start_s": start / rate, "speed": speed, "lowpass_hz": cutoff, "delay_s": delay, "echo": echo,
             "snr_db": snr, "level": level}
    return x.astype(np.float32), {k: round(v, 4) for k, v in draws.items()}


# --- the corpus --------------------------------------------------------------------------------------------------
@dataclass
class SoundCorpus:
    """What `build_sound_corpus` wrote: the folder, its rows and the split."""

    path: Path
    rows: list[dict[str, Any]]
    seen: list[str]
    heldout: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    def jsonl(self, fold: str) -> Path:
        """The jsonl file of one fold ("train", "test" or "heldout")."""
        return self.path / f"{fold}.jsonl"

    @property
    def paths(self) -> dict[str, Path]:
        """Every file a caller needs: the fold jsonls, the caption galleries and the held-out category csv."""
        out = {f: self.jsonl(f) for f in ("train", "test", "heldout")}
        out.update({f"captions-{f}": self.path / f"captions-{f}.jsonl" for f in ("test", "heldout")})
        out["categories-heldout"] = self.path / "categories-heldout.csv"
        return out


def build_sound_corpus(output: str | os.PathLike, *, root: str | os.PathLike | None = None,
                       sets: Sequence[str] = tuple(SETS), heldout_fraction: float = 0.25, train_variants: int = 2,
                       test_variants: int = 1, max_seconds: float = 3.0, seed: int = 0) -> SoundCorpus:
    """Write the sound corpus of the module docstring into `output` (existing copies are kept: reruns are cheap).

    `heldout_fraction=0` puts every sound in training (a quickstart that indexes all of them); `root` is the
    asset cache (default `$ANYALIGN_ASSETS`)."""
    import soundfile as sf

    from ..encoders.audio_io import load_audio

    if not 0 <= heldout_fraction < 1 or train_variants < 0 or test_variants < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), train_variants >= 0, test_variants >= 1; got "
                         f"{heldout_fraction}, {train_variants}, {test_variants}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    sounds = find_sounds(root, sets)
    rows: list[dict[str, Any]] = []
    for s in sounds:
        held = is_heldout(s["sound"], heldout_fraction, seed)
        base = {"text": s["caption"], "label": s["caption"], "category": s["category"],
                "category_text": CATEGORIES[s["category"]], "group": s["sound"], "sound": s["sound"], "set": s["set"]}
        rows.append({"audio": s["path"], "key": f"{s['sound']}/v0", "fold": "heldout" if held else "train",
                     "variant": 0, "perturbation": None, **base})
        if held:
            continue
        plan = [("train", k, TRAIN_STRENGTH) for k in range(1, train_variants + 1)]
        plan += [("test", train_variants + k, TEST_STRENGTH) for k in range(1, test_variants + 1)]
        wave = None
        for fold, k, strength in plan:
            rel = Path("audio") / s["set"] / f"{s['name']}-v{k}.flac"
            rng = _rng(seed, fold, s["sound"], k)  # each copy its own stream; test copies never share train draws
            if wave is None:
                wave = load_audio(s["path"], SAMPLE_RATE)
            x, draws = perturb(wave, rng, strength, max_seconds=max_seconds)
            if not (out / rel).is_file():
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(out / rel) as tmp:
                    sf.write(str(tmp), x, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
            rows.append({"audio": rel.as_posix(), "key": f"{s['sound']}/v{k}", "fold": fold, "variant": k,
                         "perturbation": draws, **base})
    seen = [s["sound"] for s in sounds if not is_heldout(s["sound"], heldout_fraction, seed)]
    heldout = [s["sound"] for s in sounds if is_heldout(s["sound"], heldout_fraction, seed)]
    settings = {"sets": list(sets), "heldout_fraction": heldout_fraction, "train_variants": train_variants,
                "test_variants": test_variants, "max_seconds": max_seconds, "seed": seed,
                "train_strength": TRAIN_STRENGTH, "test_strength": TEST_STRENGTH}
    corpus = SoundCorpus(out, rows, seen, heldout, settings)
    _write_outputs(corpus)
    return corpus


def _write_outputs(corpus: SoundCorpus) -> None:
    out, rows = corpus.path, corpus.rows
    write_jsonl(out / "sounds.jsonl", rows)
    for fold in ("train", "test", "heldout"):
        write_jsonl(out / f"{fold}.jsonl", [r for r in rows if r["fold"] == fold])
        gallery = {r["sound"]: {"text": r["text"], "sound": r["sound"], "category": r["category"]}
                   for r in rows if r["fold"] == fold}
        write_jsonl(out / f"captions-{fold}.jsonl", list(gallery.values()))
    with atomic_path(out / "categories-heldout.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([r["audio"], r["category"]] for r in rows if r["fold"] == "heldout")
    write_json(out / "categories.json", CATEGORIES)
    counts = {f: sum(r["fold"] == f for r in rows) for f in ("train", "test", "heldout")}
    write_json(out / "split.json", {
        "how": "held-out sounds (stable hash of set/name stem: numbered siblings together) never occur in training; "
               "train and test hold different, "
               "separately seeded copies of the other (seen) sounds",
        "seen": corpus.seen, "heldout": corpus.heldout, "counts": counts, **corpus.settings})
    st = corpus.settings
    readme = (f"# Named real sounds\n\n{len(corpus.seen) + len(corpus.heldout)} sounds ({', '.join(st['sets'])}), "
              f"one recording each, captioned from their names.\n\n"
              f"* `train.jsonl` ({counts['train']} rows): each of the {len(corpus.seen)} seen sounds clean and in "
              f"{st['train_variants']} mildly perturbed copies.\n"
              f"* `test.jsonl` ({counts['test']} rows): {st['test_variants']} differently seeded, stronger copies of "
              f"the same seen sounds: retrieval among {len(corpus.seen)} sounds (chance 1/{len(corpus.seen)}).\n"
              f"* `heldout.jsonl` ({counts['heldout']} rows): {len(corpus.heldout)} sounds never used in training "
              f"(fraction {st['heldout_fraction']} by a stable hash of the name stem, numbered siblings together, "
              f"seed {st['seed']}): category "
              f"zero-shot among {len(CATEGORIES)} categories (chance 1/{len(CATEGORIES)}) and caption retrieval "
              f"among them.\n\nCopies: excerpts of at most {st['max_seconds']} s, perturbed as in split.json.\n")
    with atomic_path(out / "README.md") as tmp:
        Path(tmp).write_text(readme, encoding="utf-8")


__all__ = ["CAPTIONS", "CATEGORIES", "SETS", "SoundCorpus", "build_sound_corpus", "caption_for", "category_for",
           "find_sounds", "is_heldout", "name_stem", "perturb"]
