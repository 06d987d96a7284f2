"""The HTTP service's boundaries (issue 12) and its micro-batching (issue 14), on a real index: a tiny real BERT
embeds text queries; metadata rows point at real files, some of them hostile (outside the corpus, a symlink out,
an .html page, a folder)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from _retrieval_helpers import tiny_bert
from _served_space import running
from fastapi.testclient import TestClient
from PIL import Image

from anyalign.retrieval import Retriever, build_index
from anyalign.retrieval.embed import EmbeddingWriter
from anyalign.retrieval.index_update import add_to_index, delete_from_index
from anyalign.retrieval.server import check_serve_options, create_app, uvicorn_server

LOCAL = "http://127.0.0.1"
DIM = 32


def _png(path: Path, rgb: tuple[int, int, int]) -> Path:
    Image.new("RGB", (16, 16), rgb).save(path)
    return path


def _embeddings(folder: Path, rows: list[dict], seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    writer = EmbeddingWriter(folder, DIM)
    writer.add(np.random.default_rng(seed).standard_normal((len(rows), DIM)).astype(np.float32), rows)
    writer.close()
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("sec").resolve()
    media, outside = root / "media", root / "outside"
    media.mkdir()
    outside.mkdir()
    _png(outside / "secret.png", (1, 2, 3))
    (media / "link.png").symlink_to(outside / "secret.png")  # a corpus file swapped for a symlink out
    (media / "sub").symlink_to(outside, target_is_directory=True)  # a corpus folder swapped for a symlink out
    (media / "page.html").write_text("<script>alert(1)</script>")
    (media / "folder.png").mkdir()
    rows = [
        ("ok", str(_png(media / "red.png", (220, 30, 30))), "image"),
        ("passwd", "/etc/passwd", "image"),
        ("symlink", str(media / "link.png"), "image"),
        ("html", str(media / "page.html"), "image"),
        ("dirlink", str(media / "sub" / "secret.png"), "image"),
        ("folder", str(media / "folder.png"), "image"),
        ("relative", "red.png", "image"),
        ("text", str(media / "red.png"), "text"),
        ("sound", str(media / "bell.oga"), "audio"),
    ]
    (media / "bell.oga").write_bytes(b"OggS" + bytes(60))
    sentences = ["a red square", "a blue circle", "the dog", "a photo of the cat", "a green square", "black video",
                 "white sound", "a yellow circle", "the red dog", "a blue photo"]
    meta = [{"source": s, "modality": m, "caption": n} for n, s, m in rows]
    meta += [{"source": f"{root}/captions.txt:{i}", "modality": "text", "caption": t} for i, t in enumerate(sentences)]
    bert = tiny_bert(root / "bert")
    build_index(_embeddings(root / "emb", meta), root / "idx", factory="Flat",
                embedders={"text": {"encoder": "text", "pretrained": str(bert)}})
    return {"root": root, "media": media, "outside": outside, "ids": {n: i for i, (n, _, _) in enumerate(rows)},
            "sentences": sentences, "bert": bert}


@pytest.fixture(scope="module")
def client(corpus: dict) -> TestClient:
    return TestClient(create_app(Retriever(corpus["root"] / "idx")), base_url=LOCAL, raise_server_exceptions=False)


def _is_error(r: httpx.Response, status: int | tuple[int, ...]) -> None:
    assert r.status_code in ((status,) if isinstance(status, int) else status), (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and "\n" not in body["error"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize("name, status", [("passwd", 415), ("symlink", 404), ("html", 415), ("dirlink", 404),
                                          ("folder", 404), ("relative", 404), ("text", 404)])
def test_media_refused(client: TestClient, corpus: dict, name: str, status: int) -> None:
    r = client.get(f"/api/media/{corpus['ids'][name]}")
    _is_error(r, status)
    assert b"root:" not in r.content and b"<script>" not in r.content


def test_media_served_with_type_and_nosniff(client: TestClient, corpus: dict) -> None:
    r = client.get(f"/api/media/{corpus['ids']['ok']}")
    assert r.status_code == 200 and r.content == (corpus["media"] / "red.png").read_bytes()
    assert r.headers["content-type"] == "image/png" and r.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    snd = client.get(f"/api/media/{corpus['ids']['sound']}")
    assert snd.status_code == 200 and snd.headers["content-type"] == "audio/ogg"
    hit = client.get(f"/api/items/{corpus['ids']['ok']}").json()
    assert hit["media_url"] == f"/api/media/{corpus['ids']['ok']}"
    assert client.get(f"/api/items/{corpus['ids']['symlink']}").json()["media_url"] is None


def test_media_root_option(corpus: dict) -> None:
    idx = corpus["root"] / "idx"
    inside = TestClient(create_app(Retriever(idx), media_roots=[corpus["media"]]), base_url=LOCAL)
    assert inside.get(f"/api/media/{corpus['ids']['ok']}").status_code == 200
    elsewhere = TestClient(create_app(Retriever(idx), media_roots=[corpus["outside"]]), base_url=LOCAL)
    _is_error(elsewhere.get(f"/api/media/{corpus['ids']['ok']}"), 404)
    with pytest.raises(FileNotFoundError, match="media-root"):
        create_app(Retriever(idx), media_roots=[corpus["root"] / "nope"])


def test_page_csp_allows_only_its_own_script(client: TestClient) -> None:
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert r.status_code == 200 and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    script = re.search(r"<script>(.*?)</script>", r.text, flags=re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "unsafe-inline" not in csp


@pytest.mark.parametrize("host, status", [("evil.example", 400), ("127.0.0.1.evil.example", 400),
                                          ("127.0.0.1:8000", 200), ("localhost", 200), ("[::1]:80", 200),
                                          ("search.example", 200)])
def test_host_allow_list(corpus: dict, host: str, status: int) -> None:
    c = TestClient(create_app(Retriever(corpus["root"] / "idx"), allow_hosts=["search.example"]), base_url=LOCAL)
    r = c.get("/api/info", headers={"host": host})
    assert r.status_code == status
    if status != 200:
        _is_error(r, status)


def test_bearer_token(corpus: dict) -> None:
    c = TestClient(create_app(Retriever(corpus["root"] / "idx"), token="s3cret-token"), base_url=LOCAL)
    _is_error(c.get("/api/info"), 401)
    assert c.get("/api/info").headers["www-authenticate"].startswith("Bearer")
    _is_error(c.get("/api/info", headers={"authorization": "Bearer wrong"}), 401)
    _is_error(c.post("/api/search", json={"text": "a red square"}), 401)
    _is_error(c.get("/api/openapi.json"), 401)
    assert c.get("/api/info", headers={"authorization": "Bearer s3cret-token"}).json()["auth"] is True
    media = c.get(f"/api/media/{corpus['ids']['ok']}", headers={"cookie": "anyalign_token=s3cret-token"})
    assert media.status_code == 200  # the page's <img> requests carry the cookie
    assert c.get("/").status_code == 200  # the page itself holds no data


@pytest.mark.parametrize("host, port, mb, token, fragment", [
    ("0.0.0.0", 8000, 20, None, "needs --token"), ("192.168.1.5", 8000, 20, None, "needs --token"),
    ("example.org", 8000, 20, None, "needs --token"), ("127.0.0.1", 0, 20, None, "1..65535"),
    ("127.0.0.1", 65536, 20, None, "1..65535"), ("127.0.0.1", 8000, 0, None, "max-upload-mb"),
    ("127.0.0.1", 8000, -1, None, "max-upload-mb"), ("127.0.0.1", 8000, float("nan"), None, "max-upload-mb"),
    ("0.0.0.0", 8000, 20, "", "non-empty token"),
])
def test_serve_options_refused(host: str, port: int, mb: float, token: str | None, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        check_serve_options(host, port, mb, token)


def test_serve_options_accepted() -> None:
    check_serve_options("127.0.0.1", 1, 0.5, None)
    check_serve_options("::1", 65535, 20, None)
    check_serve_options("0.0.0.0", 8000, 20, "tok")


@pytest.mark.parametrize("argv, fragment", [(["--host", "0.0.0.0"], "needs --token"), (["--port", "70000"], "65535"),
                                            (["--max-upload-mb", "0"], "max-upload-mb")])
def test_serve_cli_one_line_errors(corpus: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                   argv: list[str], fragment: str) -> None:
    import uvicorn

    from anyalign.cli.main import main

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("the server started")

    monkeypatch.delenv("ANYALIGN_SERVE_TOKEN", raising=False)
    monkeypatch.setattr(uvicorn, "run", never)
    monkeypatch.setattr(uvicorn.Server, "run", never)
    with pytest.raises(SystemExit) as e:
        main(["serve", str(corpus["root"] / "idx"), *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and fragment in err and "\n" not in err


@pytest.mark.parametrize("item", ["9223372036854775808", "18446744073709551616", "99999999999999999999999", "-1",
                                  "9223372036854775807", "1e3", "0x1"])
def test_out_of_range_ids(client: TestClient, item: str) -> None:
    for route in ("items", "media"):
        _is_error(client.get(f"/api/{route}/{item}"), (404, 422))


def test_lone_surrogate_and_bad_bodies(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    _is_error(client.post("/api/search", content=b'{"text": "\\ud800"}', headers=headers), (400, 422))
    _is_error(client.post("/api/search", content=b'{"text": "a \\udfff b", "k": 2}', headers=headers), (400, 422))
    _is_error(client.post("/api/search", content=b'{"text": "\xff\xfe"}', headers=headers), (400, 422))
    _is_error(client.post("/api/search", content=b'{"text": ', headers=headers), (400, 422))
    _is_error(client.post("/api/search", content=b'{"vector": [NaN, 1]}', headers=headers), (400, 422))
    _is_error(client.post("/api/search", json={"text": "   "}), 400)
    _is_error(client.post("/api/search", json={"text": "a", "k": 10**30}), 422)
    _is_error(client.post("/api/search/file", files={"file": ("q.png", b"x")}, data={"k": "0"}), 422)
    _is_error(client.get("/api/nope"), 404)
    _is_error(client.put("/api/search"), 405)


def test_internal_errors_are_one_line_json(corpus: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    r = Retriever(corpus["root"] / "idx")
    c = TestClient(create_app(r), base_url=LOCAL, raise_server_exceptions=False)

    def boom(_ids: object) -> None:
        raise RuntimeError("secret internal detail\nline two")

    monkeypatch.setattr(r, "metadata", boom)
    res = c.get("/api/items/0")
    _is_error(res, 500)
    assert "secret" not in res.text


def test_reload_after_delete_and_add(corpus: dict, tmp_path: Path) -> None:
    import shutil

    from filelock import FileLock

    idx = tmp_path / "idx"
    shutil.copytree(corpus["root"] / "idx", idx)
    c = TestClient(create_app(Retriever(idx)), base_url=LOCAL)
    ok = corpus["ids"]["ok"]
    assert c.get(f"/api/media/{ok}").status_code == 200
    size = c.get("/api/info").json()["size"]
    delete_from_index(idx, [ok])
    _is_error(c.get(f"/api/media/{ok}"), 404)  # the very next request sees the deletion
    _is_error(c.get(f"/api/items/{ok}"), 404)
    assert c.get("/api/info").json()["size"] == size - 1
    new = _embeddings(tmp_path / "more", [{"source": str(corpus["media"] / "red.png"), "modality": "image",
                                           "caption": "a new red"}], seed=5)
    add_to_index(idx, new)
    info = c.get("/api/info").json()
    assert info["size"] == size and info["generation"] == 2
    vec = np.load(next(new.glob("embeddings-*.npy")))[0]
    top = c.post("/api/search", json={"vector": vec.tolist(), "k": 1}).json()["results"][0]
    assert top["caption"] == "a new red" and top["media_url"] == f"/api/media/{top['id']}"
    assert c.post("/api/reload").json()["generation"] == 3

    lock = FileLock(str(idx.parent / f".{idx.name}.lock"))  # a writer holds the index lock: keep the old state
    with lock:
        _swap_without_lock(idx, top["id"])
        assert c.get(f"/api/media/{top['id']}").status_code == 200
        _is_error(c.post("/api/reload"), 503)
    _is_error(c.get(f"/api/media/{top['id']}"), 404)  # lock released: reloaded before answering


def _swap_without_lock(idx: Path, item: int) -> None:
    """What a writer does while it holds the lock: replace the folder atomically (by hand: the lock is ours)."""
    import shutil

    from anyalign.retrieval.metadata import METADATA_NAME, MetadataStore

    tmp = idx.with_name(idx.name + ".new")
    shutil.copytree(idx, tmp)
    with MetadataStore(tmp / METADATA_NAME) as meta:
        meta.delete([item])
    old = idx.with_name(idx.name + ".old")
    os.replace(idx, old)
    os.replace(tmp, idx)
    shutil.rmtree(old)


# --- live server: slow clients and concurrency ----------------------------------------------------------------
@pytest.fixture()
def live(corpus: dict):
    app = create_app(Retriever(corpus["root"] / "idx"), body_timeout=1.0, batch_wait_ms=5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn_server(app, host="127.0.0.1", port=port, header_timeout=1.0, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    yield app, port
    server.should_exit = True
    thread.join(timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed the connection (recv returns b''), failing after `seconds`."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    while True:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            pytest.fail(f"connection still open after {seconds} s")
        except ConnectionResetError:
            return time.monotonic() - t0
        if not data:
            return time.monotonic() - t0


def test_half_sent_headers_are_cut_off(live) -> None:
    _, port = live
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /api/info HT")
        assert _closed_within(s, 5.0) < 3.0
    with socket.create_connection(("127.0.0.1", port)) as s:  # dripping bytes does not extend the deadline
        t0 = time.monotonic()
        for ch in b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ":
            try:
                s.sendall(bytes([ch]))
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - t0 > 4:
                pytest.fail("still accepting header bytes after 4 s")
        assert time.monotonic() - t0 + _closed_within(s, 5.0) < 4.0
    with socket.create_connection(("127.0.0.1", port)) as s:  # a complete request is answered as usual
        s.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        s.settimeout(10)
        assert s.recv(64).startswith(b"HTTP/1.1 200")


def test_stalled_body_gets_408(live) -> None:
    _, port = live
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"text\": ")
        s.settimeout(10)
        reply = b""
        while b"}" not in reply.partition(b"\r\n\r\n")[2]:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and set(json.loads(body)) == {"error"}


def test_concurrent_text_queries_are_batched_and_identical(live, corpus: dict) -> None:
    app, port = live
    queries = [f"{a} {b}" for a in ("a red", "the blue", "a green", "the black") for b in ("square", "dog", "photo",
                                                                                            "circle", "cat")] * 2
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        c.post("/api/search", json={"text": "warm up"})
        batcher = app.state.batcher
        calls0, n0 = batcher.calls, batcher.queries
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda q: c.post("/api/search", json={"text": q, "k": 5}).json()["results"],
                                queries))
    assert batcher.queries - n0 == len(queries)
    assert batcher.calls - calls0 < len(queries) / 2, (batcher.calls - calls0, len(queries))  # embedded together
    alone = Retriever(corpus["root"] / "idx")
    for q, hits in zip(queries, got):
        want = alone.search_text(q, 5)
        assert [h["id"] for h in hits] == [w.id for w in want]
        assert [h["score"] for h in hits] == pytest.approx([w.score for w in want], abs=1e-5)
    assert json.dumps(got)  # plain JSON all the way


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium not installed (apt-get install chromium)")
def test_page_with_token_in_headless_chromium(corpus: dict, tmp_path: Path) -> None:
    """The page takes `#token=` into a cookie: searches and the <img> media requests then pass the token check."""
    import subprocess

    app = create_app(Retriever(corpus["root"] / "idx"), token="page-token")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1000,2400",
             "--virtual-time-budget=15000", "--hide-scrollbars"]

    def chromium(url: str, *args: str) -> subprocess.CompletedProcess:
        profile = f"--user-data-dir={tmp_path / 'profile'}"
        return subprocess.run([str(CHROMIUM), *flags, profile, *args, url], capture_output=True, text=True,
                              timeout=120)

    with running(app) as port:
        page = f"http://127.0.0.1:{port}/?q=a+red+square&k=19"
        without = chromium(page, "--dump-dom").stdout
        assert "needs a token" in without and 'class="result"' not in without
        shot = tmp_path / "page.png"
        chromium(page + "#token=page-token", f"--screenshot={shot}")
        dom = chromium(page + "#token=page-token", "--dump-dom").stdout
    assert dom.count('class="result"') == 19, dom[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert (np.abs(img - np.array([220, 30, 30])).sum(-1) < 40).sum() > 500  # the red thumbnail loaded
