"""Every ratio issue 14 lists, measured in one run, each against a baseline from the same process or run.

    python benchmarks/scale_ratios.py --json scale.json            # full sizes (quiet machine, see below)
    python benchmarks/scale_ratios.py --quick --json quick.json    # tiny sizes: shows every part works
    python benchmarks/scale_ratios.py --quick --parts 7,9          # a subset

Parts (each in a fresh child process, its own RSS; the machine's 1-minute load is recorded before and after):
  1 training memory / time to first step (benchmarks/train_memory.py: 10k, 100k, 1M streamed; map-style <= 100k)
  2 trainer step vs the projector's pure compute, cached features vs the frozen encoder every step
    (benchmarks/train.py, interleaved), and num_workers 0 vs 1 vs 2 on the map path (interleaved here)
  3 anchor-text embeddings: a step's text cost with the on-disk caption table (anyalign/align/text_cache.py) at
    N captions vs MiniLM encoding the batch's captions (the old cache-miss path), and lookups at N vs 1k rows
  4 retrieval: Retriever.search_vectors (every hit's metadata columns read) vs raw faiss on the same index, batch and
    single queries, Flat / IVF (tuned and nprobe 1) / HNSW; held-out recall vs the build's reported recall,
    synthetic and real MiniLM sentence vectors (functions of benchmarks/retrieval.py)
  5 the HTTP service (benchmarks/load.py): QPS at 1 and 16 clients, micro-batching vs one encoder call per query
  6 CLI start-up: `anyalign --help`, `anyalign search --vector/--text` on a small index vs `python -c pass` and
    `python -c "import torch"` (child processes, median, interleaved) and which heavy modules each imports
  7 text batching: `Embedder.embed` on real sentences of mixed length vs the same encoder batched in input order
    and length-sorted (padded tokens computed and wall time, interleaved)
  8 GGUF LLM: first load (GGUF -> safetensors cache, anyalign/llm/bundle.py) into an empty cache vs the
    second load from the cache, each a fresh process
  9 bf16 vs fp32 on this CPU: GEMM and MiniLM under bf16 autocast vs fp32, the CPU's bf16 flags, and what
    `autocast: auto` (anyalign/encoders/autocast.py) picks here; auto must never be slower than fp32

Every row is "A / B": value = A, baseline = B, ratio = A / B. The table and `--json` hold part, row, value,
baseline, ratio, goal, met and load. On a shared machine the ratios are what to trust, not the absolute numbers.
Timing: `--quick` took ~16 min on 2 cores shared with other jobs (load 6-7.7 throughout; ~8.5 CPU-minutes), so
about 5-6 min on a quiet machine; the full mode is estimated at ~20-25 min on 2 quiet cores (parts 1, 2 and 4 are the
long ones; part 1 writes ~1.3 GB of feature shards once, reused from a kept `--work`; ~3 GB peak RSS at 100k map).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUICK = {1: dict(sizes=[2000, 10000], map_max=2000, unique=10000, steps=3),
         2: dict(images=64, steps=6, raw_steps=2, rounds=1, repeats=5, worker_steps=6, worker_rounds=1),
         3: dict(n=20_000, batches=20),
         4: dict(n=20_000, dim=128, queries=200, single=50, real_n=1000, real_q=100, real_ivf=False),
         5: dict(seconds=4, max_requests=200, rounds=2, sentences=200), 6: dict(repeats=2),
         7: dict(n=192, rounds=1), 9: dict(gemm=1024, sentences=64, repeats=3)}
FULL = {1: dict(sizes=[10_000, 100_000, 1_000_000], map_max=100_000, unique=100_000, steps=20),
        2: dict(images=128, steps=40, raw_steps=5, rounds=3, repeats=20, worker_steps=30, worker_rounds=3),
        3: dict(n=300_000, batches=100), 4: dict(n=100_000, dim=512, queries=1000, single=200, real_n=5000,
                                                 real_q=500, real_ivf=True),
        5: dict(seconds=12, max_requests=1500, rounds=3, sentences=400), 6: dict(repeats=5),
        7: dict(n=2048, rounds=3), 9: dict(gemm=2048, sentences=256, repeats=5)}
NAMES = {1: "train memory", 2: "trainer step", 3: "text anchors", 4: "retrieval", 5: "HTTP service", 6: "CLI start-up",
         7: "text batching", 8: "GGUF load", 9: "bf16 vs fp32"}


# --- rows ------------------------------------------------------------------------------------------------------
def row(name: str, value: float, baseline: float, unit: str = "", goal: tuple | None = None, note: str = "") -> dict:
    """One "A / B" result; `goal` = ("ratio" | "value", op, threshold) decides `met` (None: informational)."""
    ratio = value / baseline if baseline else float("nan")
    met = None
    if goal is not None:
        on, op, lim = goal
        x = ratio if on == "ratio" else value
        met = bool({"<=": x <= lim, "<": x < lim, ">=": x >= lim, ">": x > lim}[op])
    return {"row": name, "value": value, "baseline": baseline, "unit": unit, "ratio": ratio,
            "goal": f"{goal[0]} {goal[1]} {goal[2]:g}" if goal else "", "met": met, "note": note}


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median wall time of each named call over `rounds` interleaved rounds (load drift hits all alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(name: str):
    """A sibling benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def child_json(cmd: list[str], out: Path, timeout: float = 3600) -> dict:
    """Run a benchmark script as a child process (its own RSS) and read the JSON it writes."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    print(proc.stdout[-4000:], proc.stderr[-2000:] if proc.returncode else "", flush=True)
    if proc.returncode and not out.is_file():
        raise RuntimeError(f"{Path(cmd[1]).name} failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(out.read_text())


# --- parts -----------------------------------------------------------------------------------------------------
def part_memory(c: dict, work: Path, assets: Path) -> list[dict]:
    res = bench("train_memory").main(["--sizes", *map(str, c["sizes"]), "--map-max", str(c["map_max"]),
                                      "--unique", str(c["unique"]), "--steps", str(c["steps"]),
                                      "--assets", str(assets), "--work", str(work / "train-memory")])
    small, big = min(c["sizes"]), max(c["sizes"])
    s, b = res[(small, "stream")], res[(big, "stream")]
    rows = [row(f"stream peak RSS at {big:,} / at {small:,}", b["peak_rss_mb"], s["peak_rss_mb"], "MB",
                ("ratio", "<=", 1.5)),
            row(f"stream first step at {big:,} / at {small:,}", b["first_step_s"], s["first_step_s"], "s",
                ("value", "<", 30), note="goal on the value: time to first step at the largest size")]
    n = max((n for n, m in res if m == "map"), default=None)
    if n is not None:
        m, s = res[(n, "map")], res[(n, "stream")]
        rows += [row(f"map / stream peak RSS at {n:,}", m["peak_rss_mb"], s["peak_rss_mb"], "MB"),
                 row(f"map / stream first step at {n:,}", m["first_step_s"], s["first_step_s"], "s")]
    return rows


def part_trainer(c: dict, work: Path, assets: Path) -> list[dict]:
    out = work / "train.json"
    r = child_json([sys.executable, str(HERE / "train.py"), "--assets", str(assets), "--images", str(c["images"]),
                    "--steps", str(c["steps"]), "--raw-steps", str(c["raw_steps"]), "--rounds", str(c["rounds"]),
                    "--repeats", str(c["repeats"]), "--device", "cpu", "--json", str(out)], out)
    rows = [row("trainer step (map) / projector pure compute", r["map_over_pure"], 1.0, "x", ("ratio", "<=", 1.2),
                note=f"median of adjacent pairs; medians: map {r['map_ms']:.1f} ms, pure {r['pure_ms']:.1f} ms"),
            row("trainer step (stream) / projector pure compute", r["stream_over_pure"], 1.0, "x",
                ("ratio", "<=", 1.2), note=f"stream {r['stream_ms']:.1f} ms"),
            row("frozen encoder every step / cached features (map)", r["raw_ms"], r["map_ms"], "ms/step",
                note="issue: 52-56x (goal met there)")]
    # num_workers on the map path, interleaved rounds of 0 / 1 / 2 workers in this process
    import torch

    tb = bench("train")
    root = work / "workers"
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = tb._frames(assets / "video", root / "images", c["images"])
    feats, _ = tb._extract(images, root / "features", assets, 32)
    device, times = torch.device("cpu"), {w: [] for w in (0, 1, 2)}
    for _ in range(c["worker_rounds"]):
        for w in times:
            ns = argparse.Namespace(batch=32, hidden=256, workers=w)
            (root / f"w{w}").mkdir(exist_ok=True)
            recipe = tb._recipe({"kind": "features", "path": str(feats), "stream": "map"}, ns, root / f"w{w}",
                                assets, c["worker_steps"] + 2)
            times[w] += tb._train(recipe, root / f"run-w{w}", device)[0]
    t = {w: statistics.median(v) * 1e3 for w, v in times.items()}
    for w in (1, 2):
        rows.append(row(f"map step, num_workers 0 / {w} (>1: workers help)", t[0], t[w], "ms/step",
                        note="the recipe default is num_workers 0"))
    return rows


def part_text_cache(c: dict, work: Path, assets: Path) -> list[dict]:
    import random

    import torch

    from anyalign.align.text_cache import TextEmbeddingTable
    from anyalign.encoders.spec import EncoderSpec

    lb, tb = bench("load"), bench("train")
    rng = random.Random(0)
    words = [f"{s} {a} {o}" for s in lb.SUBJECTS for a in lb.ACTIONS for o in lb.OBJECTS]

    def caption(i: int) -> str:  # distinct captions of mixed length
        return f"{words[i % len(words)]}{', seen from afar' * (i % 3)}, take {i // len(words)}"

    enc = EncoderSpec("text", pretrained=str(assets / "text" / "all-MiniLM-L6-v2")).build(frozen=True)
    dim = enc.pooled_dim

    def filler(texts: list[str]) -> torch.Tensor:  # lookup cost does not depend on the stored values
        return torch.randn(len(texts), dim)

    big = TextEmbeddingTable(work / "table-big", filler)
    t0 = time.perf_counter()
    big.add(caption(i) for i in range(c["n"]))
    fill_s = time.perf_counter() - t0
    small = TextEmbeddingTable(work / "table-small", filler)
    small.add(caption(i) for i in range(1000))
    pure = tb.PureCompute(argparse.Namespace(batch=32, hidden=256), torch.device("cpu"), 4)
    batches_big = [[caption(rng.randrange(c["n"])) for _ in range(32)] for _ in range(c["batches"])]
    batches_small = [[caption(rng.randrange(1000)) for _ in range(32)] for _ in range(c["batches"])]
    it = iter(range(10 ** 9))

    def encode() -> None:  # the old cache-miss path: the frozen MiniLM on the batch's captions
        with torch.no_grad():
            torch.nn.functional.normalize(enc(batches_big[next(it) % len(batches_big)]).pooled.float(), dim=-1)

    jb, js = iter(range(10 ** 9)), iter(range(10 ** 9))
    # each lookup right after a projector step, its place in training: the first call after a step finds cold
    # caches (~0.2 ms more here), so timing only one size there would charge that to the table's size
    t = interleaved({"pure": pure.timed_step, "big": lambda: big.get(batches_big[next(jb) % c["batches"]]),
                     "pure_": pure.timed_step, "small": lambda: small.get(batches_small[next(js) % c["batches"]]),
                     "encode": encode}, c["batches"])
    ms = {k: v * 1e3 for k, v in t.items()}
    n = f"{c['n']:,}"
    note = (f"each timed right after a projector step; table filled in {fill_s:.1f} s (values random: a lookup's "
            f"cost does not depend on them)")
    return [row(f"step with MiniLM on the batch's captions / step with the table ({n} captions)",
                ms["pure"] + ms["encode"], ms["pure"] + ms["big"], "ms", note="issue: 7.7x slower steps on misses"),
            row(f"table lookup (32 captions) at {n} / at 1,000 rows", ms["big"], ms["small"], "ms",
                ("ratio", "<=", 1.5), note=note),
            row(f"(pure compute + table lookup at {n}) / pure compute", ms["pure"] + ms["big"], ms["pure"], "ms",
                ("ratio", "<=", 1.1), note="the text cost's share of a step")]


def part_retrieval(c: dict, work: Path, assets: Path) -> list[dict]:
    import faiss
    import numpy as np

    from anyalign.retrieval.autoindex import num_lists

    rb = bench("retrieval")
    n, dim, k = c["n"], c["dim"], 10
    emb = work / "synthetic"
    rb.write_shards(emb, rb.mixture(n, dim, max(n // 25, 1), 1.2, seed=0), dim)
    q = np.concatenate(list(rb.mixture(c["queries"], dim, max(n // 25, 1), 1.2, seed=1)))
    truth = rb.exact_truth(emb, q, k)
    faiss.omp_set_num_threads(1)  # searches per core, as benchmarks/retrieval.py (builds run in children)
    rows = []

    def add(label: str, b: dict, m: dict) -> None:
        reported = b["tuning"].get("recall")
        sets = [(", ".join(f"{a}={v}" for a, v in b["params"].items()) or "exact", m["tuned"])]
        if "nprobe1" in m:
            sets.append(("nprobe=1", m["nprobe1"]))
        for setting, t in sets:
            for suffix, mode in (("", "batch"), ("1", "single")):
                if "faiss" + suffix not in t:
                    continue
                f = t["faiss" + suffix]
                note = (f"hit lists made {t['retriever' + suffix] / f:.2f}x, every hit's metadata dict read "
                        f"{t['metadata' + suffix] / f:.2f}x")
                rows.append(row(f"{label} {setting}: Retriever (metadata columns read) / faiss QPS, {mode}",
                                t["columns" + suffix], f, "QPS", ("ratio", ">=", 0.8), note))
        if reported is not None:
            rows.append(row(f"{label}: held-out recall@10 / build-reported recall", m["recall"], reported, "",
                            ("value", ">=", 0.95), "goal: the target recall on fresh queries"))

    for kind, factory in (("Flat", "Flat"), ("IVF", f"IVF{num_lists(n)},Flat"), ("HNSW", "HNSW32,Flat")):
        b = rb.build(emb, work / f"index-{kind}", factory, "4G", 0.95, k)
        add(f"{kind} {n:,}x{dim}", b, rb.measure(work / f"index-{kind}", q, truth, k, c["single"]))
    # real MiniLM vectors of real sentences, held-out sentences as queries (as retrieval.py's real run)
    sents = rb.sentences(c["real_n"] + c["real_q"])
    corpus, held = sents[: len(sents) - c["real_q"]], sents[len(sents) - c["real_q"]:]
    model = assets / "text" / "all-MiniLM-L6-v2"
    for name, texts in (("corpus", corpus), ("queries", held)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in texts))
        subprocess.run([sys.executable, "-m", "anyalign.cli.main", "embed", str(work / f"{name}.jsonl"), "--encoder",
                        "text", "--pretrained", str(model), "-o", str(work / f"real-{name}"), "--batch-size", "128",
                        "--overwrite"], check=True, capture_output=True)
    qr = np.concatenate([np.ascontiguousarray(a) for a in rb.shard_arrays(work / "real-queries")]).astype(np.float32)
    faiss.normalize_L2(qr)
    truth = rb.exact_truth(work / "real-corpus", qr, k)
    for factory in ("auto", f"IVF{num_lists(len(corpus))},Flat")[: 2 if c["real_ivf"] else 1]:
        out = work / f"real-{factory.replace(',', '_')}"
        b = rb.build(work / "real-corpus", out, factory, "4G", 0.95, k)
        add(f"real MiniLM {len(corpus):,} {factory} ({b['factory']})" if factory == "auto" else
            f"real MiniLM {len(corpus):,} {factory}", b, rb.measure(out, qr, truth, k, c["single"]))
    return rows


def part_service(c: dict, work: Path, assets: Path) -> list[dict]:
    out = work / "load.json"
    r = child_json([sys.executable, str(HERE / "load.py"), "--seconds", str(c["seconds"]), "--max-requests",
                    str(c["max_requests"]), "--clients", "1,16", "--rounds", str(c["rounds"]), "--sentences",
                    str(c["sentences"]), "--kinds", "text", "--json", str(out)], out)
    res = {(x["mode"], x["clients"]): x for x in r["results"] if x["kind"] == "text"}
    note = f"errors {r['errors']}, identical results {r['identical']}"
    b1, o1, b16, o16 = res[("batched", 1)], res[("one-by-one", 1)], res[("batched", 16)], res[("one-by-one", 16)]
    return [row("1 client: batched / one-by-one QPS", b1["qps"], o1["qps"], "QPS", ("ratio", ">=", 0.9), note),
            row("16 clients: batched / one-by-one QPS", b16["qps"], o16["qps"], "QPS", ("ratio", ">", 1.0),
                f"p99 {b16['p99']:.0f} vs {o16['p99']:.0f} ms; issue: 51 QPS, p99 429 ms"),
            row("batched: 16 clients / 1 client QPS", b16["qps"], b1["qps"], "QPS", ("ratio", ">", 1.0),
                "throughput grows with clients; issue: 78 -> 51 QPS")]


IMPORTS = """import json, sys
from anyalign.cli.main import main
try:
    main(json.loads(sys.argv[1]))
