"""`anyalign transcribe` (Whisper's own decoder) and WER with Whisper's English normaliser + jiwer.

Input resolution and WER need no model; the transcription tests run the real Whisper tiny.en asset
(`python -m anyalign.assets whisper-tiny.en`) on espeak-ng speech and skip with the reason when either is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _cli import run_captured

from anyalign.llm.transcribe import audio_items
from anyalign.metrics import normalize_words, wer, word_errors

RATE = 16000


# --- WER -------------------------------------------------------------------------------------------------------
def test_wer_uses_whispers_english_normaliser() -> None:
    assert wer("My favourite colour is grey.", "my favorite color is gray") == 0.0  # OpenAI's spelling map
    assert wer("Twenty-one cats, Mr. Smith!", "21 cats mister smith") == 0.0  # numbers, titles, punctuation
    assert normalize_words("Hmm, it's late.") == ["it", "is", "late"]  # fillers out, contractions expanded
    assert word_errors("the cat sat on the mat", "the cat sat on a mat") == (1, 6)
    assert wer(["a b c", "d e"], ["a x c", "d e f"]) == pytest.approx(2 / 5)  # corpus rate, not a mean of rates
    assert wer(["the cat sat"], ["the cat sat on it"]) == pytest.approx(2 / 3)  # insertions count
    with pytest.raises(ValueError, match="no words"):
        wer(["Hmm."], ["yes"])


# --- inputs ----------------------------------------------------------------------------------------------------
def _wav(path: Path, seconds: float = 0.3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(seconds * RATE), dtype=np.float32), RATE)
    return path


def test_audio_items_from_files_folders_and_lists(tmp_path: Path) -> None:
    a = _wav(tmp_path / "clips" / "a.wav")
    _wav(tmp_path / "clips" / "sub" / "b.flac")
    (tmp_path / "clips" / "notes.txt").write_text("not audio\n")
    rows = [{"audio": "clips/a.wav", "text": "open the door", "said": "open the door please"},
            {"audio": "clips/sub/b.flac"}]
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    single = audio_items([a])
    assert single == [{"key": str(a), "audio": str(a.resolve()), "reference": None}]
    folder = audio_items([tmp_path / "clips"])
    assert sorted(Path(r["audio"]).name for r in folder) == ["a.wav", "b.flac"]  # the .txt is not audio
    listed = audio_items([tmp_path / "list.jsonl"])
    assert [r["reference"] for r in listed] == ["open the door", None]
    assert Path(listed[0]["audio"]) == a.resolve()
    assert [r["reference"] for r in audio_items([tmp_path / "list.jsonl"], reference="said")] == [
        "open the door please", None]
    assert [r["reference"] for r in audio_items([tmp_path / "list.jsonl"], reference=None)] == [None, None]
    both = audio_items([a, tmp_path / "list.jsonl"])
    assert len(both) == 3 and both[1]["key"].startswith(str(tmp_path / "list.jsonl"))


def test_bad_inputs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_captured(capsys, "transcribe", tmp_path / "missing.wav")
    assert code == 2 and "missing.wav: no such audio file" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x\n")
    code, _, err = run_captured(capsys, "transcribe", tmp_path / "empty")
    assert code == 2 and "found no audio input" in err and err.count("\n") == 1
    clip = _wav(tmp_path / "a.wav")
    code, _, err = run_captured(capsys, "transcribe", clip, "--whisper", tmp_path / "empty")
    assert code == 2 and "not a Whisper checkpoint folder" in err


# --- the real Whisper tiny.en ------------------------------------------------------------------------------------
SENTENCES = ["Please turn on the kitchen light.", "What time does the train leave?"]
FIRST, LAST = "Open the window.", "Call my sister after lunch."


@pytest.fixture(scope="module")
def whisper_dir() -> Path:
    from anyalign.assets import asset_path

    folder = asset_path("whisper-tiny.en")
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} missing (python -m anyalign.assets whisper-tiny.en converts it)")
    return folder


def _speak(text: str, voice: str = "en-us") -> np.ndarray:
    from anyalign.encoders.audio_io import resample

    try:
        from anyalign.demos.speech_corpus import EspeakEngine

        eng = EspeakEngine.get()
    except (ImportError, OSError) as e:
        pytest.skip(f"no espeak-ng speech synthesiser: {e}")
    return resample(eng.synthesize(text, voice, 160, 50).astype(np.float32) / 32768.0, eng.sample_rate, RATE)


def test_transcribe_real_whisper_on_espeak_speech(whisper_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Two sentences and a 32 s clip (a sentence, silence, a second sentence from 30.2 s: past the first window),
    listed in a jsonl with their texts: transcribed in one batch, scored, the long clip's tail included."""
    rows = []
    for i, (text, voice) in enumerate(zip(SENTENCES, ["en-us", "en-us+f1"])):
        sf.write(tmp_path / f"{i}.wav", _speak(text, voice), RATE)
        rows.append({"audio": f"{i}.wav", "text": text})
    first, last = _speak(FIRST), _speak(LAST)
    wave = np.concatenate([first, np.zeros(30 * RATE + 3200 - len(first), dtype=np.float32), last])
    assert len(wave) > 30 * RATE
    sf.write(tmp_path / "long.wav", wave, RATE)
    rows.append({"audio": "long.wav", "text": f"{FIRST} {LAST}"})
    (tmp_path / "speech.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_captured(capsys, "transcribe", tmp_path / "speech.jsonl", "--json", "--batch-size", 4,
                                  "--max-new-tokens", 40, "-o", tmp_path / "said.jsonl")
    assert code == 0, err
    report = json.loads(out)
    assert report["n"] == report["n_scored"] == 3 and report["normaliser"] == "whisper-english"
    hyps = [r["transcript"] for r in report["rows"]]
    assert report["wer"] == pytest.approx(wer([r["text"] for r in rows], hyps))
    assert report["wer"] < 0.2, hyps  # measured 0.05: "that" for "the", 1 of 20 words
    assert {"window", "sister", "lunch"} <= set(normalize_words(hyps[2])), hyps[2]  # both windows, tail included
    written = [json.loads(line) for line in (tmp_path / "said.jsonl").read_text().splitlines()]
    assert [w["text"] for w in written] == hyps and [w["reference"] for w in written] == [r["text"] for r in rows]
