"""Load test of `anyalign serve` on loopback: p50 / p99 latency, throughput and errors at 1, 4 and 16 clients.

    ANYALIGN_ASSETS=... python benchmarks/load.py [--seconds 6] [--max-requests 600] [--clients 1,4,16]

Index: real all-MiniLM-L6-v2 vectors ($ANYALIGN_ASSETS/text/all-MiniLM-L6-v2) of a few hundred sentences, plus
real media items (the freedesktop sounds, the videos from the assets and scikit-image's photos), each indexed
under the MiniLM vector of its caption and served from its file. The server runs in a subprocess bound to
127.0.0.1 (never anything else); each client is a thread with one keep-alive connection. Two kinds of load:
`text` (POST /api/search, a different sentence each time, k=10) and `media` (GET /api/media/ID of a random
media item). Each level stops after `--max-requests` requests or `--seconds` seconds, whichever comes first, split over
`--rounds` interleaved rounds (the two servers alternate, so a busy machine weighs on both alike).

Server CPU time per request (from /proc) is printed too: on a machine shared with other work, wall-clock
throughput also depends on how many threads a mode runs (each gets a share of the cores), CPU per request does not.

Baseline, in the same run: the same server with micro-batching off (`batch_max=0`: one encoder call per query,
as before issue 14). Issue 12/14 measured the old server at 78 QPS with 1 client and 51 QPS, p50 221 ms, p99 435 ms
with 16 clients (2 cores). 0 errors are required.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"  # loopback only, by design
OLD = {"text": {1: {"qps": 78.0}, 16: {"qps": 51.0, "p50": 221.0, "p99": 435.0}}}  # issues 12 and 14

SUBJECTS = ["a dog", "the cat", "a small child", "an old man", "two women", "a street musician", "the chef",
            "a red car", "the train", "a flock of birds", "a cyclist", "the teacher", "a baby", "the crowd"]
ACTIONS = ["is barking at", "walks slowly past", "is playing with", "stands next to", "runs across", "looks at",
           "is painting", "sings near", "waits beside", "is cleaning"]
OBJECTS = ["the front door", "a wooden bench", "the river bank", "a busy market", "the kitchen table",
           "an empty stage", "the snowy mountain", "a bright window", "the parking lot", "a quiet library"]
QUERIES = ["a dog barking loudly", "someone playing music on the street", "a phone is ringing", "a camera shutter",
           "cooking dinner in a kitchen", "a bell rings", "birds flying over water", "a warning sound",
           "an astronaut in space", "a cup of coffee", "a rocket launch", "a cartoon rabbit in a forest",
           "people riding bikes", "a man talking on the phone", "the train leaves the station", "a sleeping cat"]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = sorted({f"{s} {a} {o}" for s in SUBJECTS for a in ACTIONS for o in OBJECTS})
    rng.shuffle(out)
    return out[:n]


def media_items(assets: Path, folder: Path) -> list[dict]:
    """Real media files with captions: sounds and videos from the assets, photos from scikit-image."""
    items = [{"source": str(p.resolve()), "modality": "audio", "caption": f"the sound of {p.stem.replace('-', ' ')}"}
             for p in sorted((assets / "audio" / "freedesktop").glob("*.oga"))]
    captions = {"bigbuckbunny": "a cartoon rabbit in a forest", "bikes": "people riding bikes",
                "carphone_pristine": "a man talking on a car phone", "carphone_distorted": "a blurry man on a phone"}
    items += [{"source": str(p.resolve()), "modality": "video", "caption": captions.get(p.stem, p.stem)}
              for p in sorted((assets / "video").glob("*.mp4"))]
    try:
        import skimage.data
        from PIL import Image

        photos = {"astronaut": "an astronaut in a space suit", "chelsea": "a sleeping cat",
                  "coffee": "a cup of coffee", "rocket": "a rocket on the launch pad",
                  "camera": "a photographer with a camera", "coins": "old coins on a table",
                  "horse": "a horse silhouette", "moon": "the surface of the moon"}
        folder.mkdir(parents=True, exist_ok=True)
        for name, caption in photos.items():
            path = folder / f"{name}.jpg"
            Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB").save(path, quality=90)
            items.append({"source": str(path.resolve()), "modality": "image", "caption": caption})
    except ImportError:
        print("scikit-image not installed: no photos in the corpus")
    return items


def build(work: Path, minilm: Path, n_sentences: int) -> tuple[Path, list[int]]:
    """The index folder and the ids of its media items."""
    from anyalign.retrieval import as_embedder, build_index
    from anyalign.retrieval.embed import EmbeddingWriter

    spec = {"encoder": "text", "pretrained": str(minilm)}
    emb = as_embedder(spec)
    media = media_items(Path(os.environ["ANYALIGN_ASSETS"]), work / "photos")
    rows = [{"source": f"sentences.txt:{i}", "modality": "text", "caption": s}
            for i, s in enumerate(sentences(n_sentences))] + media
    (work / "emb").mkdir()
    writer = EmbeddingWriter(work / "emb", emb.dim)
    writer.add(emb.embed([r["caption"] for r in rows], batch_size=64), rows)
    writer.close(modality="text", embedders={"text": spec})
    build_index(work / "emb", work / "idx", factory="Flat", embedders={"text": spec})
    return work / "idx", list(range(len(rows) - len(media), len(rows)))


def serve_main(index: str, port: int, batch_max: int) -> None:
    """The server subprocess."""
    import torch

    from anyalign.retrieval import Retriever
    from anyalign.retrieval.server import create_app, uvicorn_server

    torch.set_num_threads(os.cpu_count() or 1)
    app = create_app(Retriever(index), batch_max=batch_max, max_k=100)
    uvicorn_server(app, host=HOST, port=port, log_level="warning").run()


class Server:
    def __init__(self, index: Path, batch_max: int) -> None:
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(index), str(self.port), str(batch_max)],
                                     env=env)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if request(self.port, "GET", "/api/info")[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not start within 180 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def request(port: int, method: str, path: str, body: dict | None = None,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    c = conn or http.client.HTTPConnection(HOST, port, timeout=60)
    data = json.dumps(body).encode() if body is not None else None
    c.request(method, path, body=data, headers={"content-type": "application/json"} if data else {})
    r = c.getresponse()
    out = r.status, r.read()
    if conn is None:
        c.close()
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(port: int, kind: str, clients: int, media_ids: list[int], seconds: float, max_requests: int,
         pid: int = 0) -> dict:
    """Closed-loop load: `clients` threads, each with one connection, until the count or time limit."""
    lat: list[float] = []
    errors = [0]
    issued = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    pool = sentences(2000, seed=1) + QUERIES

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        while time.monotonic() < stop_at:
            with lock:
                if issued[0] >= max_requests:
                    break
                issued[0] += 1
            t0 = time.perf_counter()
            try:
                if kind == "text":
                    status, body = request(port, "POST", "/api/search", {"text": rng.choice(pool), "k": 10}, conn)
                    ok = status == 200 and len(json.loads(body)["results"]) == 10
                else:
                    status, body = request(port, "GET", f"/api/media/{rng.choice(media_ids)}", conn=conn)
                    ok = status == 200 and len(body) > 0
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                errors[0] += not ok
        conn.close()

    t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"lat": lat, "errors": errors[0], "wall": time.perf_counter() - t0, "cpu": cpu_seconds(pid) - cpu0}


def summary(runs: list[dict]) -> dict:
    """Latency percentiles over all rounds' requests; throughput = all requests / all rounds' time."""
    ms = np.asarray([x for r in runs for x in r["lat"]]) * 1000
    return {"requests": len(ms), "errors": sum(r["errors"] for r in runs),
            "qps": len(ms) / max(sum(r["wall"] for r in runs), 1e-9),
            "cpu_ms": 1000 * sum(r["cpu"] for r in runs) / max(len(ms), 1),
            "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan")}


def same_results(port_a: int, port_b: int, queries: list[str]) -> bool:
    def ids(port: int, q: str) -> list[int]:
        return [h["id"] for h in json.loads(request(port, "POST", "/api/search", {"text": q, "k": 10})[1])["results"]]

    return all(ids(port_a, q) == ids(port_b, q) for q in queries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="time limit per level")
    ap.add_argument("--max-requests", type=int, default=600, help="request limit per level")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--sentences", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per level (split the limits)")
    ap.add_argument("--kinds", default="text,media", help="loads to run: text (POST /api/search), media (GET)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_main(args.serve[0], int(args.serve[1]), int(args.serve[2]))
        return
    assets = os.environ.get("ANYALIGN_ASSETS")
    minilm = Path(assets or "") / "text" / "all-MiniLM-L6-v2"
    if not assets or not minilm.is_dir():
        sys.exit("needs the real assets: export ANYALIGN_ASSETS (../shared/fetch-assets)")
    levels = [int(x) for x in args.clients.split(",")]
    kinds = [k for k in ("text", "media") if k in args.kinds.split(",")]
    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
          f"on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="anyalign-load-") as d:
        index, media_ids = build(Path(d), minilm, args.sentences)
        print(f"index: {args.sentences} sentences + {len(media_ids)} media items (MiniLM, Flat)")
        servers = {"one-by-one": Server(index, 0), "batched": Server(index, 32)}
        try:
            for p in servers.values():  # warm up both
                for q in QUERIES:
                    request(p.port, "POST", "/api/search", {"text": q, "k": 10})
            identical = same_results(servers["one-by-one"].port, servers["batched"].port, QUERIES)
            runs: dict[tuple[str, str, int], list[dict]] = {}
            for rnd in range(args.rounds):  # interleaved rounds, alternating order: both modes see the same load
                for kind in kinds:
                    for n in levels:
                        for mode in (list(servers) if rnd % 2 == 0 else list(servers)[::-1]):
                            runs.setdefault((kind, mode, n), []).append(
                                load(servers[mode].port, kind, n, media_ids, args.seconds / args.rounds,
                                     max(1, args.max_requests // args.rounds), servers[mode].proc.pid))
            results = {key: summary(v) for key, v in sorted(runs.items(), key=lambda kv: (kv[0][0] != "text",
                                                                                           kv[0][2], kv[0][1]))}
        finally:
            for s in servers.values():
                s.stop()
    print(f"\n{'kind':<6} {'mode':<11} {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'QPS':>7} "
          f"{'CPU ms/req':>10} {'errors':>6}")
    for (kind, mode, n), r in results.items():
        print(f"{kind:<6} {mode:<11} {n:>7} {r['requests']:>8} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['qps']:>7.1f} "
              f"{r['cpu_ms']:>10.1f} {r['errors']:>6}")
    print("\nbatched / one-by-one (same run):")
    for kind in kinds:
        for n in levels:
            a, b = results[(kind, "batched", n)], results[(kind, "one-by-one", n)]
            print(f"  {kind:<6} {n:>2} clients: QPS x{a['qps'] / b['qps']:.2f}, p50 x{a['p50'] / b['p50']:.2f}, "
                  f"p99 x{a['p99'] / b['p99']:.2f}, CPU/request x{a['cpu_ms'] / max(b['cpu_ms'], 1e-9):.2f}")
    t1, t16 = results.get(("text", "batched", 1)), results.get(("text", "batched", 16))
    if t1 and t16:
        print("\nissue 12/14 (old server, 2 cores): 1 client 78 QPS; 16 clients 51 QPS, p50 221 ms, p99 435 ms")
        print(f"now (batched):                     1 client {t1['qps']:.0f} QPS; 16 clients {t16['qps']:.0f} QPS, "
              f"p50 {t16['p50']:.0f} ms, p99 {t16['p99']:.0f} ms; 16 vs 1 client x{t16['qps'] / t1['qps']:.2f}")
    print(f"results identical (ids, one-by-one vs batched): {identical}")
    total_errors = sum(r["errors"] for r in results.values())
    print(f"errors: {total_errors}")
    la = os.getloadavg()
    print(f"load after: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    if args.json:
        from anyalign.io import write_json

        rows = [{"kind": k, "mode": m, "clients": n, **r} for (k, m, n), r in results.items()]
        write_json(args.json, {"identical": identical, "errors": total_errors, "load_after": la, "results": rows})
    if total_errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
