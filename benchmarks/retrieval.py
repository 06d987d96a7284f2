"""Retrieval at scale: build time, peak memory, held-out recall@10 vs QPS for Flat, IVF-Flat, IVF-PQ and HNSW, the
Retriever's search (metadata included) against raw faiss on the same index, and one run on real MiniLM embeddings.

    python benchmarks/retrieval.py [--n 1000000] [--dim 512] [--kinds flat,ivf,ivfpq,hnsw] [--real-n 20000]

Synthetic data: a Gaussian mixture (`--centres` standard-normal centres, noise std `--noise` per dimension,
L2-normalised), written as `anyalign embed`-style shards and indexed from disk (the build streams them). Queries
are fresh draws from the mixture, never in the corpus ("held-out"): recall@10 is measured on them against exact
search, which is also the QPS baseline (`Flat`). Each build runs in a child process so that its peak RSS is its
own. IVF-Flat has the auto choice's list count; IVF-PQ is the auto choice under a memory budget of 1/8 of the raw
vectors (PQ codes), with its normalised vectors kept on disk as float16 (memory-mapped, outside the budget) to
re-rank `k * refine` candidates exactly: its "faiss" numbers are faiss + that re-ranking at the tuned refine, and a
`refine=0` row gives the same index and nprobe without it. `--kinds ...,ivfpq-noraw` also builds the IVF-PQ
without raw vectors (build time and peak RSS without writing them).
Real data: sentences from text on this machine (man pages, Python docs topics, licence texts) embedded with
$ANYALIGN_ASSETS/text/all-MiniLM-L6-v2 through `anyalign embed`; held-out sentences are the queries, and the
build's reported (held-out) recall is compared with the recall those fresh queries get.
Ratios are within one process on one machine; give `uptime` with the numbers.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

KINDS = ("flat", "ivf", "ivfpq", "hnsw", "ivfpq-noraw")  # ivfpq-noraw: the same IVF-PQ kept without raw vectors
DEFAULT_KINDS = KINDS[:4]


# --- data ------------------------------------------------------------------------------------------------------
def mixture(n: int, dim: int, centres: int, noise: float, seed: int, chunk: int = 100_000):
    """Chunks `[<=chunk, dim]` float32, L2-normalised (the corpus is never held whole)."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(12345).standard_normal((max(centres, 1), dim), dtype=np.float32)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        x = noise * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        if centres > 0:
            x += c[rng.integers(0, centres, hi - lo)]
        faiss.normalize_L2(x)
        yield x


def write_shards(folder: Path, chunks, dim: int, metadata: list[dict] | None = None) -> int:
    """Write `anyalign embed`-style shards (+ a metadata line per row); returns the row count."""
    folder.mkdir(parents=True, exist_ok=True)
    shards, n = [], 0
    for i, x in enumerate(chunks):
        np.save(folder / f"embeddings-{i:05d}.npy", x)
        with (folder / f"metadata-{i:05d}.jsonl").open("w") as f:
            for j in range(n, n + len(x)):
                row = metadata[j] if metadata else {"source": f"/corpus/item{j:08d}.jpg", "caption": f"item {j}"}
                f.write(json.dumps(row) + "\n")
        shards.append({"vectors": f"embeddings-{i:05d}.npy", "metadata": f"metadata-{i:05d}.jsonl",
                       "count": len(x)})
        n += len(x)
    (folder / "embeddings.json").write_text(json.dumps({"dim": dim, "count": n, "shards": shards}))
    return n


def shard_arrays(folder: Path) -> list[np.ndarray]:
    manifest = json.loads((folder / "embeddings.json").read_text())
    return [np.load(folder / s["vectors"], mmap_mode="r") for s in manifest["shards"]]


