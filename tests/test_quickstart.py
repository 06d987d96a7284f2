"""`anyalign quickstart --fast` end to end on the real assets: report files, numbers, and the page in Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from anyalign.cli.main import main


def test_quickstart_fast_writes_a_sane_report(tmp_path: Path, assets: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    main(["quickstart", "--fast", "--output", str(out), "--assets", str(assets)])
    printed = capsys.readouterr().out
    assert f"report: {(out / 'index.html').resolve()}" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["chance"] == 0.25 and metrics["zeroshot_accuracy"] > 0.5  # 60 steps already beat chance
    assert 0.0 <= metrics["linear_probe_accuracy"] <= 1.0
    assert metrics["caption_loss_after"] < metrics["caption_loss_before"]
    n_sounds = len(list((assets / "audio" / "freedesktop").glob("*.oga"))) + 10  # fast mode: + the ten animals
    assert metrics["retrieval"]["corpus_size"] == 2 + 8 + 40 + 8 + n_sounds  # photos, frames, IMU, texts, sounds
    held = metrics["sounds"]["heldout"]  # sounds: chance levels are the gallery sizes, the split by name hash
    assert held["text->sound"]["chance_R@1"] == pytest.approx(1 / held["sounds"]) and 0 < held["sounds"] < n_sounds
    assert metrics["sounds"]["seen"]["sounds"] + held["sounds"] == n_sounds
    speech = metrics["speech"]  # speech: every number on a voice absent from training
    assert speech["heldout_voice"] not in speech["train_voices"] and speech["zeroshot_chance"] == 0.1
    assert 0 <= speech["zeroshot_commands"] <= 1 and speech["retrieval_chance_R@1"] == pytest.approx(1 / 9)
    assert speech["wer_whisper"] < 1.0 and speech["wer_llm"] >= 0  # Whisper's own decoder reads espeak speech
    page = (out / "index.html").read_text()
    for needle in ("zero-shot accuracy", "Cross-modal retrieval", "imu -&gt; text", "Assistant:",
                   "text -&gt; audio: a dog barking", "Sounds: the pretrained aisfx CNN", "Speech: Whisper tiny.en",
                   "spoken: What do bees make?", "Transcripts of the held-out voice"):
        assert needle in page, needle
    media = sorted(p.name for p in (out / "media").iterdir())
    assert any(n.endswith("curves.png") for n in media) and any(n.endswith("confusion.png") for n in media)
    assert any(n.endswith(".jpg") for n in media) and any(n.endswith(".oga") for n in media)
    assert any(n.endswith(".wav") for n in media)  # speech players
    assert not list(tmp_path.glob(".report*"))  # no half-written report folder left behind
    _index_answers_offline(tmp_path / "report-work" / "index", tmp_path / "report-work" / "corpus", capsys)

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed: page rendering not checked")
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1200,2400", f"--screenshot={shot}",
                    (out / "index.html").as_uri()], check=True, capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(shot).convert("L")
    dark = sum(1 for v in img.getdata() if v < 128)
    assert dark > 0.01 * img.width * img.height  # text, plots and thumbnails rendered, not a blank page


def test_quickstart_reports_missing_assets_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    from anyalign import assets as assets_mod

    def refuse(asset: object, dest: Path) -> None:
        raise assets_mod.AssetError("no registry here")

    monkeypatch.setattr(assets_mod, "_from_wheel", refuse)
    monkeypatch.setattr(assets_mod, "_from_deb", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--fast", "--output", str(tmp_path / "r"), "--assets", str(tmp_path / "empty")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: asset 'minilm'") and "Traceback" not in err


def _index_answers_offline(index: Path, corpus: Path, capsys: pytest.CaptureFixture) -> None:
    """The quickstart's own index answers text, image and IMU queries through `anyalign search` and `serve` with
    nothing but its path: every query embedder comes from what the index and its adapters recorded."""
    from fastapi.testclient import TestClient

    from anyalign.retrieval import Retriever
    from anyalign.retrieval.server import create_app

    image = sorted((corpus / "image").glob("*.jpg"))[0]
    window = sorted((corpus / "imu").glob("running-*.npy"))[0]
    for args, want in ((["--text", "a person running", "--modality", "imu"], "imu"),
                       (["--file", str(image), "--modality", "image"], "image"),
                       (["--file", str(window), "--modality", "text"], "text")):
        main(["search", str(index), *args, "-k", "3", "--json"])
        hits = json.loads(capsys.readouterr().out)
        assert len(hits) == 3 and all(h["modality"] == want for h in hits), (args, hits)
    running = json.loads(_cli(capsys, "search", str(index), "--text", "a person running", "--modality", "imu",
                              "-k", "5", "--json"))
    assert sum("running" in h["source"] for h in running) >= 3, [h["source"] for h in running]
    client = TestClient(create_app(Retriever(index)), base_url="http://127.0.0.1")
    res = client.post("/api/search", json={"text": "a flower", "k": 3})
    assert res.status_code == 200 and len(res.json()["results"]) == 3, res.text
    with window.open("rb") as f:
        res = client.post("/api/search/file", files={"file": (window.name, f, "application/octet-stream")},
                          data={"k": "3"})
    assert res.status_code == 200, res.text


def _cli(capsys: pytest.CaptureFixture, *args: str) -> str:
    main(list(args))
    return capsys.readouterr().out
