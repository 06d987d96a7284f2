"""FAISS indexes over embeddings: every index type against exact search, auto choice, save/load, sharded and
on-disk-merged search equal to unsharded, metadata, adds/deletes, bad input, evaluation metrics.

Corpora are Gaussian mixtures (clustered like real embeddings); queries are fresh draws from the same mixture.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _retrieval_helpers import clustered, exact_topk

from anyalign.retrieval import (
    ArraySource,
    Retriever,
    add_to_index,
    build_index,
    build_parts,
    choose_index,
    combine_parts,
    delete_from_index,
    evaluate_retrieval,
    exact_metrics,
    parse_memory,
    ranked_metrics,
    read_config,
)
from anyalign.retrieval.index_build import rank_range

N, D = 5000, 32


@pytest.fixture(scope="module")
def corpus() -> np.ndarray:
    return clustered(N, D, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return clustered(200, D, seed=1)


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory: pytest.TempPathFactory, corpus: np.ndarray):
    """Two .npy shards with metadata sidecars, as `anyalign embed` would write them (plus a manifest)."""
    d = tmp_path_factory.mktemp("emb")
    shards = []
    for i, (lo, hi) in enumerate([(0, 3000), (3000, N)]):
        np.save(d / f"embeddings-{i:05d}.npy", corpus[lo:hi])
        with (d / f"metadata-{i:05d}.jsonl").open("w") as f:
            for j in range(lo, hi):
                f.write(json.dumps({"source": f"/data/item{j}.png", "caption": f"item {j}", "group": j % 7}) + "\n")
        shards.append({"vectors": f"embeddings-{i:05d}.npy", "metadata": f"metadata-{i:05d}.jsonl", "count": hi - lo})
    (d / "embeddings.json").write_text(json.dumps({"dim": D, "modality": "image", "embedders": {}, "shards": shards}))
    return d


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth)]))


def _ids(retriever: Retriever, queries: np.ndarray, k: int = 10) -> np.ndarray:
    res = retriever.search_vectors(queries, k)
    return np.array([[r.id for r in row] + [-1] * (k - len(row)) for row in res])


# --- auto choice ---------------------------------------------------------------------------------------------
def test_choose_index_follows_size_dim_and_memory() -> None:
    assert choose_index(5000, 32).factory == "Flat"
    assert choose_index(50_000, 512, "4G").factory == "HNSW32,Flat"
    assert choose_index(50_000, 512, "4G", gpu=True).factory.startswith("IVF")  # no HNSW on GPU
    assert choose_index(100_000, 512, "4G").factory == "IVF1024,Flat"  # ~4 sqrt(n) lists
    assert choose_index(1_000_000, 512, "4G").factory == "IVF2048,Flat"  # fewer: k-means bounded by TRAIN_FLOPS
    assert choose_index(10_000_000, 512, "64G").factory == "IVF4096,Flat"  # but not below ~sqrt(n)
    assert choose_index(20_000_000, 8, "64G").factory == "IVF16384_HNSW32,Flat"  # cheap k-means: HNSW quantizer
    pq = choose_index(1_000_000, 512, "200M").factory
    assert pq.startswith("IVF2048,PQ") and "OPQ" not in pq
    assert choose_index(1_000_000, 100, "100M").factory.startswith("OPQ64_64,")  # no good code size divides 100
    m = int(pq.split(",PQ")[1])
    assert 1_000_000 * (m + 8) <= parse_memory("200M")  # the chosen code size fits the budget
    with pytest.raises(ValueError, match="too small"):
        choose_index(100_000_000, 512, "100M")
    with pytest.raises(ValueError, match="empty corpus"):
        choose_index(0, 512)
    assert parse_memory("1.5G") == int(1.5 * 2**30) and parse_memory("512MB") == 512 * 2**20
    with pytest.raises(ValueError, match="memory"):
        parse_memory("lots")


# --- every index type against exact search -------------------------------------------------------------------
@pytest.mark.parametrize("factory,min_recall", [
    ("Flat", 1.0),
    ("HNSW32,Flat", 0.95),
    ("IVF64,Flat", 0.95),
    ("IVF64_HNSW16,Flat", 0.95),
    ("IVF32,PQ16x4", 0.45),  # 4-bit codes: recall is capped by compression, not by probing
])
def test_index_types_against_exact(tmp_path, corpus, queries, factory, min_recall) -> None:
    cfg = build_index(ArraySource(corpus), tmp_path / "idx", factory=factory, target_recall=0.95)
    assert cfg.factory == factory and cfg.ntotal == N and cfg.dim == D
    r = Retriever(tmp_path / "idx")
    truth = exact_topk(queries, corpus, 10)
    recall = _recall(_ids(r, queries), truth)
    assert recall >= min_recall, (factory, recall, cfg.search_params)
    if min_recall >= 0.95:
        assert cfg.tuning["reached"] and cfg.tuning["recall"] >= 0.95
    # scores are cosine similarities, sorted, and equal to the exact ones for the exact neighbours found
    res = r.search(queries[0], k=10)
    scores = [h.score for h in res]
    assert scores == sorted(scores, reverse=True) and len(res) == 10
    if factory == "Flat":
        sims = corpus @ queries[0] / np.linalg.norm(queries[0])
        np.testing.assert_allclose(scores, np.sort(sims)[::-1][:10], atol=1e-5)


def test_opq_ivf_pq_against_exact(tmp_path) -> None:
    x, q = clustered(2000, 16, seed=3), clustered(100, 16, seed=4)
    build_index(ArraySource(x), tmp_path / "opq", factory="OPQ4_16,IVF16,PQ4x4")
    r = Retriever(tmp_path / "opq")
    found = _ids(r, q)
    assert _recall(found, exact_topk(q, x, 10)) >= 0.3
    # a corpus vector finds itself among its top-10 (4-bit codes quantise away fine ranking)
    assert np.mean([i in row for i, row in zip(range(50), _ids(r, x[:50]))]) >= 0.9


def test_tuning_picks_smallest_probe_reaching_target(tmp_path, corpus) -> None:
    lo = build_index(ArraySource(corpus), tmp_path / "lo", factory="IVF64,Flat", target_recall=0.5)
    hi = build_index(ArraySource(corpus), tmp_path / "hi", factory="IVF64,Flat", target_recall=0.999)
    assert lo.search_params["nprobe"] < hi.search_params["nprobe"]
    assert hi.tuning["recall"] >= 0.999 and lo.tuning["recall"] >= 0.5
    trace = hi.tuning["trace"]
    assert all(t["lower"] < 0.999 for t in trace[:-1])  # every smaller nprobe tried missed the target (95% bound)
    assert trace[-1]["lower"] >= 0.999 and hi.tuning["query_set"] == "held-out corpus sample"


def test_auto_build_from_shards_keeps_metadata(tmp_path, emb_dir, corpus) -> None:
    cfg = build_index(emb_dir, tmp_path / "idx", batch_size=1000)  # 5 add batches across the two shard files
    assert cfg.factory == "Flat" and cfg.modality == "image" and cfg.next_id == N
    r = Retriever(tmp_path / "idx")
    hit = r.search(corpus[3100], k=1)[0]
    assert hit.id == 3100 and hit.metadata["source"] == "/data/item3100.png"
    assert hit.metadata["caption"] == "item 3100" and hit.metadata["group"] == 3100 % 7
    assert hit.metadata["modality"] == "image" and hit.score == pytest.approx(1.0, abs=1e-5)


def test_save_load_roundtrip_gives_identical_results(tmp_path, corpus, queries) -> None:
    build_index(ArraySource(corpus), tmp_path / "idx", factory="IVF64,Flat")
    a = Retriever(tmp_path / "idx").search_vectors(queries[:20], 5)
    cfg = read_config(tmp_path / "idx")
    b = Retriever(tmp_path / "idx").search_vectors(queries[:20], 5)
    assert [[h.id for h in row] for row in a] == [[h.id for h in row] for row in b]
    assert cfg.search_params["nprobe"] >= 1  # tuned value recorded and re-applied on load
    # overriding the tuned knob changes what is searched
    one = Retriever(tmp_path / "idx").search_vectors(queries[:50], 10, nprobe=1)
    full = Retriever(tmp_path / "idx").search_vectors(queries[:50], 10, nprobe=64)
    truth = exact_topk(queries[:50], corpus, 10)
    r1 = _recall(np.array([[h.id for h in row] for row in one]), truth)
    r64 = _recall(np.array([[h.id for h in row] for row in full]), truth)
    assert r64 == pytest.approx(1.0) and r1 < r64


# --- sharded ---------------------------------------------------------------------------------------------------
def test_sharded_set_equals_unsharded(tmp_path, emb_dir, queries) -> None:
    build_index(emb_dir, tmp_path / "whole", factory="Flat")
    build_parts(emb_dir, tmp_path / "set", 3, factory="Flat")
    cfg = read_config(tmp_path / "set")
    assert cfg.kind == "set" and len(cfg.parts) == 3 and cfg.ntotal == N
    whole, parts = Retriever(tmp_path / "whole"), Retriever(tmp_path / "set")
    a, b = whole.search_vectors(queries, 10), parts.search_vectors(queries, 10)
    assert [[h.id for h in row] for row in a] == [[h.id for h in row] for row in b]
    np.testing.assert_allclose([[h.score for h in row] for row in a], [[h.score for h in row] for row in b],
                               atol=1e-6)
    assert b[0][0].metadata["source"].startswith("/data/item")  # metadata found in whichever part holds the id


def test_ondisk_merge_equals_unsharded_ivf(tmp_path, emb_dir, queries) -> None:
    build_index(emb_dir, tmp_path / "trained", factory="IVF64,Flat", train_only=True)
    build_index(emb_dir, tmp_path / "whole", trained=tmp_path / "trained")
    parts = []
    for rank in range(2):
        parts.append(tmp_path / f"part{rank}")
        build_index(emb_dir, parts[-1], trained=tmp_path / "trained", rank=rank, world_size=2)
    cfg = combine_parts(parts, tmp_path / "merged", ondisk=True)
    assert cfg.ondisk and cfg.ntotal == N and (tmp_path / "merged" / "index.ivfdata").is_file()
    whole, merged = Retriever(tmp_path / "whole"), Retriever(tmp_path / "merged")
    for nprobe in (1, 8):
        a = whole.search_vectors(queries, 10, nprobe=nprobe)
        b = merged.search_vectors(queries, 10, nprobe=nprobe)
        assert [[h.id for h in row] for row in a] == [[h.id for h in row] for row in b]
    assert len(merged) == N and merged.metadata([4999])[0]["caption"] == "item 4999"
    # parts trained separately cannot be merged on disk
    build_index(emb_dir, tmp_path / "other", factory="IVF64,Flat", rank=1, world_size=2, seed=5)
    with pytest.raises(ValueError, match="one trained index"):
        combine_parts([parts[0], tmp_path / "other"], tmp_path / "bad", ondisk=True)
    with pytest.raises(ValueError, match="overlapping"):
        combine_parts([parts[0], tmp_path / "whole"], tmp_path / "bad")


def test_rank_ranges_cover_all_ids() -> None:
    ranges = [rank_range(10, r, 3) for r in range(3)]
    assert ranges == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError, match="rank"):
        rank_range(10, 3, 3)


# --- updates --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["Flat", "IVF64,Flat", "HNSW32,Flat"])
def test_incremental_add_and_delete(tmp_path, corpus, factory) -> None:
    build_index(ArraySource(corpus[:4000], [{"source": f"s{i}"} for i in range(4000)]), tmp_path / "idx",
                factory=factory)
    cfg = add_to_index(tmp_path / "idx", ArraySource(corpus[4000:], [{"source": f"s{i}"} for i in range(4000, N)]))
    assert cfg.next_id == N
    r = Retriever(tmp_path / "idx")
    assert r.search(corpus[4500], k=1)[0].id == 4500 and len(r) == N
    cfg, n = delete_from_index(tmp_path / "idx", [4500, 10], sources=["s11"])
    assert n == 3 and cfg.tombstones == (factory == "HNSW32,Flat")
    r = Retriever(tmp_path / "idx")
    assert len(r) == N - 3
    for gone in (4500, 10, 11):
        hits = [h.id for h in r.search(corpus[gone], k=10)]
        assert gone not in hits and len(hits) == 10
    assert delete_from_index(tmp_path / "idx", [4500])[1] == 0  # already gone


# --- bad input -----------------------------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors(tmp_path, corpus) -> None:
    with pytest.raises(ValueError, match="empty corpus"):
        build_index(ArraySource(np.zeros((0, D), np.float32)), tmp_path / "empty")
    np.save(tmp_path / "empty.npy", np.zeros((0, D), np.float32))
    with pytest.raises(ValueError, match="empty corpus"):
        build_index(tmp_path / "empty.npy", tmp_path / "empty")
    with pytest.raises(ValueError, match="factory string 'IVFx,Nope'"):
        build_index(ArraySource(corpus), tmp_path / "bad", factory="IVFx,Nope")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))
    build_index(ArraySource(corpus), tmp_path / "idx", factory="Flat")
    r = Retriever(tmp_path / "idx")
    with pytest.raises(ValueError, match="dimension mismatch.*expects dim 32"):
        r.search(np.ones(16, np.float32))
    with pytest.raises(ValueError, match="dimension mismatch"):
        add_to_index(tmp_path / "idx", ArraySource(np.ones((3, 16), np.float32)))
    with pytest.raises(ValueError, match="no text embedder"):
        r.search("a dog")
    (tmp_path / "idx" / "index.faiss").write_bytes(b"garbage, not an index")
    with pytest.raises(ValueError, match="corrupt or unreadable faiss index"):
        Retriever(tmp_path / "idx")
    with pytest.raises(FileNotFoundError, match="not an anyalign index folder"):
        Retriever(tmp_path)
    np.save(tmp_path / "ints.npy", np.ones((4, 4), np.int32))
    with pytest.raises(ValueError, match="expected float embeddings"):
        build_index(tmp_path / "ints.npy", tmp_path / "x")


def test_failed_build_keeps_previous_index(tmp_path, corpus, monkeypatch) -> None:
    build_index(ArraySource(corpus), tmp_path / "idx", factory="Flat")
    before = (tmp_path / "idx" / "index.faiss").read_bytes()
    import anyalign.retrieval.index_build as index_mod

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(index_mod, "write_index_dir", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_index(ArraySource(corpus[:100]), tmp_path / "idx", factory="Flat")
    assert (tmp_path / "idx" / "index.faiss").read_bytes() == before
    assert read_config(tmp_path / "idx").ntotal == N
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary folders left behind
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep me")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="refusing to replace"):
        build_index(ArraySource(corpus), tmp_path / "notes")


# --- evaluation ------------------------------------------------------------------------------------------------
def test_metrics_on_hand_made_rankings() -> None:
    q = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    g = np.array([[1, 0.1], [0.2, 1], [1, -0.5], [-1, 0]], np.float32)
    # q0 -> g0 at rank 0 (AP 1); q1 -> g2 at rank 3 (AP 1/4); q2 relevant {g1, g3} at ranks 0 and 3 (AP (1 + 2/4)/2)
    out = exact_metrics(q, g, [np.array([0]), np.array([2]), np.array([1, 3])], ks=(1, 3, 4))
    assert out["recall@1"] == pytest.approx(2 / 3) and out["recall@3"] == pytest.approx(2 / 3)
    assert out["recall@4"] == pytest.approx(1.0)
    assert out["mAP"] == pytest.approx((1 + 0.25 + 0.75) / 3)
    r = ranked_metrics([[True, False], [False, True], [False, False]], [1, 2, 1], ks=(1, 2))
    assert r["recall@1"] == pytest.approx(1 / 3) and r["recall@2"] == pytest.approx(2 / 3)
    assert r["mAP@2"] == pytest.approx((1 + 0.5 / 2 + 0) / 3)


def test_evaluate_paired_sets_exact_and_index(tmp_path, corpus) -> None:
    rng = np.random.default_rng(7)
    noisy = corpus[:300] + 0.02 * rng.standard_normal((300, D)).astype(np.float32)  # "captions" of items 0..299
    np.save(tmp_path / "q.npy", noisy)
    np.save(tmp_path / "g.npy", corpus[:300])
    exact = evaluate_retrieval(tmp_path / "q.npy", tmp_path / "g.npy")
    assert exact["recall@1"] > 0.9 and exact["recall@10"] >= exact["recall@5"] >= exact["recall@1"]
    build_index(tmp_path / "g.npy", tmp_path / "idx", factory="Flat")
    via_index = evaluate_retrieval(tmp_path / "q.npy", tmp_path / "idx")
    for k in (1, 5, 10):
        assert via_index[f"recall@{k}"] == pytest.approx(exact[f"recall@{k}"])
    # random pairing scores near chance
    np.save(tmp_path / "shuffled.npy", noisy[rng.permutation(300)])
    assert evaluate_retrieval(tmp_path / "shuffled.npy", tmp_path / "g.npy")["recall@1"] < 0.1


def test_hnsw_ef_construction_is_applied_and_checked(tmp_path) -> None:
    import faiss

    from anyalign.retrieval import load_index

    x = clustered(400, 16, centres=8, seed=3)
    build_index(ArraySource(x), tmp_path / "h", factory="HNSW16,Flat", ef_construction=96, tune_queries=40)
    index, _ = load_index(tmp_path / "h")
    assert faiss.downcast_index(faiss.downcast_index(index).index).hnsw.efConstruction == 96  # IDMap2 over HNSW
    with pytest.raises(ValueError, match="ef_construction applies to HNSW indexes; 'IVF8,Flat' has no HNSW graph"):
        build_index(ArraySource(x), tmp_path / "i", factory="IVF8,Flat", ef_construction=96)
    with pytest.raises(ValueError, match="ef_construction must be an integer >= 1"):
        build_index(ArraySource(x), tmp_path / "j", factory="HNSW16,Flat", ef_construction=0)
    assert not (tmp_path / "i").exists() and not (tmp_path / "j").exists()
