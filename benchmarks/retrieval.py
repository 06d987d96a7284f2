"""Auto-chosen FAISS index vs exact search on the same corpus: build time, memory/vector, QPS and recall@10.

    python benchmarks/retrieval.py [--n 1000000] [--dim 512] [--centres 4000] [--noise 1.2] [--memory 4G]

Data: a Gaussian mixture (`--centres` standard-normal centres, Gaussian noise of std `--noise` per dimension,
L2-normalised), the way real embeddings cluster; queries are fresh draws from the same mixture, not corpus
members. The noise sets the difficulty: at 1.2 nearly every true neighbour shares the query's component; from
about 1.5 on, neighbours come from many components and IVF must probe a large share of its lists.
`--centres 0` gives isotropic random vectors (no structure for any approximate index to exploit).
The baseline is exact inner-product search (faiss `IndexFlatIP`) over the same vectors in the same process;
recall@10 of the auto index is measured against it. Target: recall@10 >= 0.95 at >= 20x the exact QPS.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from anyalign.retrieval import ArraySource, Retriever, build_index
from anyalign.retrieval.autoindex import format_bytes


def mixture(n: int, dim: int, centres: int, noise: float, seed: int, chunk: int = 100_000) -> np.ndarray:
    """`[n, dim]` float32, L2-normalised, generated in chunks (no float64 copy of the corpus)."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(12345).standard_normal((max(centres, 1), dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        x = noise * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        if centres > 0:
            x += c[rng.integers(0, centres, hi - lo)]
        faiss.normalize_L2(x)
        out[lo:hi] = x
    return out


def qps(search, queries: np.ndarray, *, one_by_one: int = 0, min_time: float = 2.0) -> float:
    """Queries per second of `search(batch)`: whole batches, or `one_by_one` single-query calls."""
    search(queries[:4])  # warm-up
    done, t0 = 0, time.perf_counter()
    while True:
        if one_by_one:
            for i in range(one_by_one):
                search(queries[i: i + 1])
            done += one_by_one
        else:
            search(queries)
            done += len(queries)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return done / elapsed


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth)]))


def exact_baseline(x: np.ndarray, q: np.ndarray, k: int, single: int) -> tuple[float, np.ndarray, float, float, int]:
    """Build time, exact top-k ids, batch QPS, single-query QPS and size of a flat inner-product index."""
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    build = time.perf_counter() - t0
    _, truth = flat.search(q, k)
    batch = qps(lambda b: flat.search(b, k), q)
    one = qps(lambda b: flat.search(b, k), q, one_by_one=single) if single else 0.0
    return build, truth, batch, one, faiss.serialize_index(flat).nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--centres", type=int, default=4000, help="mixture components (0 = isotropic)")
    ap.add_argument("--noise", type=float, default=1.2, help="noise std around each centre (centres ~ N(0, 1))")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--memory", default="4G", help="memory budget for the auto choice")
    ap.add_argument("--factory", default="auto")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--single", type=int, default=100, help="queries timed one at a time (latency-bound QPS)")
    ap.add_argument("--workdir", default=None, help="where to write the index (default: a temp folder)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")

    t0 = time.perf_counter()
    data = "isotropic" if args.centres == 0 else f"mixture of {args.centres} centres, noise {args.noise}"
    x = mixture(args.n, args.dim, args.centres, args.noise, seed=0)
    q = mixture(args.queries, args.dim, args.centres, args.noise, seed=1)
    print(f"data: {args.n:,} x {args.dim} float32 ({data}); {args.queries} fresh queries; "
          f"generated in {time.perf_counter() - t0:.1f}s; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads, {faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0}"
          " GPUs")

    # --- baseline: exact search ------------------------------------------------------------------------
    exact_build, truth, exact_qps, exact_single, exact_bytes = exact_baseline(x, q, args.k, args.single)

    # --- the auto-chosen index, built through anyalign ---------------------------------------------------
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        out = Path(tmp) / "index"
        t0 = time.perf_counter()
        cfg = build_index(ArraySource(x), out, factory=args.factory, memory=args.memory,
                          target_recall=args.target_recall, k=args.k)
        build_s = time.perf_counter() - t0
        index_bytes = (out / "index.faiss").stat().st_size
        meta_bytes = (out / "metadata.sqlite").stat().st_size
        retriever = Retriever(out)
        index = retriever.parts[0].index
        _, found = index.search(q, args.k)
        rec = recall_at(found, truth)
        auto_qps = qps(lambda b: index.search(b, args.k), q)
        auto_single = qps(lambda b: index.search(b, args.k), q, one_by_one=args.single) if args.single else 0.0
        e2e_qps = qps(lambda b: retriever.search_vectors(b, args.k), q)  # + normalisation and metadata rows
    del x

    print(f"auto choice: {cfg.factory} ({cfg.choice}); tuned {cfg.search_params or '{}'} for recall@{args.k} >= "
          f"{args.target_recall} (build-time estimate {cfg.tuning.get('recall')})")
    print(f"{'':<28}{'exact (Flat)':>16}{'auto':>16}{'ratio':>10}")
    print(f"{'build time':<28}{exact_build:>15.1f}s{build_s:>15.1f}s{build_s / max(exact_build, 1e-9):>10.1f}")
    print(f"{'index bytes / vector':<28}{exact_bytes / args.n:>16.1f}{index_bytes / args.n:>16.1f}"
          f"{index_bytes / exact_bytes:>10.2f}")
    print(f"{'QPS (batch of ' + str(args.queries) + ')':<28}{exact_qps:>16.1f}{auto_qps:>16.1f}"
          f"{auto_qps / exact_qps:>9.1f}x")
    if args.single:
        print(f"{'QPS (one query per call)':<28}{exact_single:>16.1f}{auto_single:>16.1f}"
              f"{auto_single / exact_single:>9.1f}x")
    print(f"{'QPS with metadata (batch)':<28}{'':>16}{e2e_qps:>16.1f}{e2e_qps / exact_qps:>9.1f}x")
    print(f"{'recall@' + str(args.k) + ' vs exact':<28}{1.0:>16.3f}{rec:>16.3f}")
    print(f"metadata db: {format_bytes(meta_bytes)} ({meta_bytes / args.n:.1f} B/vector)")
    ok = rec >= 0.95 and auto_qps >= 20 * exact_qps
    print(f"target recall@10 >= 0.95 at >= 20x exact QPS: {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