def exact_truth(folder: Path, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids over the shards, one shard in memory at a time."""
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    off = 0
    for x in shard_arrays(folder):
        d, i = faiss.knn(q, np.ascontiguousarray(x), k, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(d, np.where(i >= 0, i + off, -1))
        off += len(x)
    heap.finalize()
    return heap.I


# --- measuring ---------------------------------------------------------------------------------------------------
def qps(search, queries: np.ndarray, *, one_by_one: int = 0, min_time: float = 1.0) -> float:
    """Queries per CPU second of `search(batch)`: whole batches, or `one_by_one` single-query calls (CPU time, so
    other processes on a shared machine slow it less than wall time would)."""
    search(queries[:4])  # warm-up
    done, t0 = 0, time.process_time()
    while True:
        if one_by_one:
            for i in range(one_by_one):
                search(queries[i: i + 1])
            done += one_by_one
        else:
            search(queries)
            done += len(queries)
        elapsed = time.process_time() - t0
        if elapsed >= min_time:
            return done / elapsed


def versus(searches: dict, queries: np.ndarray, *, one_by_one: int = 0, rounds: int = 3,
           min_time: float = 0.5) -> dict[str, float]:
    """Best QPS of each named search over `rounds` interleaved runs (drift on a shared machine hits all alike)."""
    best = dict.fromkeys(searches, 0.0)
    for _ in range(rounds):
        for name, fn in searches.items():
            best[name] = max(best[name], qps(fn, queries, one_by_one=one_by_one, min_time=min_time))
    return best


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth)]))


_MEASURES = ("columns", "retriever", "metadata")  # Retriever measures reported against raw faiss, main one first


def overhead(r, index, q: np.ndarray, k: int, single: int) -> dict[str, float]:
    """Retriever vs raw faiss on the same index at its current setting: QPS of faiss, of `search_vectors` with every
    query's hits made (`SearchResult`s; dicts built on first read), of the same with every hit's metadata dict read,
    and of `search_vectors` with every hit's source, caption and modality read as columns (no object per hit)."""

    def results(b: np.ndarray) -> list:
        return list(r.search_vectors(b, k))

    def read(b: np.ndarray) -> list:
        return [h.metadata for row in r.search_vectors(b, k) for h in row]

    def columns(b: np.ndarray) -> list:
        res = r.search_vectors(b, k)
        return [res.column(name) for name in ("source", "caption", "modality")]

    t0 = time.process_time()
    index.search(q[:20], k)
    per_query = max((time.process_time() - t0) / 20, 1e-6)
    batch = q[: int(np.clip(0.5 / per_query, 20, len(q)))]  # a slow (exact) index gets a smaller batch
    fns = {"faiss": lambda b: index.search(b, k), "retriever": results, "metadata": read, "columns": columns}
    out = {f"{n}": v for n, v in versus(fns, batch).items()}
    if single:
        n1 = int(np.clip(0.2 / per_query, 5, single))
        out.update({f"{n}1": v for n, v in versus(fns, q, one_by_one=n1).items()})
    return out


def measure(out: Path, q: np.ndarray, truth: np.ndarray, k: int, single: int) -> dict:
    """Held-out recall and QPS at the tuned setting, raw faiss vs Retriever (also at nprobe 1 for IVF), plus a
    recall/QPS sweep. faiss runs on one thread, so QPS is per core and the ratios compare like with like."""
    from anyalign.retrieval import Retriever
    from anyalign.retrieval.tuning import params_for, set_params

    r = Retriever(out)
    t0 = time.perf_counter()
    in_memory = r.load_metadata()
    load_s = time.perf_counter() - t0
    part = r.parts[0]
    tuned = dict(part.config.search_params)
    plain = part.index
    # a compressed index with raw vectors on disk: "faiss" is faiss + the exact re-ranking at the tuned factor
    index = _Refined(plain, part.raw, tuned["refine"]) if part.raw is not None and tuned.get("refine", 1) > 1 \
        else plain
    _, found = index.search(q, k)
    res = {"recall": recall_at(found, truth), "meta_in_memory": in_memory, "meta_load_s": load_s}
    res["tuned"] = overhead(r, index, q, k, single)
    name, values = sweep_values(plain)
    if index is not plain:  # the same index and nprobe without re-ranking
        _, f0 = plain.search(q, k)
        fns = {"faiss": lambda b: plain.search(b, k)}
        t = versus(fns, q)
        if single:
            t.update({f"{n}1": v for n, v in versus(fns, q, one_by_one=min(single, len(q))).items()})
        res["norefine"] = {"recall": recall_at(f0, truth), **t}
        res["raw_bytes"] = (out / part.config.raw["file"]).stat().st_size
    if name == "nprobe" and tuned.get("nprobe") != 1:  # the fastest setting: metadata costs most next to faiss
        set_params(plain, params_for(plain, name, 1))
        _, f1 = index.search(q, k)
        res["nprobe1"] = {"recall": recall_at(f1, truth), **overhead(r, index, q, k, single)}
        set_params(plain, tuned)
    curve, curve0 = [], []
    for v in values:
        set_params(plain, params_for(plain, name, v))
        _, f = index.search(q, k)
        curve.append((v, recall_at(f, truth), qps(lambda b: index.search(b, k), q, min_time=0.5)))
        if index is not plain:
            _, f = plain.search(q, k)
            curve0.append((v, recall_at(f, truth), qps(lambda b: plain.search(b, k), q, min_time=0.5)))
    set_params(plain, tuned)
    res["curve"], res["curve0"], res["knob"] = curve, curve0, name
    res["bytes"] = sum(p.stat().st_size for p in out.iterdir() if p.name.startswith("index."))
    res["meta_bytes"] = (out / "metadata.sqlite").stat().st_size
    return res


class _Refined:
    """faiss search + exact re-ranking of `k * factor` candidates (what `search_parts` does for such a part)."""

    def __init__(self, index, raw, factor: int) -> None:
        self.index, self.raw, self.factor = index, raw, factor

    def search(self, x: np.ndarray, k: int):
        from anyalign.retrieval.rawvectors import refined_search

        return refined_search(self.index, self.raw, x, k, self.factor)


def child_build(emb: str, out: str, factory: str, memory: str, target: float, k: int, raw: str = "float16",
                ef_construction: int | None = None) -> None:
    """Run one build (in its own process) and print its config and peak RSS as JSON."""
    from anyalign.retrieval import build_index

    t0 = time.perf_counter()
    cfg = build_index(emb, out, factory=factory, memory=memory, target_recall=target, k=k, raw_vectors=raw,
                      ef_construction=ef_construction)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB (Linux: KB)
    print(json.dumps({"factory": cfg.factory, "choice": cfg.choice, "params": cfg.search_params,
                      "tuning": {k_: v for k_, v in cfg.tuning.items() if k_ != "trace"}, "build_s": wall,
                      "rss_mb": rss, "ntotal": cfg.ntotal}))


def build(emb: Path, out: Path, factory: str, memory: str, target: float, k: int, raw: str = "float16",
          ef_construction: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child-build", str(emb), str(out), factory, memory, str(target), str(k), raw,
           str(ef_construction or 0)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"build {factory} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def sweep_values(index) -> tuple[str | None, list[int]]:
    from anyalign.retrieval.tuning import knob

    name, values = knob(index)
    if name == "efSearch":
        values = [16, 32, 64, 128, 256]
    elif name == "nprobe":
        values = [v for v in (1, 4, 8, 16, 32, 64, 128, 256) if v <= values[-1]]
    return name, values


# --- real sentences ------------------------------------------------------------------------------------------
_TROFF = re.compile(r"\\f[BIRP]|\\\(..|\\[-e&|^]|\\s[-+]?\d")


def sentences(limit: int, seed: int = 0) -> list[str]:
    """Distinct English sentences from text on this machine: man pages, Python's docs topics, licence texts."""
    texts: list[str] = []
    try:
        import pydoc_data.topics as topics

        texts += list(topics.topics.values())
    except ImportError:
        pass
    for p in sorted(Path("/usr/share/common-licenses").glob("*")):
        if p.is_file():
            texts.append(p.read_text(errors="ignore"))
    mans = sorted(Path("/usr/share/man/man1").glob("*.gz")) + sorted(Path("/usr/share/man/man8").glob("*.gz"))
    random.Random(seed).shuffle(mans)
    seen: dict[str, None] = {}
    split = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")

    def harvest(text: str) -> None:
        text = re.sub(r"\s+", " ", text)
        for s in split.split(text):
            s = s.strip()
            if 30 <= len(s) <= 300 and len(s.split()) >= 6 and sum(c.isalpha() for c in s) > 0.7 * len(s):
                seen.setdefault(s)

    for t in texts:
        harvest(t)
    for p in mans:
        if len(seen) >= limit:
            break
        try:
            raw = gzip.decompress(p.read_bytes()).decode("utf-8", errors="ignore")
        except (OSError, EOFError):
            continue
        lines = [_TROFF.sub("", ln) for ln in raw.splitlines() if not ln.startswith((".", "'"))]
        harvest(" ".join(lines))
    out = list(seen)
    random.Random(seed).shuffle(out)
    return out[:limit]


def real_run(args: argparse.Namespace, work: Path) -> None:
    assets = os.environ.get("ANYALIGN_ASSETS")
    model = Path(assets or "/nonexistent") / "text" / "all-MiniLM-L6-v2"
    if not model.is_dir():
        print(f"\nreal embeddings: skipped ({model} missing; set ANYALIGN_ASSETS)")
        return
    emb, qemb = work / "real-emb", work / "real-q"
    if not (emb / "embeddings.json").is_file() or not (qemb / "embeddings.json").is_file():
        sents = sentences(args.real_n + args.real_queries)
        if len(sents) < args.real_n + args.real_queries:
            print(f"real embeddings: only {len(sents)} sentences found")
        corpus, held = sents[: len(sents) - args.real_queries], sents[len(sents) - args.real_queries:]
        for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", held)):
            (work / name).write_text("".join(json.dumps({"text": s}) + "\n" for s in rows))
        t0 = time.perf_counter()
        for src, dst in (("corpus.jsonl", emb), ("queries.jsonl", qemb)):
            subprocess.run([sys.executable, "-m", "anyalign.cli.main", "embed", str(work / src), "--encoder", "text",
                            "--pretrained", str(model), "-o", str(dst), "--batch-size", "128", "--overwrite"],
                           check=True, capture_output=True)
        print(f"\nreal embeddings: embedded {len(corpus)} + {len(held)} sentences with MiniLM in "
              f"{time.perf_counter() - t0:.0f}s")
    q = np.concatenate([np.ascontiguousarray(a) for a in shard_arrays(qemb)]).astype(np.float32)
    faiss.normalize_L2(q)
    n = sum(len(a) for a in shard_arrays(emb))
    truth = exact_truth(emb, q, args.k)
    print(f"real embeddings: {n} MiniLM sentence vectors (dim {q.shape[1]}), {len(q)} held-out sentence queries")
    print(f"{'index':<22}{'build s':>9}{'reported':>10}{'held-out':>10}{'QPS':>10}{'+cols':>7}{'hits':>7}"
          f"{'+dicts':>7}")
    for factory in ("auto", "IVF256,Flat"):
        out = work / f"real-{factory.replace(',', '_')}"
        b = build(emb, out, factory, args.memory, args.target_recall, args.k)
        m = measure(out, q, truth, args.k, 0)
        print(f"{b['factory']:<22}{b['build_s']:>9.1f}{b['tuning'].get('recall', 1.0):>10.3f}{m['recall']:>10.3f}"
              f"{m['tuned']['faiss']:>10.0f}"
              + "".join(f"{m['tuned'][n] / m['tuned']['faiss']:>7.2f}" for n in _MEASURES))


# --- main --------------------------------------------------------------------------------------------------------
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-build":
        emb, out, factory, memory, target, k, raw, efc = sys.argv[2:10]
        return child_build(emb, out, factory, memory, float(target), int(k), raw, int(efc) or None)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--centres", type=int, default=4000, help="mixture components (0 = isotropic)")
    ap.add_argument("--noise", type=float, default=1.2, help="noise std around each centre (centres ~ N(0, 1))")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--ef-construction", type=int, default=None, help="HNSW build beam (default: faiss's 40)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--memory", default="4G", help="memory budget for the auto choice")
    ap.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help=f"subset of {','.join(KINDS)}")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time (latency-bound QPS)")
    ap.add_argument("--real-n", type=int, default=20_000, help="real sentences in the MiniLM corpus (0: skip)")
    ap.add_argument("--real-queries", type=int, default=1000)
    ap.add_argument("--workdir", default=None, help="keep data and indexes here (default: a temp folder)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    build_threads = faiss.omp_get_max_threads()
    from anyalign.retrieval.autoindex import choose_index, format_bytes, num_lists

    tmp = None if args.workdir else tempfile.TemporaryDirectory()
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    emb = work / f"synthetic-{args.n}x{args.dim}"
    t0 = time.perf_counter()
    if not (emb / "embeddings.json").is_file():
        write_shards(emb, mixture(args.n, args.dim, args.centres, args.noise, seed=0), args.dim)
    q = np.concatenate(list(mixture(args.queries, args.dim, args.centres, args.noise, seed=1)))
    truth = exact_truth(emb, q, args.k)
    data = "isotropic" if args.centres == 0 else f"mixture of {args.centres} centres, noise {args.noise}"
    print(f"data: {args.n:,} x {args.dim} float32 ({data}) as shards; {args.queries} held-out queries; data + exact "
          f"truth {time.perf_counter() - t0:.0f}s; faiss {faiss.__version__}, builds on {build_threads} threads; "
          f"load {os.getloadavg()[0]:.1f}")
    raw = args.n * args.dim * 4
    nlist = num_lists(args.n, args.dim)  # what the auto choice uses
    factories = {"flat": ("Flat", args.memory), "ivf": (f"IVF{nlist},Flat", args.memory),
                 "ivfpq": ("auto", str(max(raw // 8, 1 << 20))), "hnsw": ("HNSW32,Flat", args.memory),
                 "ivfpq-noraw": ("auto", str(max(raw // 8, 1 << 20)))}
    faiss.omp_set_num_threads(1)  # searches are measured per core; builds (child processes) use every thread
    print(f"IVF-PQ: auto choice under a {format_bytes(raw // 8)} budget = "
          f"{choose_index(args.n, args.dim, max(raw // 8, 1 << 20)).factory}")
    rows = {}
    for kind in [s.strip() for s in args.kinds.split(",") if s.strip()]:
        factory, memory = factories[kind]
        out = work / f"index-{kind}"
        raw_dtype = "none" if kind == "ivfpq-noraw" else "float16"
        b = build(emb, out, factory, memory, args.target_recall, args.k, raw_dtype,
                  args.ef_construction if kind == "hnsw" else None)
        m = measure(out, q, truth, args.k, args.single)
        if kind == "ivfpq-noraw":
            b["factory"] += " noraw"
        if kind == "hnsw" and args.ef_construction:
            b["factory"] += f" efC{args.ef_construction}"
        rows[kind] = (b, m)
        print(f"  {kind}: {b['factory']} built in {b['build_s']:.1f}s, peak RSS {b['rss_mb']:.0f} MB, "
              f"params {b['params']}, build-reported held-out recall {b['tuning'].get('recall')} "
              f"(reached: {b['tuning'].get('reached')}); load {os.getloadavg()[0]:.1f}")
        if "raw_bytes" in m:
            print(f"    + raw vectors on disk for re-ranking: {m['raw_bytes'] / args.n:.0f} B/vector "
                  f"({format_bytes(m['raw_bytes'])}, memory-mapped, not in the budget)")
    exact_qps = rows["flat"][1]["tuned"]["faiss"] if "flat" in rows else None
    print(f"\nper index (QPS per core: faiss on 1 thread, CPU time; batch of {args.queries} and one query at a time)")
    print(f"{'index':<24}{'build s':>8}{'RSS MB':>8}{'B/vec':>7}{'recall@' + str(args.k):>10}{'QPS':>9}"
          f"{'x exact':>8}{'QPS(1)':>8}")
    for kind, (b, m) in rows.items():
        t = m["tuned"]
        speed = f"{t['faiss'] / exact_qps:>8.1f}" if exact_qps else f"{'':>8}"
        print(f"{b['factory']:<24}{b['build_s']:>8.1f}{b['rss_mb']:>8.0f}{m['bytes'] / args.n:>7.1f}"
              f"{m['recall']:>10.3f}{t['faiss']:>9.0f}{speed}{t.get('faiss1', 0):>8.0f}")
        if "norefine" in m:  # the same index at the same nprobe, candidates not re-ranked
            t = m["norefine"]
            speed = f"{t['faiss'] / exact_qps:>8.1f}" if exact_qps else f"{'':>8}"
            print(f"{'  same, refine=0':<24}{'':>8}{'':>8}{'':>7}{t['recall']:>10.3f}{t['faiss']:>9.0f}{speed}"
                  f"{t.get('faiss1', 0):>8.0f}")
    print("\nRetriever.search_vectors / raw faiss, same index and setting (+cols: every hit's source, caption and "
          "modality read as columns; hits: every query's SearchResult list made; +dicts: every hit's metadata dict)")
    print(f"{'index':<24}{'setting':<14}{'recall':>7}{'faiss QPS':>10}{'+cols':>7}{'hits':>7}{'+dicts':>7}"
          f"{'faiss QPS(1)':>13}{'+cols':>7}{'hits':>7}{'+dicts':>7}")
    for kind, (b, m) in rows.items():
        settings = [(", ".join(f"{k_}={v}" for k_, v in b["params"].items()) or "exact", m["recall"], m["tuned"])]
        if "nprobe1" in m:
            settings.append(("nprobe=1", m["nprobe1"]["recall"], m["nprobe1"]))
        for label, rec, t in settings:
            one = (f"{t['faiss1']:>13.0f}" + "".join(f"{t[n + '1'] / t['faiss1']:>7.2f}" for n in _MEASURES)
                   if "faiss1" in t else "")
            print(f"{b['factory']:<24}{label:<14}{rec:>7.3f}{t['faiss']:>10.0f}"
                  + "".join(f"{t[n] / t['faiss']:>7.2f}" for n in _MEASURES) + one)
    for kind, (b, m) in rows.items():
        print(f"  {b['factory']}: metadata rows {'in memory' if m['meta_in_memory'] else 'in SQLite'} "
              f"(loaded in {m['meta_load_s']:.2f}s)")
    print("\nheld-out recall@10 vs QPS (batch) per knob value:")
    for kind, (b, m) in rows.items():
        if m["knob"]:
            pts = "  ".join(f"{v}: {r:.3f} @ {s:.0f}" for v, r, s in m["curve"])
            print(f"  {b['factory']} ({m['knob']}{', refine ' + str(b['params']['refine']) if m['curve0'] else ''}):"
                  f" {pts}")
            if m["curve0"]:
                pts = "  ".join(f"{v}: {r:.3f} @ {s:.0f}" for v, r, s in m["curve0"])
                print(f"  {b['factory']} ({m['knob']}, refine 0): {pts}")
    print(f"metadata db: {rows[next(iter(rows))][1]['meta_bytes'] / args.n:.1f} B/vector" if rows else "")
    if args.real_n:
        real_run(args, work)
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s; load {os.getloadavg()[0]:.1f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