except SystemExit:
    pass
print("IMPORTED=" + json.dumps([m for m in ("torch", "transformers", "faiss") if m in sys.modules]))
"""


def part_cli(c: dict, work: Path, assets: Path) -> list[dict]:
    import numpy as np

    from anyalign.retrieval import as_embedder, build_index
    from anyalign.retrieval.embed import EmbeddingWriter

    spec = {"encoder": "text", "pretrained": str(assets / "text" / "all-MiniLM-L6-v2")}
    emb = as_embedder(spec)
    texts = bench("load").sentences(200)
    vecs = emb.embed(texts)
    (work / "emb").mkdir(parents=True, exist_ok=True)
    writer = EmbeddingWriter(work / "emb", emb.dim)
    writer.add(vecs, [{"source": f"s.txt:{i}", "modality": "text", "caption": s} for i, s in enumerate(texts)])
    writer.close(modality="text", embedders={"text": spec})
    build_index(work / "emb", work / "idx", factory="Flat", embedders={"text": spec})
    np.save(work / "q.npy", vecs[0])
    exe = Path(sys.executable).with_name("anyalign")
    cli = [str(exe)] if exe.is_file() else [sys.executable, "-m", "anyalign.cli.main"]
    search = ["search", str(work / "idx"), "-k", "5"]
    cmds = {"pass": [sys.executable, "-c", "pass"], "torch": [sys.executable, "-c", "import torch"],
            "help": [*cli, "--help"], "vector": [*cli, *search, "--vector", str(work / "q.npy")],
            "text": [*cli, *search, "--text", "a dog barking at the door"]}

    def run(cmd: list[str]) -> None:
        subprocess.run(cmd, check=True, capture_output=True, cwd=work)

    t = interleaved({k: (lambda cmd=cmd: run(cmd)) for k, cmd in cmds.items()}, c["repeats"])
    imported = {}
    for k, args in (("help", ["--help"]), ("vector", search[:] + ["--vector", str(work / "q.npy")]),
                    ("text", search[:] + ["--text", "a dog"])):
        out = subprocess.run([sys.executable, "-c", IMPORTS, json.dumps(args)], capture_output=True, text=True,
                             cwd=work).stdout
        line = [x for x in out.splitlines() if x.startswith("IMPORTED=")]
        imported[k] = ", ".join(json.loads(line[-1][9:])) if line else "?"
    note = "imports: {}"
    return [row("anyalign --help / python -c pass", t["help"], t["pass"], "s", note=note.format(imported["help"])),
            row("anyalign --help / python -c 'import torch'", t["help"], t["torch"], "s", ("ratio", "<", 1.0),
                "issue: 1.9 s; --help needs no torch"),
            row("anyalign search --vector / python -c 'import torch'", t["vector"], t["torch"], "s",
                ("ratio", "<", 1.0), note.format(imported["vector"]) + "; a vector query needs no torch"),
            row("anyalign search --text / python -c 'import torch'", t["text"], t["torch"], "s",
                note=note.format(imported["text"]) + "; issue: 6.4 s (MiniLM must load)")]


def part_text_batching(c: dict, work: Path, assets: Path) -> list[dict]:
    import numpy as np
    import torch

    from anyalign.embedder import Embedder

    texts = bench("retrieval").sentences(c["n"])
    emb = Embedder.from_encoder({"name": "text", "pretrained": str(assets / "text" / "all-MiniLM-L6-v2")})
    enc, bs = emb.encoder, 64
    plain_collate = enc.collate
    tokens = {"project": 0}

    def counting(items):  # the project path's padded tokens (input_ids of every batch it runs)
        batch = plain_collate(items)
        tokens["project"] += int(batch["input_ids"].numel())
        return batch

    enc.collate = counting

    @torch.no_grad()
    def batched(order: list[int], key: str) -> np.ndarray:
        out, tokens[key] = np.zeros((len(texts), emb.dim), np.float32), 0
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            batch = plain_collate([texts[j] for j in idx])
            tokens[key] += int(batch["input_ids"].numel())
            out[idx] = torch.nn.functional.normalize(enc.run(batch).pooled.float(), dim=-1).numpy()
        return out

    ordered = list(range(len(texts)))
    by_len = sorted(ordered, key=lambda j: len(texts[j]))  # character length: the cheap proxy text_cache.py uses
    got = {}

    def project() -> None:
        tokens["project"] = 0
        got["project"] = emb.embed(texts, batch_size=bs)

    def input_order() -> None:
        got["input"] = batched(ordered, "input")

    def length_sorted() -> None:
        got["sorted"] = batched(by_len, "sorted")

    t = interleaved({"project": project, "input": input_order, "sorted": length_sorted}, c["rounds"])
    same = float(np.abs(got["project"] - got["sorted"]).max())
    best_tok, best_wall = tokens["input"] / tokens["sorted"], t["input"] / t["sorted"]
    note = f"{len(texts)} real sentences, batch {bs}; max |project - sorted| {same:.1e}"
    return [row("padded tokens: input order / Embedder.embed", tokens["input"], tokens["project"], "tokens",
                ("ratio", ">=", round(0.9 * best_tok, 2)), note + "; goal: 90% of the length-sorted gain"),
            row("wall: input order / Embedder.embed", t["input"], t["project"], "s",
                ("ratio", ">=", round(0.9 * best_wall, 2)), "goal: 90% of the length-sorted gain"),
            row("padded tokens: input order / length-sorted (reference)", tokens["input"], tokens["sorted"],
                "tokens", note="issue: 2.44x"),
            row("wall: input order / length-sorted (reference)", t["input"], t["sorted"], "s",
                note="issue: 1.70x faster")]


LLM_CHILD = """import json, sys, time
t0 = time.perf_counter()
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama import modeling_llama  # SmolLM2's class: imported before the clock starts
from anyalign.llm.bundle import load_llm
t1 = time.perf_counter()
load_llm(sys.argv[1], gguf_file=sys.argv[2])
print(json.dumps({"import_s": t1 - t0, "load_s": time.perf_counter() - t1}))
"""


def part_gguf(c: dict, work: Path, assets: Path) -> list[dict]:
    ggufs = sorted((assets / "llm" / "SmolLM2-135M-Instruct").glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no *.gguf in {assets / 'llm' / 'SmolLM2-135M-Instruct'}")
    env = {**os.environ, "ANYALIGN_CACHE": str(work / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    loads, walls = [], []
    for _ in range(2):  # first: parse GGUF + convert into the empty cache; second: from the cache
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", LLM_CHILD, str(ggufs[0].parent), ggufs[0].name], env=env,
                           capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - t0)
        loads.append(json.loads(p.stdout.strip().splitlines()[-1]))
    cached = work / "empty-cache" / "llm-gguf"
    size = sum(f.stat().st_size for f in cached.rglob("*") if f.is_file()) / 2 ** 20
    return [row(f"first load ({ggufs[0].name}, converts) / load from the cache", loads[0]["load_s"],
                loads[1]["load_s"], "s", ("ratio", ">=", 10),
                f"issue: 19.3 s vs 0.24 s; cache {size:.0f} MB; imports ({loads[1]['import_s']:.1f} s) not counted"),
            row("whole process (imports included): first / cached", walls[0], walls[1], "s",
                note="what `anyalign chat` start-up sees")]


def part_bf16(c: dict, work: Path, assets: Path) -> list[dict]:
    import torch

    from anyalign.encoders.autocast import cpu_flags, probe_cpu_bf16
    from anyalign.encoders.spec import EncoderSpec

    flags = sorted(f for f in cpu_flags() if f in ("avx512_bf16", "amx_bf16", "avx512f"))
    n = c["gemm"]
    a, b = torch.randn(n, n), torch.randn(n, n)

    def gemm(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            a @ b

    gemm(False), gemm(True)
    tg = interleaved({"fp32": lambda: gemm(False), "bf16": lambda: gemm(True)}, 2 * c["repeats"])
    enc = EncoderSpec("text", pretrained=str(assets / "text" / "all-MiniLM-L6-v2"), autocast="auto").build()
    picked = enc.autocast_dtype
    texts = bench("retrieval").sentences(c["sentences"])

    def encode(dtype) -> None:  # noqa: ANN001
        enc.autocast_dtype = dtype
        for i in range(0, len(texts), 64):
            enc(texts[i:i + 64])

    encode(None), encode(torch.bfloat16)
    te = interleaved({"fp32": lambda: encode(None), "bf16": lambda: encode(torch.bfloat16),
                      "auto": lambda: encode(picked)}, c["repeats"])
    chosen = "fp32" if picked is None else str(picked).replace("torch.", "")
    note = (f"CPU flags: {', '.join(flags) or 'none'}; auto picks {chosen}; "
            f"probe {probe_cpu_bf16():.2f}x; {torch.get_num_threads()} threads")
    return [row(f"GEMM {n}: fp32 / bf16 autocast time (>1: bf16 faster)", tg["fp32"], tg["bf16"], "s", note=note),
            row(f"MiniLM, {len(texts)} sentences: fp32 / bf16 autocast time", te["fp32"], te["bf16"], "s",
                note="issue: 0.27x on a Xeon without bf16, 3.3x on an EPYC with avx512_bf16"),
            row("MiniLM: fp32 / `autocast: auto` time (>= 1: auto no slower)", te["fp32"], te["auto"], "s",
                ("ratio", ">=", 0.95), "5% allowed for timing noise")]


PARTS = {1: part_memory, 2: part_trainer, 3: part_text_cache, 4: part_retrieval, 5: part_service, 6: part_cli,
         7: part_text_batching, 8: part_gguf, 9: part_bf16}


# --- driver ----------------------------------------------------------------------------------------------------
def run_part(n: int, quick: bool, work: Path, assets: Path) -> dict:
    """Run part `n` in a fresh child process; its rows plus the load before and after."""
    out, log = work / f"part{n}.json", work / f"part{n}.log"
    if n != 1:  # a kept --work folder: start clean (part 1 reuses its feature shards on purpose)
        shutil.rmtree(work / f"part{n}", ignore_errors=True)
    out.unlink(missing_ok=True)
    (work / f"part{n}").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ANYALIGN_CACHE": str(work / f"cache{n}"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--child", str(n), str(work / f"part{n}"), str(out), "--assets", str(assets)]
    load0, t0 = os.getloadavg(), time.perf_counter()
    cmd += ["--quick"] if quick else []
    with log.open("w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall, load1 = time.perf_counter() - t0, os.getloadavg()
    if rc or not out.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        rows = [{"row": "FAILED", "value": None, "baseline": None, "unit": "", "ratio": None, "goal": "",
                 "met": False, "note": f"exit {rc}: {tail[0][:200]} (log {log})"}]
    else:
        rows = json.loads(out.read_text())
    return {"part": n, "name": NAMES[n], "wall_s": wall, "load_before": load0, "load_after": load1, "rows": rows}


def fmt(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def table(parts: list[dict]) -> str:
    lines = [f"{'part':<16}{'A / B':<70}{'value':>10}{'baseline':>10}{'ratio':>8}  {'goal':<14}{'met':<5}load"]
    for p in parts:
        load = f"{p['load_before'][0]:.1f}->{p['load_after'][0]:.1f}"
        label = f"{p['part']} {p['name']}"
        for i, r in enumerate(p["rows"]):
            met = {True: "yes", False: "NO", None: "-"}[r["met"]]
            lines.append(f"{label if i == 0 else '':<16}{r['row'][:69]:<70}"
                         f"{fmt(r['value']):>10}{fmt(r['baseline']):>10}{fmt(r['ratio']):>8}  "
                         f"{r['goal']:<14}{met:<5}{load if i == 0 else ''}")
            if r["note"]:
                lines.append(f"{'':<18}{r['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a few minutes): shows every part works")
    ap.add_argument("--parts", default=",".join(map(str, PARTS)), help="comma-separated subset of 1-9")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--work", default=None, help="keep data here (part 1's shards are reused); default: temporary")
    ap.add_argument("--assets", default=os.environ.get("ANYALIGN_ASSETS", ""))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    assets = Path(args.assets).expanduser()
    if args.child:
        n, work, out = int(args.child[0]), Path(args.child[1]), Path(args.child[2])
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        rows = PARTS[n]((QUICK if args.quick else FULL).get(n, {}), work, assets)
        out.write_text(json.dumps(rows, indent=1))
        return {}
    if not (assets / "text" / "all-MiniLM-L6-v2").is_dir():
        raise SystemExit("set ANYALIGN_ASSETS (or --assets) to the folder holding text/all-MiniLM-L6-v2")
    parts = [int(x) for x in args.parts.split(",") if x.strip()]
    if bad := [n for n in parts if n not in PARTS]:
        raise SystemExit(f"--parts: unknown part(s) {bad}; expected numbers 1-9")
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="anyalign-scale-")
    work = Path(args.work or tmp.name).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    started, t_all, results = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.perf_counter(), []
    print(f"{'quick' if args.quick else 'full'} run, {os.cpu_count()} cores, load {os.getloadavg()}", flush=True)
    for n in parts:
        print(f"part {n} ({NAMES[n]}) ...", end=" ", flush=True)
        results.append(run_part(n, args.quick, work, assets))
        print(f"{results[-1]['wall_s']:.0f} s", flush=True)
    report = {"mode": "quick" if args.quick else "full", "started": started, "cores": os.cpu_count(),
              "wall_s": time.perf_counter() - t_all, "load_end": os.getloadavg(), "parts": results}
    print("\n" + table(results))
    print(f"\ntotal {report['wall_s']:.0f} s; load at the end {report['load_end']}")
    if args.json:
        from anyalign.io import write_json

        write_json(args.json, report)
    if tmp is not None:
        tmp.cleanup()
    return report


if __name__ == "__main__":
    main()
