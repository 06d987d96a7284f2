"""Pick a faiss index for a corpus from its size, dimension and a memory budget (the autofaiss approach).

Rules, in order (n vectors of dimension d): n < 10k: `Flat`; n < 100k and the graph fits (CPU): `HNSW32,Flat`;
the raw vectors fit: `IVF{nlist},Flat` (nlist ~ 4 sqrt(n), fewer where k-means would exceed `TRAIN_FLOPS`; an HNSW
coarse quantizer from 16k lists on); else `IVF{nlist},PQ{m}` with the largest m bytes/vector that fits and divides
d (OPQ only when none of at least half that size does: its training alone outlasted a whole 1M build). The budget
counts what the index holds in memory, not the raw vectors a compressed index keeps on disk (`rawvectors.py`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

FLAT_BELOW = 10_000
HNSW_BELOW = 100_000
HNSW_M = 32
_PQ_BYTES = (64, 48, 32, 24, 16, 12, 8, 4)
TRAIN_PER_LIST = 50  # k-means training points per IVF list (faiss warns below 39)
KMEANS_ITERATIONS = 10  # faiss's default for IVF training
TRAIN_FLOPS = 4e12  # most k-means work the auto choice plans for (~2 min at 30 GFlop/s)


@dataclass(frozen=True)
class IndexChoice:
    """A factory string with the reason it was chosen."""

    factory: str
    reason: str


def parse_memory(text: str | int | float | None) -> int | None:
    """'4G', '512M', '1.5GB', '2T' or a number of bytes -> bytes (None stays None)."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise ValueError(f"memory={text!r}: expected a size such as 4G, 512M or 1.5GB")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return f"{n:.1f}TB"


def kmeans_flops(nlist: int, d: int) -> float:
    """Multiply-adds x 2 of training `nlist` IVF centroids on `TRAIN_PER_LIST` points each."""
    return 2.0 * TRAIN_PER_LIST * nlist * nlist * d * KMEANS_ITERATIONS


def num_lists(n: int, d: int | None = None) -> int:
    """IVF list count: a power of two near 4 sqrt(n), with at least 39 training points per list; given `d`, halved
    while its k-means would exceed `TRAIN_FLOPS`, but not below the power of two nearest sqrt(n)."""
    target = 4 * math.sqrt(n)
    nlist = 2 ** max(int(round(math.log2(max(target, 1)))), 0)
    floor = 2 ** max(int(round(math.log2(max(math.sqrt(n), 1)))), 0)
    while d is not None and nlist > floor and kmeans_flops(nlist, d) > TRAIN_FLOPS:
        nlist //= 2
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return max(nlist, 1)


def _opq_out_dim(d: int, m: int) -> int:
    out = min(d, 4 * m)  # 4 dims per sub-quantizer, the usual OPQ setting
    return out - out % m


def choose_index(n: int, d: int, memory: int | str | None = "4G", *, gpu: bool = False) -> IndexChoice:
    """Choose a factory string for `n` vectors of dimension `d` within `memory` bytes (see module docstring)."""
    if n <= 0:
        raise ValueError("cannot build an index over an empty corpus (0 vectors)")
    if d <= 0:
        raise ValueError(f"invalid vector dimension {d}")
    budget = parse_memory(memory) or (4 << 30)
    raw = n * (4 * d + 8)  # vectors + 64-bit ids
    if n < FLAT_BELOW:
        return IndexChoice("Flat", f"{n} < {FLAT_BELOW} vectors: exact search")
    hnsw = raw + n * HNSW_M * 2 * 4 * 1.1  # level-0 links (2M) + upper levels
    if n < HNSW_BELOW and not gpu and hnsw <= budget:
        return IndexChoice(f"HNSW{HNSW_M},Flat", f"{n} < {HNSW_BELOW} vectors and the graph fits")
    nlist = num_lists(n, d)
    coarse = f"IVF{nlist}_HNSW32" if nlist >= 16384 and not gpu else f"IVF{nlist}"
    centroids = nlist * d * 4 * (2 if "HNSW" in coarse else 1)
    if raw + centroids <= budget:
        return IndexChoice(f"{coarse},Flat", f"raw vectors ({format_bytes(raw)}) fit in {format_bytes(budget)}")
    per_vector = (budget - centroids - 4 * d * d) / n - 8  # ids (+ an OPQ matrix)
    fits = [m for m in _PQ_BYTES if m <= per_vector and m <= d]
    why = f"raw vectors ({format_bytes(raw)}) exceed {format_bytes(budget)}: "
    for m in fits:
        if d % m == 0 and 2 * m >= fits[0]:  # a code size that divides d, at least half the largest that fits
            return IndexChoice(f"{coarse},PQ{m}", why + f"{m} bytes/vector product quantization")
    if fits:
        m = fits[0]
        return IndexChoice(f"OPQ{m}_{_opq_out_dim(d, m)},{coarse},PQ{m}",
                           why + f"{m} bytes/vector product quantization (OPQ: no code size divides dim {d})")
    need = n * (_PQ_BYTES[-1] + 8) + centroids
    raise ValueError(f"memory budget {format_bytes(budget)} is too small for {n} vectors of dim {d} "
                     f"(the most compressed index needs about {format_bytes(need)})")


def is_compressed(factory: str) -> bool:
    """True for factories whose codes are lossy (PQ, OPQ, SQ, residual/additive quantizers, LSH): these keep the
    raw vectors on disk for exact re-ranking. `SQfp16` and Flat variants are (near-)exact and do not."""
    body = re.sub(r"SQfp16|SQbf16", "", factory)
    return bool(re.search(r"PQ|SQ\d|RQ|LSQ|PRQ|PLSQ|LSH", body))


def training_size(factory: str, n: int) -> int:
    """How many vectors to train on: enough for k-means / PQ codebooks without touching the whole corpus."""
    need = 0
    m = re.search(r"IVF(\d+)", factory)
    if m:
        need = max(need, TRAIN_PER_LIST * int(m.group(1)))
    if re.search(r"PQ\d+|SQ\d|OPQ", factory):
        need = max(need, 65_536)
    return min(n, max(need, 0))


__all__ = ["IndexChoice", "choose_index", "format_bytes", "is_compressed", "kmeans_flops", "num_lists",
           "parse_memory", "training_size"]
