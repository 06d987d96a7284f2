"""`anyalign quickstart --fast` end to end on the real assets: report files, numbers, and the page in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from anyalign.cli.main import main

#: every generalisation number the quickstart's headline states beats its chance level by this much (seed 0, --fast)
MARGIN = 0.1


def test_quickstart_fast_writes_a_sane_report(tmp_path: Path, assets: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    main(["quickstart", "--fast", "--output", str(out), "--assets", str(assets)])
    printed = capsys.readouterr().out
    assert f"report: {(out / 'index.html').resolve()}" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    imu = metrics["imu"]  # closed set: the trained activities and wordings; new wordings: never trained
    assert imu["chance"] == 0.25 and imu["n"] == 40 and imu["closed_set_top1"] > 0.5  # 60 steps already beat chance
    assert set(imu["new_wordings"]) == {"other_words", "short"} and 0.0 <= imu["linear_probe_accuracy"] <= 1.0
    assert imu["new_wordings_top1"] >= imu["chance"] + MARGIN  # the headline's IMU generalisation number
    assert metrics["caption_loss_after"] < metrics["caption_loss_before"]
    n_sounds = len(list((assets / "audio" / "freedesktop").glob("*.oga"))) + 10  # fast mode: + the ten animals
    assert metrics["retrieval"]["corpus_size"] == 2 + 8 + 40 + 8 + n_sounds  # photos, frames, IMU, texts, sounds
    held = metrics["sounds"]["heldout"]  # sounds: chance levels are the gallery sizes, the split by name hash
    assert held["text->sound"]["chance_R@1"] == pytest.approx(1 / held["sounds"]) and 0 < held["sounds"] < n_sounds
    assert metrics["sounds"]["seen"]["sounds"] + held["sounds"] == n_sounds
    speech = metrics["speech"]  # speech: new sentences in a voice family absent from training
    family = speech["heldout_voice"].split("+")[0]
    assert all(v.split("+")[0] != family for v in speech["train_voices"]) and speech["zeroshot_chance"] == 0.1
    assert 0 <= speech["zeroshot_digits"] <= 1 and speech["retrieval_chance_R@1"] == pytest.approx(
        1 / speech["n_texts"]) and speech["n_texts"] >= 10
    assert 0 <= speech["whisper_then_minilm_R@1"] <= 1
    assert speech["wer_whisper"] < 1.0 and speech["wer_llm"] >= 0  # Whisper's own decoder reads espeak speech
    _image_numbers_are_sane(metrics["images"], tmp_path / "report-work")
    page = (out / "index.html").read_text()
    for needle in ("closed set", "new wordings", "unseen classes: H (calibrated)",
                   "Cross-modal retrieval", "imu -&gt; text", "Assistant:",
                   "text -&gt; audio: a dog barking", "Sounds: the pretrained aisfx CNN", "Speech: Whisper tiny.en",
                   "spoken: What do bees make?", "Transcripts of held-out sentences",
                   "Images: EfficientNet-Lite0 bound to the MiniLM space", "text -&gt; image: &quot;a sandal&quot;",
                   "never seen", "image -&gt; text: held-out photos", "harmonic mean H"):
        assert needle in page, needle
    media = sorted(p.name for p in (out / "media").iterdir())
    assert any(n.endswith("curves.png") for n in media) and any(n.endswith("confusion.png") for n in media)
    assert any(n.endswith(".jpg") for n in media) and any(n.endswith(".oga") for n in media)
    assert any(n.endswith(".wav") for n in media)  # speech players
    thumbs = [n for n in media if re.fullmatch(r"\d{3}-\d{5}\.png", n)]  # Fashion-MNIST photos, upscaled
    marks = re.findall(r"<b>#\d+ (correct|wrong)  score", page)  # every text -> image hit is marked
    from anyalign.demos.images import HITS, QUERIES, SHOWN

    assert len(marks) == HITS * len(QUERIES) and len(thumbs) == len(marks) + len(SHOWN)  # + image -> text photos
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

    def refuse(*args: object) -> None:
        raise assets_mod.AssetError("no registry here")

    monkeypatch.setattr(assets_mod, "_from_wheel", refuse)
    monkeypatch.setattr(assets_mod, "download_deb", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--fast", "--output", str(tmp_path / "r"), "--assets", str(tmp_path / "empty")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: asset 'minilm'") and "Traceback" not in err


def _image_numbers_are_sane(im: dict, work: Path) -> None:
    """The image step: chance levels from the split, GZSL numbers consistent, and the unseen classes absent from
    everything the trainer saw (its feature folder, its recipe, the captions it recorded)."""
    from anyalign.demos.images import LABEL_TEXT, SYNONYMS, TEMPLATES, UNSEEN
    from anyalign.features import load_features

    seen = [c for c in im["classes"] if c not in UNSEEN]
    assert im["unseen"] == list(UNSEEN) and im["seen"] == seen and im["chance"] == 0.1 and im["n_test"] == 60
    assert im["chance_closed_set"] == 1 / 8 and im["closed_set_top1"] > 1 / 8
    u = im["unseen_protocol"]
    s_acc, u_acc = u["seen_accuracy"], u["unseen_accuracy"]
    assert u["chance_all"] == 0.1 and u["chance_unseen_only"] == 0.5 and 0 <= u_acc <= 1
    assert u["harmonic_mean"] == pytest.approx(2 * s_acc * u_acc / (s_acc + u_acc) if s_acc + u_acc else 0.0)
    assert set(im["new_wordings"]["sets"]) == {"everyday", "descriptive"} and im["new_wordings"]["chance"] == 0.1
    # the headline: unseen classes at the gamma tuned on the training photos set aside (never the test photos), and
    # new wordings, each above its chance level by MARGIN; uncalibrated, the unseen classes are all but never chosen
    gamma = im["calibration"]
    assert gamma > 0 and u["calibration"] == gamma and "data.validation" in u["calibration_source"]["tuned_on"]
    assert u["harmonic_mean"] >= u["chance_all"] + MARGIN and u["unseen_accuracy"] > u["chance_all"]
    assert u["unseen_only_top1"] >= u["chance_unseen_only"] + MARGIN
    assert im["new_wordings"]["mean_top1"] >= im["new_wordings"]["chance"] + MARGIN
    assert im["unseen_protocol_uncalibrated"]["harmonic_mean"] < u["harmonic_mean"]
    t2i = im["text_to_image"]
    assert t2i["k"] == 6 and t2i["chance_P@k"] == pytest.approx(0.1) and len(t2i["per_class"]) == 10
    assert t2i["mean_P@k_seen"] > 0.1  # class prompts of trained classes find their photos above chance
    # never leaked: the training features, the recipe and the captions the run recorded hold seen classes only
    feats = sorted((work / "images" / "features").iterdir())
    train_feats = [f for f in feats if f.name.startswith("train-")]
    assert len(train_feats) == 1 and {r.meta["label"] for r in load_features(train_feats[0])} == set(seen)
    recipe = __import__("yaml").safe_load((work / "image_text" / "recipe.yaml").read_text())
    (src,) = recipe["data"]["train"]
    assert sorted(src["classes"]) == sorted(seen) and not recipe["data"].get("eval")
    assert not set(UNSEEN) & (set(src["label_text"]) | set(src["captions"]["synonyms"]))
    (used,) = json.loads((work / "image_text" / "captions.json").read_text())["train"]
    assert used["classes"] == sorted(seen) and set(used["per_class"]) == set(seen)
    unseen_caps = {t.format(label=p) for c in UNSEEN for p in [LABEL_TEXT[c], *SYNONYMS[c]] for t in TEMPLATES}
    assert not unseen_caps & {c for caps in used["per_class"].values() for c in caps}


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
