"""HTTP API and web page over a real index of six PNGs embedded by a tiny image adapter (timm test_efficientnet +
linear head) with a tiny BERT as the text embedder. The page is rendered by headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _retrieval_helpers import COLOURS, image_corpus, tiny_bert, tiny_image_adapter
from _served_space import running
from fastapi.testclient import TestClient

from anyalign.retrieval import Retriever, as_embedder, build_index, embed_to_folder
from anyalign.retrieval.server import create_app

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("served")
    corpus = image_corpus(root / "media")
    adapter = tiny_image_adapter(root / "img")
    bert = tiny_bert(root / "bert")
    embed_to_folder([corpus], root / "emb", as_embedder({"adapter": str(adapter)}))
    build_index(root / "emb", root / "idx", embedders={"text": {"encoder": "text", "pretrained": str(bert)}})
    return root, Retriever(root / "idx")


@pytest.fixture(scope="module")
def client(served) -> TestClient:
    return TestClient(create_app(served[1], max_upload_mb=0.5, max_k=50), base_url="http://127.0.0.1")


def test_page_and_info(client: TestClient, served) -> None:
    assert all(p.meta.in_memory for p in served[1].parts)  # rows loaded when the app opened the index, not later
    page = client.get("/")
    assert page.status_code == 200 and 'id="results"' in page.text and "{{TITLE}}" not in page.text
    info = client.get("/api/info").json()
    assert info["size"] == 6 and info["dim"] == 32 and info["query_modalities"] == ["image", "text"]
    assert ".png" in info["file_extensions"]["image"] and "index" not in info  # no server paths leaked


def test_text_and_vector_search(client: TestClient, served) -> None:
    res = client.post("/api/search", json={"text": "a red square", "k": 4})
    assert res.status_code == 200
    hits = res.json()["results"]
    assert len(hits) == 4 and all(h["modality"] == "image" for h in hits)
    assert all(h["media_url"] == f"/api/media/{h['id']}" for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    vec = served[1].parts[0].index.reconstruct(3)  # the stored vector of item 3 (IDMap2 over Flat)
    top = client.post("/api/search", json={"vector": vec.tolist(), "k": 1}).json()["results"][0]
    assert top["id"] == 3 and top["score"] == pytest.approx(1.0, abs=1e-5) and top["name"] == "yellow.png"


def test_file_upload_search(client: TestClient, served) -> None:
    root = served[0]
    with (root / "media" / "blue.png").open("rb") as f:
        res = client.post("/api/search/file", files={"file": ("query.png", f, "image/png")}, data={"k": "3"})
    assert res.status_code == 200, res.text
    hits = res.json()["results"]
    assert len(hits) == 3 and hits[0]["caption"] == "a blue square" and hits[0]["score"] == pytest.approx(1, abs=1e-4)
    bad = client.post("/api/search/file", files={"file": ("q.xyz", b"123", "application/octet-stream")})
    assert bad.status_code == 400 and "no embedder" in bad.json()["error"]
    broken = client.post("/api/search/file", files={"file": ("q.png", b"not a png", "image/png")})
    assert broken.status_code == 400


def test_bad_requests(client: TestClient) -> None:
    r = client.post("/api/search", json={"vector": [0.1] * 8})
    assert r.status_code == 400 and "dimension mismatch" in r.json()["error"]
    assert client.post("/api/search", json={"text": "x", "vector": [0.0] * 32}).status_code == 400
    assert client.post("/api/search", json={}).status_code == 400
    assert client.post("/api/search", json={"text": "x", "k": 51}).status_code == 400  # over max_k
    assert client.post("/api/search", json={"text": "x", "k": 0}).status_code == 422


def test_request_size_limit(client: TestClient) -> None:
    big = b"\x00" * (600 * 1024)  # limit is 0.5 MB
    r = client.post("/api/search/file", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "too large" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(8):
            yield b"\x00" * (100 * 1024)

    r = client.post("/api/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_media_served_only_by_id(client: TestClient, served) -> None:
    root = served[0]
    r = client.get("/api/media/0")
    assert r.status_code == 200 and r.content == (root / "media" / "red.png").read_bytes()
    assert r.headers["content-type"] == "image/png"
    assert client.get("/api/media/999").status_code == 404
    for path in ("/api/media/..%2F..%2F..%2Fetc%2Fpasswd", "/api/media/0/../../../../etc/passwd",
                 "/api/media/%2Fetc%2Fpasswd"):
        r = client.get(path)
        assert r.status_code in (404, 422) and b"root:" not in r.content
    assert client.get("/api/items/2").json()["caption"] == "a blue square"


def _chromium(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", "--window-size=1000,760",
             "--virtual-time-budget=15000", "--hide-scrollbars"]
    return subprocess.run([str(CHROMIUM), *flags, *args, url], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium not installed (apt-get install chromium)")
def test_page_renders_results_in_headless_chromium(served, tmp_path) -> None:
    from PIL import Image

    with running(create_app(served[1])) as port:
        url = f"http://127.0.0.1:{port}/?q=a+red+square&k=6"
        dom = _chromium(url, tmp_path, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert dom.stdout.count('class="result"') == 6, dom.stdout[-3000:]
        assert dom.stdout.count('src="/api/media/') == 6 and "6 results" in dom.stdout
        shot = tmp_path / "page.png"
        out = _chromium(url, tmp_path, f"--screenshot={shot}")
        assert shot.is_file(), out.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)  # [H, W, 3]
    assert (np.abs(img - 255).sum(-1) > 30).mean() > 0.05  # not a blank page
    for name in ("red", "green", "blue", "yellow"):  # every thumbnail colour is on screen
        near = (np.abs(img - np.array(COLOURS[name])).sum(-1) < 40).sum()
        assert near > 500, f"no {name} thumbnail pixels in the screenshot"
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
