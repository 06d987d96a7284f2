"""`anyalign data speech`: real espeak-ng speech (pip espeakng-loader) in the project's jsonl format, split by text and
voice family; Debian fortunes as a sentence source; augmentation; and the word error rate used to score transcripts."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from anyalign.demos.speech_corpus import (
    FORTUNES_DIR,
    WORD_LIST,
    ZEROSHOT_WORDS,
    Augment,
    Utterance,
    fortune_sentences,
    read_utterances,
    synthesize_corpus,
    voice_family,
)
from anyalign.metrics import normalize_words, wer, word_errors
from tests._cli import run_cli as _cli

pytest.importorskip("espeakng_loader", reason="pip espeakng-loader (libespeak-ng) is not installed")

ROOT = Path(__file__).resolve().parents[1]
VOICES, HELDOUT = ["en-us+m1"], ["en+f2"]


@pytest.fixture(scope="module")
def lists(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("lists")
    (root / "s.txt").write_text("# a comment\nThe cat sleeps on the mat.\n\nTurn left at the bridge.\n")
    (root / "c.jsonl").write_text(json.dumps({"text": "stop", "label": "stop", "takes": 2}) + "\n"
                                  + json.dumps({"text": "What is two plus two?", "answer": "Four."}) + "\n")
    return [root / "s.txt", root / "c.jsonl"]


@pytest.fixture(scope="module")
def corpus(lists: list[Path], tmp_path_factory: pytest.TempPathFactory):
    return synthesize_corpus(read_utterances(lists), tmp_path_factory.mktemp("corpus"), voices=VOICES,
                             heldout_voices=HELDOUT, progress=False)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_fields_and_voice_split(corpus) -> None:
    rows = _rows(corpus.jsonl)
    assert len(rows) == 2 * (1 + 1 + 2 + 1)  # 2 voices x (2 sentences + 2 takes of "stop" + 1 question)
    for r in rows:
        assert {"audio", "text", "label", "key", "group", "fold", "text_id"} <= set(r)
        assert r["group"] == r["voice"] and r["fold"] == ("train" if r["voice"] in VOICES else "test")
        wave, rate = sf.read(str(corpus.path / r["audio"]))
        assert rate == 22050 and wave.ndim == 1 and 0.2 < len(wave) / rate < 10 and np.abs(wave).max() > 0.05
    assert len({r["key"] for r in rows}) == len(rows)
    assert {r["label"] for r in rows} == {None, "stop"}
    train = _rows(corpus.path / "train.jsonl")
    test = _rows(corpus.path / "test.jsonl")
    assert {r["group"] for r in train} == set(VOICES) and {r["group"] for r in test} == set(HELDOUT)
    assert len(train) + len(test) == len(rows)
    split = json.loads((corpus.path / "split.json").read_text())
    assert split["train_voices"] == VOICES and split["test_voices"] == HELDOUT
    q = [r for r in rows if r["text"].startswith("What")]
    assert q[0]["conversations"][0]["value"].startswith("<audio>\n") and q[0]["conversations"][1]["value"] == "Four."
    with open(corpus.path / "labels.csv", newline="") as f:
        lab = list(csv.DictReader(f))
    assert len(lab) == 4 and {r["fold"] for r in lab} == {"train", "test"}
    texts = _rows(corpus.path / "texts-test.jsonl")
    assert sorted(t["text"] for t in texts) == sorted({r["text"] for r in test})


def test_takes_differ_and_rerun_is_deterministic_and_resumes(corpus, lists: list[Path], tmp_path: Path) -> None:
    rows = _rows(corpus.jsonl)
    takes = [r for r in rows if r["label"] == "stop" and r["voice"] == VOICES[0]]
    assert (takes[0]["rate"], takes[0]["pitch"]) != (takes[1]["rate"], takes[1]["pitch"])
    a, b = (sf.read(str(corpus.path / t["audio"]))[0] for t in takes)
    assert len(a) != len(b) or not np.array_equal(a, b)
    again = synthesize_corpus(read_utterances(lists), tmp_path, voices=VOICES, heldout_voices=HELDOUT, progress=False)
    assert _rows(again.jsonl) == rows and again.n_new == len(rows)
    first = rows[0]["audio"]  # same seed: same prosody, so the same speech (voices with breath noise vary a little)
    n1, n2 = sf.info(str(tmp_path / first)).frames, sf.info(str(corpus.path / first)).frames
    assert abs(n1 - n2) < 0.05 * n2
    (tmp_path / first).unlink()
    resumed = synthesize_corpus(read_utterances(lists), tmp_path, voices=VOICES, heldout_voices=HELDOUT,
                                progress=False)
    assert (resumed.n_new, resumed.n_kept) == (1, len(rows) - 1)
    other = synthesize_corpus([Utterance("The cat sleeps on the mat.")], tmp_path / "s1", voices=VOICES,
                              heldout_voices=[], seed=1, progress=False)
    assert _rows(other.jsonl)[0]["rate"] != rows[0]["rate"] or _rows(other.jsonl)[0]["pitch"] != rows[0]["pitch"]


def test_cli_and_one_line_errors(lists: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    assert _cli(["data", "speech", str(lists[0]), "-o", str(out), "--voices", "en-us", "--heldout-voices",
                 "en-gb-x-rp", "--quiet"]) == 0
    assert "4 recordings of 2 texts" in capsys.readouterr().out
    cases = [([str(tmp_path / "none.txt")], "sentence list not found"),
             ([str(lists[0]), "--voices", "en+nosuchvariant"], "no variant 'nosuchvariant'"),
             ([str(lists[0]), "--voices", "xx-nosuch"], "no voice 'xx-nosuch'"),
             ([str(lists[0]), "--voices", "en", "--heldout-voices", "en"], "overlap"),
             ([str(lists[0]), "--engine", "say"], "expected one of espeak, flite"),
             ([str(lists[0]), "--voices", "en-us+m1", "--heldout-voices", "en-us+f2"], "share the voice family "
                                                                                         "espeak:en-us"),
             ([], "no sentences")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hello", "colour": "red"}\n')
    cases.append(([str(bad)], "unknown field(s) colour"))
    dup = tmp_path / "dup.txt"
    dup.write_text("Hello there.\nHello   there.\n")
    cases.append(([str(dup)], "repeats"))
    for args, msg in cases:
        assert _cli(["data", "speech", *args, "-o", str(tmp_path / "x"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err


SENTENCES = ["The cat sleeps on the mat.", "Turn left at the bridge.", "We walked home in the rain.",
             "Please close the window.", "The soup is too salty.", "He forgot his umbrella again.",
             "Birds sing early in spring.", "Our train was very late.", "She paints old houses.",
             "Keep the change.", "The river is cold today.", "Nobody answered the phone."]


def test_split_holds_out_sentences_and_voice_families(tmp_path: Path) -> None:
    train_v, val_v, test_v = ["en-us+m1", "en-us+f1", "en+f2"], ["en-gb-scotland+m3"], ["en-029+m5", "en-us-nyc+f4"]
    c = synthesize_corpus([Utterance(t) for t in SENTENCES], tmp_path, voices=train_v, val_voices=val_v,
                          heldout_voices=test_v, heldout_texts=0.35, val_texts=0.15, voices_per_text=1,
                          progress=False)
    folds = {f: _rows(tmp_path / f"{f}.jsonl") for f in ("train", "val", "test")}
    assert all(folds.values()), {f: len(r) for f, r in folds.items()}
    texts = {f: {r["text"] for r in rs} for f, rs in folds.items()}
    fams = {f: {r["family"] for r in rs} for f, rs in folds.items()}
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        assert not texts[a] & texts[b], (a, b)  # no sentence in two folds
        assert not fams[a] & fams[b], (a, b)  # no voice family in two folds
    assert fams["test"] <= {"espeak:en-029", "espeak:en-us-nyc"} and "espeak:en-us" in fams["train"]
    assert sum(len(t) for t in texts.values()) == len(SENTENCES) == len(c.rows)  # one voice per text
    assert {r["voice"] for r in folds["test"]} <= set(test_v)
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["families"]["test"] == sorted(fams["test"]) and split["texts"]["test"] == len(texts["test"])
    assert voice_family("flite:slt") == "flite:slt" and voice_family("en-us+m3") == "espeak:en-us"
    assert voice_family("kal", "flite") == "flite:kal"


def test_augment_resamples_and_band_limits(tmp_path: Path) -> None:
    aug = Augment(noise=1.0, telephone=1.0, snr_db=(20.0, 20.0))
    c = synthesize_corpus([Utterance(SENTENCES[0])], tmp_path, voices=["en-us+m1"], heldout_voices=[],
                          augment=aug, progress=False)
    row = c.rows[0]
    assert row["augment"] == "noise 20 dB, telephone" and row["audio"].endswith("-n20-tel.wav")
    wave, rate = sf.read(str(tmp_path / row["audio"]))
    assert rate == 16000 and c.sample_rate == 16000
    spec = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / rate)
    band = spec[(freqs > 300) & (freqs < 3400)].sum()
    assert spec[freqs > 4200].sum() < 0.1 * band  # only the added noise lives above the telephone band
    with pytest.raises(ValueError, match="probabilities"):
        Augment(noise=1.5)


def test_fortune_sentences() -> None:
    if not FORTUNES_DIR.is_dir() or not WORD_LIST.is_file():
        pytest.skip("Debian `fortunes` and `wamerican` are not installed (apt-get install fortunes wamerican)")
    utts = fortune_sentences(2000, seed=0)
    assert len(utts) == 2000 and len({u.text for u in utts}) == 2000
    banned = set(ZEROSHOT_WORDS)
    for u in utts:
        words = [w.strip(",;.!?'-").casefold() for w in u.text.split()]
        assert 3 <= len(words) <= 20 and not banned & set(words) and u.text[-1] in ".!?", u.text
    assert [u.text for u in fortune_sentences(50, seed=0)] == [u.text for u in fortune_sentences(50, seed=0)]
    assert [u.text for u in fortune_sentences(50, seed=1)] != [u.text for u in fortune_sentences(50, seed=0)]


def test_mixed_engines_in_one_corpus(tmp_path: Path) -> None:
    if shutil.which("flite") is None:
        pytest.skip("Debian `flite` is not installed (apt-get install flite)")
    c = synthesize_corpus([Utterance("Good morning.")], tmp_path, voices=["en-us+m1", "flite:slt"],
                          heldout_voices=["flite:awb"], augment=Augment(noise=0, telephone=0), progress=False)
    assert {(r["engine"], r["family"]) for r in c.rows} == {("espeak", "espeak:en-us"), ("flite", "flite:slt"),
                                                            ("flite", "flite:awb")}
    assert {sf.info(str(tmp_path / r["audio"])).samplerate for r in c.rows} == {16000}


def test_flite_engine(tmp_path: Path) -> None:
    if shutil.which("flite") is None:
        pytest.skip("Debian `flite` is not installed (apt-get install flite); the espeak engine needs only pip")
    c = synthesize_corpus([Utterance("Good morning.")], tmp_path, voices=["slt"], heldout_voices=["rms"],
                          engine="flite", progress=False)
    assert c.sample_rate > 0 and {r["fold"] for r in c.rows} == {"train", "test"}


def test_shipped_lists() -> None:
    data = ROOT / "configs" / "data" / "speech"
    sentences = read_utterances([data / "sentences.txt"])
    commands = read_utterances([data / "commands.jsonl"])
    questions = read_utterances([data / "questions.jsonl"])
    assert len(sentences) >= 150 and len({u.text_id for u in sentences}) == len(sentences)
    assert [u.label for u in commands] == "yes,no,stop,go,left,right,up,down,on,off".split(",")
    assert all(u.answer for u in questions) and len(questions) >= 30
    novel = read_utterances([data / "novel_sentences.txt"])
    assert not {u.text for u in novel} & {u.text for u in sentences + questions}


def test_wer() -> None:
    assert normalize_words("Don't stop, it's twenty-one past nine!") == ["do", "not", "stop", "it", "is", "21", "past",
                                                                         "9"]  # Whisper's English normaliser
    assert word_errors("the cat sat on the mat", "the cat sat on mat") == (1, 6)
    assert word_errors("a b", "x a b y") == (2, 2)
    assert wer("The cat.", "the cat") == 0.0
    assert wer(["a b c", "d e"], ["a x c", "d e f"]) == pytest.approx(2 / 5)
    assert wer(["a"], [""]) == 1.0
    with pytest.raises(ValueError, match="as many hypotheses"):
        wer(["a", "b"], ["a"])
