"""The search page over a mixed index (six captioned PNGs, eight labelled IMU windows): modality tabs, results
grouped by modality, IMU hits drawn as signal plots, labels and captions, "more like this" on every hit, example
queries on the empty page. The API behind it is checked with a test client; the page itself in headless Chromium
(screenshots in the test's tmp dir)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _served_space import ACTIVITIES, mixed_index, running
from fastapi.testclient import TestClient

from anyalign.retrieval import Retriever
from anyalign.retrieval.server import create_app

CHROMIUM = Path("/usr/bin/chromium")
PLOT_BLUE = np.array([31, 119, 180])  # the page's colour of the third channel


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory):
    built = mixed_index(tmp_path_factory.mktemp("page"))
    yield built
    shutil.rmtree(built["root"], ignore_errors=True)


@pytest.fixture(scope="module")
def client(space) -> TestClient:
    return TestClient(create_app(Retriever(space["index"])), base_url="http://127.0.0.1")


def test_info_counts_modalities_and_offers_examples(client: TestClient) -> None:
    info = client.get("/api/info").json()
    assert info["item_modalities"] == {"image": 6, "imu": 8}
    assert sorted(info["examples"]) == sorted(ACTIVITIES)  # distinct labels of the indexed items


def test_modality_filter_like_and_signal(client: TestClient, space) -> None:
    imu = client.post("/api/search", json={"text": "a person walking", "k": 5, "modality": "imu"}).json()["results"]
    assert len(imu) == 5 and {h["modality"] for h in imu} == {"imu"}
    assert all(np.shape(h["signal"]) == (6, 64) and h["label"] in ACTIVITIES for h in imu)
    img = client.post("/api/search", json={"text": "a person walking", "k": 5, "modality": "image"}).json()["results"]
    assert {h["modality"] for h in img} == {"image"} and all(h["signal"] is None for h in img)
    first = imu[0]["id"]
    like = client.post("/api/search", json={"like": first, "k": 3}).json()["results"]
    assert like[0]["id"] == first and like[0]["score"] == pytest.approx(1.0, abs=1e-5)
    like_img = client.post("/api/search", json={"like": first, "k": 3, "modality": "image"}).json()["results"]
    assert {h["modality"] for h in like_img} == {"image"}
    assert client.post("/api/search", json={"like": 999, "k": 3}).status_code == 404
    assert client.post("/api/search", json={"like": 1, "text": "x"}).status_code == 400


def _chromium(url: str, tmp: Path, shot: str) -> str:
    """The page's DOM after its scripts ran; its screenshot goes to `tmp / shot`."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={tmp / 'profile'}", "--window-size=1100,1000", "--virtual-time-budget=15000"]
    out = subprocess.run([str(CHROMIUM), *flags, "--dump-dom", f"--screenshot={tmp / shot}", url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _pixels(shot: Path, colour: np.ndarray, tol: int = 40) -> int:
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)  # [H, W, 3]
    return int((np.abs(img - colour).sum(-1) < tol).sum())


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium not installed (apt-get install chromium)")
def test_page_in_headless_chromium(space, tmp_path: Path) -> None:
    with running(create_app(Retriever(space["index"]))) as port:
        base = f"http://127.0.0.1:{port}/"
        empty = _chromium(base, tmp_path, "empty.png")
        assert empty.count('class="example"') == 4 and all(f">{a}</a>" in empty for a in ACTIVITIES)
        assert re.findall(r'class="tab[^"]*"[^>]*>([^<]+)<', empty) == ["all (14)", "image (6)", "imu (8)"]

        query = base + "?q=a+person+walking&k=4"
        grouped = _chromium(query, tmp_path, "all.png")
        assert re.findall(r'<section class="group" data-modality="(\w+)"', grouped) == ["image", "imu"]
        assert grouped.count('class="result"') == 8 and grouped.count('<svg class="signal"') == 4
        assert grouped.count('class="more"') == 8 and grouped.count('src="/api/media/') == 4
        assert grouped.count('class="label"') == 4 and "a person " in grouped and "8 results" in grouped

        imu_tab = _chromium(query + "&m=imu", tmp_path, "imu.png")
        ids = re.findall(r'class="result" data-id="(\d+)" data-modality="(\w+)"', imu_tab)
        assert len(ids) == 4 and {m for _, m in ids} == {"imu"}
        assert 'class="tab active" data-modality="imu"' in imu_tab

        more = re.search(r'class="more" href="([^"]+)"', imu_tab).group(1).replace("&amp;", "&")  # first hit's link
        assert more == f"?like={ids[0][0]}&m=imu&k=4"
        like = _chromium(base + more, tmp_path, "like.png")
        like_ids = re.findall(r'class="result" data-id="(\d+)"', like)
        assert like_ids[0] == ids[0][0] and f"more like #{ids[0][0]}: 4 results" in like
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    assert _pixels(tmp_path / "all.png", np.array([220, 30, 30])) > 500  # the red thumbnail
    assert _pixels(tmp_path / "all.png", PLOT_BLUE) > 100 and _pixels(tmp_path / "imu.png", PLOT_BLUE) > 300  # plots
    assert _pixels(tmp_path / "empty.png", PLOT_BLUE) == 0  # no results yet
