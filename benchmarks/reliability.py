"""Reliability sweep (issue 24): replays a CLI sweep and the hostile-input cases, prints held / broke per area.

    python benchmarks/reliability.py [--workers 2] [--skip-slow] [--json out.json]

Every case runs `python -m anyalign.cli.main ...` in a fresh process (an abort or a hang cannot take the sweep
down) on tiny random-init models of the real architectures (a 1-layer BERT, a small IMU transformer) and small
inputs. A case *holds* when the process ends as expected (status, at most one `error:` line, never a traceback,
within its time limit) and its own check passes (a user's folder intact, an index still readable, the changed
input re-encoded ...). The sweep part: `--help` and an unknown option for every command (exit 0 / one line, 2).
The disk-full cases need root (a 3 MiB tmpfs is mounted); without it they are reported as skipped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # in-process cases test this checkout, like the subprocesses
from _retrieval_helpers import clustered, tiny_bert  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}


@dataclass
class Case:
    area: str
    name: str
    args: list[str]
    code: int | tuple[int, ...] = 2
    check: Callable[[str, str], bool] | None = None  # (stdout, stderr) -> held
    timeout: float = 120.0
    signal_when: Callable[[], bool] | None = None  # send SIGINT/SIGTERM once true
    sig: int = signal.SIGINT
    env: dict[str, str] = field(default_factory=dict)
    slow: bool = False


@dataclass
class Result:
    case: Case
    held: bool
    why: str
    seconds: float


def run_case(case: Case) -> Result:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "anyalign.cli.main", *case.args], env={**ENV, **case.env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    try:
        if case.signal_when is not None:
            while not case.signal_when() and proc.poll() is None and time.monotonic() - t0 < case.timeout:
                time.sleep(0.05)
            if proc.poll() is None:
                proc.send_signal(case.sig)
        out, err = proc.communicate(timeout=max(case.timeout - (time.monotonic() - t0), 1))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Result(case, False, f"still running after {case.timeout:g} s", time.monotonic() - t0)
    seconds = time.monotonic() - t0
    codes = case.code if isinstance(case.code, tuple) else (case.code,)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    if "Traceback" in err:
        return Result(case, False, "traceback: " + err.strip().splitlines()[-1][:160], seconds)
    if proc.returncode not in codes:
        last = (err.strip().splitlines() or ["(no output)"])[-1][:160]
        return Result(case, False, f"exit {proc.returncode}, expected {codes}: {last}", seconds)
    if len(errors) > 1:
        return Result(case, False, f"{len(errors)} error lines", seconds)
    if case.check is not None:
        try:
            ok = case.check(out, err)
        except Exception as e:  # noqa: BLE001 - a failing check is a broken case, with its reason
            return Result(case, False, f"check raised {type(e).__name__}: {e}", seconds)
        if not ok:
            return Result(case, False, "check failed: " + (errors or err.strip().splitlines() or [out])[-1][:160],
                          seconds)
    return Result(case, True, (errors or [""])[0][:160], seconds)


# --- the workspace -------------------------------------------------------------------------------------------
def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def workspace(w: Path) -> dict[str, Path]:
    """Tiny models and inputs every case reads (no case writes into another's paths)."""
    bert = tiny_bert(w / "bert")
    (w / "lines.txt").write_text("a red dog\nthe blue cat\na green square\nthe white sound\n")
    (w / "big.txt").write_text("".join(f"a red dog {i}\n" for i in range(20_000)))
    rng = np.random.default_rng(0)
    imu = w / "imu"
    imu.mkdir()
    rows = []
    for i in range(8):
        np.save(imu / f"w{i}.npy", rng.normal(size=(6, 32)).astype(np.float32))
        rows.append(json.dumps({"imu": f"w{i}.npy", "caption": ["a red dog", "the blue cat"][i % 2]}))
    np.save(imu / "complex.npy", (rng.normal(size=(6, 32)) + 1j).astype(np.complex64))
    (imu / "data.jsonl").write_text("\n".join(rows) + "\n")
    (imu / "bad.jsonl").write_text("\n".join(rows[:3] + ["{broken", "[1]", json.dumps({"imu": "nope.xyz"})]) + "\n")
    (imu / "bad.csv").write_text("path,label\nw0.npy,a\nw1.npy,b,extra\nw2.npy\nw3.npy,c\n")
    np.save(w / "vecs.npy", clustered(200, 16))
    recipe = {"name": "t",
              "adapters": {"imu": {"encoder": {"name": "imu", "options": {"dim": 16, "depth": 1, "heads": 2}},
                                   "train_encoder": True, "embed_projector": {"name": "mlp", "hidden_dim": 16}}},
              "anchors": {"text": {"encoder": {"name": "text", "pretrained": str(bert)}}},
              "data": {"train": [{"kind": "jsonl", "path": str(imu / "data.jsonl")}]},
              "train": {"batch_size": 4, "max_steps": 4, "lr": 1e-3, "warmup_steps": 1, "save_every": 2,
                        "log_every": 1, "tensorboard": False}, "eval": {"at_start": False}}
    (w / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    bomb, prev = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n', "a"
    for name in "bcdefghi":
        bomb += f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
        prev = name
    (w / "bomb.yaml").write_text(bomb)
    (w / "recursive.yaml").write_text("x: &a [1, *a]\n")
    (w / "deep.yaml").write_text("x: " + "[" * 5000 + "]" * 5000 + "\n")
    (w / "deepmap.yaml").write_text("".join(" " * i + f"k{i}:\n" for i in range(300)) + " " * 300 + "v: 1\n")
    _tar(w / "shard.tar", [("a.txt", b"a red dog"), ("b.txt", b"\xff\xfe"), ("c.txt", b"the blue cat"),
                           ("d.json", b"{nope"), ("d.txt", b"x"), ("e.txt", b"a green square")])
    (w / "trunc.tar").write_bytes((w / "shard.tar").read_bytes()[:512 * 5 + 100])
    plugins = w / "plugins"
    plugins.mkdir()
    (plugins / "raises_runtime.py").write_text("raise RuntimeError('boom')\n")
    (plugins / "exits.py").write_text("import sys\nsys.exit(3)\n")
    return {"bert": bert, "imu": imu}


def cases(w: Path, paths: dict[str, Path], disk: Path | None) -> list[Case]:
    bert, imu = str(paths["bert"]), paths["imu"]
    T = ["--encoder", "text", "--pretrained", bert]
    IMU = ["--set", "dim=16", "--set", "depth=1", "--set", "heads=2"]
    out: list[Case] = []

    def one_line(_o: str, e: str) -> bool:
        return sum(ln.startswith("error:") for ln in e.splitlines()) == 1

    # 1. interrupts
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        o = w / f"int-emb-{sig}"
        out.append(Case("interrupts", f"embed {signal.Signals(sig).name}", ["embed", str(w / "big.txt"), *T, "-o",
                        str(o), "--batch-size", "8"], code,
                        lambda _o, e, o=o: "run the same command again" in e and not o.exists(),
                        signal_when=lambda o=o: any(p.name.startswith(f".{o.name}.") for p in w.iterdir()), sig=sig))
    run_dir = w / "int-train"
    out.append(Case("interrupts", "train SIGINT", ["train", str(w / "recipe.yaml"), "train.max_steps=100000",
                    "-o", str(run_dir)], 130, lambda _o, e: "--resume" in e,
                    signal_when=lambda: (run_dir / "checkpoints" / "step-000002").is_dir(), slow=True))
    # 2. ownership
    decoy = w / "decoy"
    decoy.mkdir()
    (decoy / "embeddings.json").write_text("{}")
    (decoy / "data.csv").write_text("1,2\n")
    out.append(Case("ownership", "embed -o decoy with embeddings.json", ["embed", str(w / "lines.txt"), *T, "-o",
                    str(decoy)], 2, lambda o, e: (decoy / "data.csv").is_file()))
    out.append(Case("ownership", "embed output == input --overwrite", ["embed", str(w / "lines.txt"), *T, "-o",
                    str(w / "lines.txt"), "--overwrite"], 2, lambda o, e: (w / "lines.txt").is_file()))
    out.append(Case("ownership", "index build output == input", ["index", "build", str(w / "vecs.npy"), "-o",
                    str(w / "vecs.npy"), "--overwrite"], 2, lambda o, e: (w / "vecs.npy").is_file()))
    out.append(Case("ownership", "extract -o inside the input folder", ["extract", "-e", "imu", *IMU, "-i",
                    str(imu), "-o", str(imu / "feats")], 2, lambda o, e: not (imu / "feats").exists()))
    user = w / "userdir"
    user.mkdir()
    (user / "manifest.json").write_text('{"mine": 1}')
    out.append(Case("ownership", "extract into a user folder", ["extract", "-e", "imu", *IMU, "-i",
                    str(imu / "data.jsonl"), "-o", str(user)], 2,
                    lambda o, e: (user / "manifest.json").read_text() == '{"mine": 1}'))
    # 3. resume: a text line edited in place after a first extraction is extracted again, alone
    first = ["extract", "-e", "text", "--pretrained", bert, "-i", str(w / "edit.txt"), "-o", str(w / "resume"),
             "--quiet", "--shard-size", "2"]
    (w / "edit.txt").write_text("a red dog\nthe blue cat\na green square\n")
    subprocess.run([sys.executable, "-m", "anyalign.cli.main", *first], env=ENV, capture_output=True, check=True)
    (w / "edit.txt").write_text("a red dog\nthe black cat\na green square\n")
    out.append(Case("resume", "text line edited in place", first, 0, lambda o, e: "(1 new" in o))
    # staging left by a killed writer is removed by the next one
    from anyalign.retrieval import ArraySource, build_index

    build_index(ArraySource(clustered(50, 16)), w / "staged", factory="Flat")
    (w / ".staged.k1ll3d.tmp").mkdir()
    (w / ".staged.k1ll3d.tmp" / "index.faiss").write_bytes(b"\0" * 4096)
    out.append(Case("writers", "staging of a killed writer", ["index", "add", str(w / "staged"), str(w / "vecs.npy")],
                    0, lambda o, e: not (w / ".staged.k1ll3d.tmp").exists()))
    # 4. recipes
    for name in ("bomb", "recursive", "deep", "deepmap"):
        out.append(Case("recipes", f"{name}.yaml", ["train", str(w / f"{name}.yaml")], 2, one_line, timeout=30))
    # 5. writers
    for factory in ("HNSW0", "HNSW1", "PQ4x0", "RR0,Flat", "IVF4_HNSW0,Flat", "NSG0", "IVF0,Flat"):
        out.append(Case("writers", f"--factory {factory}", ["index", "build", str(w / "vecs.npy"), "-o",
                        str(w / f"f-{factory}"), "--factory", factory], 2, one_line, timeout=60))
    (w / ".locked.lock").mkdir()
    out.append(Case("writers", "uncreatable lock", ["index", "build", str(w / "vecs.npy"), "-o", str(w / "locked"),
                    "--factory", "Flat"], 2, one_line, timeout=60))
    out.append(Case("writers", "-k 2000000000", ["index", "build", str(w / "vecs.npy"), "-o", str(w / "bigk"),
                    "--factory", "Flat", "-k", "2000000000"], 0, timeout=120))
    out.append(Case("writers", "--tune-queries -5", ["index", "build", str(w / "vecs.npy"), "-o", str(w / "tq"),
                    "--tune-queries", "-5"], 2, one_line))
    # 6. partial failures
    out.append(Case("partial", "tar with 2 bad members", ["extract", "-e", "text", "--pretrained", bert, "-i",
                    str(w / "shard.tar"), "-o", str(w / "p-tar"), "--quiet"], 0,
                    lambda o, e: "3 extracted, 2 failed" in o))
    out.append(Case("partial", "truncated tar", ["extract", "-e", "text", "--pretrained", bert, "-i",
                    str(w / "trunc.tar"), "-o", str(w / "p-trunc"), "--quiet"], 0, lambda o, e: "failed" in o))
    out.append(Case("partial", "jsonl with 3 bad rows", ["extract", "-e", "imu", *IMU, "-i", str(imu / "bad.jsonl"),
                    "-o", str(w / "p-jsonl"), "--quiet"], 0, lambda o, e: "3 extracted, 3 failed" in o))
    out.append(Case("partial", "csv with 2 bad rows", ["extract", "-e", "imu", *IMU, "-i", str(imu / "bad.csv"),
                    "-o", str(w / "p-csv"), "--quiet"], 0, lambda o, e: "2 extracted, 2 failed" in o))
    # 7. plugins
    penv = {"PYTHONPATH": f"{ROOT}{os.pathsep}{w / 'plugins'}"}
    for name in ("raises_runtime", "exits", "./raises_runtime.py", "a/b"):
        out.append(Case("plugins", f"--plugin {name}", ["--plugin", name, "encoders"], 2, one_line, env=penv))
    out.append(Case("plugins", "broken ANYALIGN_PLUGINS", ["encoders"], 0, lambda o, e: "imu" in o,
                    env={**penv, "ANYALIGN_PLUGINS": "raises_runtime"}))
    # 10. former tracebacks
    for name, args in [("--device bogus", ["embed", str(w / "lines.txt"), *T, "--device", "bogus"]),
                       ("--set max_length=-1", ["embed", str(w / "lines.txt"), *T, "--set", "max_length=-1"]),
                       ("--set dim=-1", ["embed", str(imu / "w0.npy"), "--encoder", "imu", "--set", "dim=-1"]),
                       ("--set heads=7", ["embed", str(imu / "w0.npy"), "--encoder", "imu", "--set", "dim=16",
                                          "--set", "heads=7"]),
                       ("embed /dev/null", ["embed", "/dev/null", *T]),
                       ("complex IMU array", ["embed", str(imu / "complex.npy"), "--encoder", "imu", *IMU]),
                       ("hidden_dim=-3", ["train", str(w / "recipe.yaml"),
                                          "adapters.imu.embed_projector.hidden_dim=-3"])]:
        out.append(Case("tracebacks", name, [*args, "-o", str(w / f"tb-{len(out)}")], 2, one_line))
    # 8. disk full
    if disk is not None:
        out.append(Case("disk", "index add on a full disk", ["index", "add", str(disk / "idx"), str(w / "big.npy")],
                        1, lambda o, e: "No space left" in e and _index_ok(disk / "idx")))
        out.append(Case("disk", "index build on a full disk", ["index", "build", str(w / "big.npy"), "-o",
                        str(disk / "idx2"), "--factory", "Flat"], (1, 2),
                        lambda o, e: ".tmp" not in e and not (disk / "idx2").exists()))
        out.append(Case("disk", "embed on a full disk", ["embed", str(w / "lines.txt"), *T, "-o", str(disk / "e")],
                        1, lambda o, e: not (disk / "e").exists()))
        out.append(Case("disk", "extract on a full disk", ["extract", "-e", "text", "--pretrained", bert, "-i",
                        str(w / "lines.txt"), "-o", str(disk / "f"), "--quiet"], 1,
                        lambda o, e: not (disk / "f").exists()))
    return out


def _index_ok(folder: Path) -> bool:
    from anyalign.retrieval import Retriever

    return len(Retriever(folder)) == 100


def sweep_cases() -> list[Case]:
    """`--help` (exit 0) and an unknown option (one line, exit 2) for every command."""
    from anyalign.cli.main import _register_all, app

    _register_all()
    import typer

    def walk(group, prefix: list[str]) -> list[list[str]]:
        found = []
        for name, cmd in getattr(group, "commands", {}).items():
            found.append([*prefix, name])
            found += walk(cmd, [*prefix, name])
        return found

    commands = walk(typer.main.get_command(app), [])
    out = []
    for path in commands:
        out.append(Case("sweep", f"{' '.join(path)} --help", [*path, "--help"], 0, timeout=60))
        out.append(Case("sweep", f"{' '.join(path)} --no-such-option", [*path, "--no-such-option", "x"], 2,
                        lambda o, e: sum(ln.startswith("error:") for ln in e.splitlines()) == 1, timeout=60))
    return out


def service_cases(w: Path) -> list[Result]:
    """In-process: strict Host parsing, scrubbed temp paths, half-open connections of one peer."""
    import socket
    import threading

    import httpx
    from fastapi.testclient import TestClient

    from anyalign.retrieval import ArraySource, Retriever, build_index
    from anyalign.retrieval.server import create_app, error_body, uvicorn_server

    build_index(ArraySource(clustered(40, 16)), w / "svc-idx", factory="Flat")
    client = TestClient(create_app(Retriever(w / "svc-idx")))
    results = []
    for host, want in (("localhost:80@evil.com", 400), ("localhost:99999", 400), ("evil.com", 400),
                       ("localhost:8000", 200)):
        t0 = time.monotonic()
        got = client.get("/api/info", headers={"Host": host}).status_code
        results.append(Result(Case("service", f"Host {host}", []), got == want, f"status {got}",
                              time.monotonic() - t0))
    body = json.dumps(error_body(400, f"{tempfile.gettempdir()}/anyalign-query-x/q.png: cannot decode"))
    results.append(Result(Case("service", "temp path in an error", []), tempfile.gettempdir() not in body, body, 0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn_server(create_app(Retriever(w / "svc-idx")), host="127.0.0.1", port=port, header_timeout=30.0,
                            log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    socks = []
    t0 = time.monotonic()
    try:
        while not server.started and time.monotonic() - t0 < 20:
            time.sleep(0.05)
        for _ in range(520):
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"GET /api/info HT")
            socks.append(c)
        time.sleep(0.5)
        codes = [httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=10).status_code for _ in range(10)]
        results.append(Result(Case("service", "520 half-open connections of one peer", []), codes == [200] * 10,
                              f"statuses {sorted(set(codes))}", time.monotonic() - t0))
    finally:
        for c in socks:
            c.close()
        server.should_exit = True
        thread.join(timeout=10)
    return results


def mount_disk(w: Path) -> Path | None:
    """A full 3 MiB tmpfs holding a 100-vector index, or None (not root / mount refused)."""
    disk = w / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        return None
    from anyalign.retrieval import ArraySource, build_index

    build_index(ArraySource(clustered(100, 32)), disk / "idx", factory="Flat")
    np.save(w / "big.npy", clustered(20_000, 32, seed=1))
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return disk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="cases run at once")
    ap.add_argument("--skip-slow", action="store_true", help="leave out the training interrupt")
    ap.add_argument("--skip-sweep", action="store_true", help="leave out --help / unknown-option per command")
    ap.add_argument("--json", type=Path, help="write every case's result here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="anyalign-reliability-") as tmp:
        w = Path(tmp)
        paths = workspace(w)
        disk = mount_disk(w)
        try:
            todo = [c for c in cases(w, paths, disk) if not (args.skip_slow and c.slow)]
            if not args.skip_sweep:
                todo += sweep_cases()
            t0 = time.monotonic()
            with ThreadPoolExecutor(args.workers) as pool:
                results = list(pool.map(run_case, todo))
            results += service_cases(w)
            elapsed = time.monotonic() - t0
        finally:
            if disk is not None:
                subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    by_area: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_area[r.case.area].append(r)
    print(f"{'area':<12} {'held':>5} {'broke':>6}")
    for area, rs in by_area.items():
        print(f"{area:<12} {sum(r.held for r in rs):>5} {sum(not r.held for r in rs):>6}")
    held = sum(r.held for r in results)
    print(f"{'total':<12} {held:>5} {len(results) - held:>6}   ({len(results)} cases in {elapsed:.0f} s"
          f"{'; disk-full cases skipped: not root or no tmpfs' if disk is None else ''})")
    for r in results:
        if not r.held:
            print(f"  BROKE {r.case.area}/{r.case.name}: {r.why}")
    if args.json:
        args.json.write_text(json.dumps([{"area": r.case.area, "case": r.case.name, "held": r.held, "why": r.why,
                                          "seconds": round(r.seconds, 2)} for r in results], indent=1))


if __name__ == "__main__":
    main()
