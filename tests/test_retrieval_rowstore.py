"""The in-memory metadata row table: searches give exactly what the SQLite path gives (user fields, deleted rows,
modality filtering, sets of parts), over-budget and writable stores read SQLite, writes invalidate a loaded
table, and the id -> row lookup handles dense, sparse and unknown ids."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from _retrieval_helpers import clustered

from anyalign.retrieval import ArraySource, Retriever, add_to_index, build_index, delete_from_index
from anyalign.retrieval.metadata import MetadataStore, RowTable
from anyalign.retrieval.shards import build_parts

D = 16


def _rows(n: int, first: int = 0) -> list[dict]:
    """Metadata with columns, user fields (nested, unicode, some rows without any) and missing captions."""
    rows = []
    for j in range(first, first + n):
        row = {"source": f"/data/ítem{j}.png", "caption": None if j % 5 == 0 else f"item {j} ✓"}
        if j % 3:
            row.update({"group": j % 7, "tags": [j % 2, "x"], "nested": {"k": j}})
        rows.append(row)
    return rows


def _same(a: list[list], b: list[list]) -> None:
    assert [[(h.id, h.score, h.metadata) for h in row] for row in a] == \
        [[(h.id, h.score, h.metadata) for h in row] for row in b]


@pytest.fixture(scope="module", params=["IVF16,Flat", "HNSW32,Flat"])
def index_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """An index of image rows plus text rows added later, with deletes (removed for IVF, tombstoned for HNSW)."""
    folder = tmp_path_factory.mktemp("rowstore") / "idx"
    x = clustered(900, D, centres=20, seed=0)
    build_index(ArraySource(x[:600], _rows(600), modality="image"), folder, factory=request.param, tune_queries=50)
    add_to_index(folder, ArraySource(x[600:], _rows(300, 600), modality="text"))
    _, n = delete_from_index(folder, [3, 77, 650], sources=["/data/ítem100.png"])
    assert n == 4
    return folder, x


def test_in_memory_search_equals_sqlite(index_dir) -> None:
    folder, x = index_dir
    mem, sql = Retriever(folder), Retriever(folder, metadata_memory=0)
    q = clustered(40, D, centres=20, seed=1)
    for k in (1, 10, 2000):  # 2000: beyond the index size, every vector
        _same(mem.search_vectors(q, k), sql.search_vectors(q, k))
    assert mem.parts[0].meta.in_memory and not sql.parts[0].meta.in_memory
    for v in q[:10]:
        _same([mem.search(v, k=5)], [sql.search(v, k=5)])
        for modality in ("image", "text"):
            hits = mem.search(v, k=8, modality=modality)
            _same([hits], [sql.search(v, k=8, modality=modality)])
            assert len(hits) == 8 and {h.metadata["modality"] for h in hits} == {modality}
    ids = [0, 3, 77, 100, 650, 899, 5000, -1]
    assert mem.metadata(ids) == sql.metadata(ids)
    got = dict(zip(ids, mem.metadata(ids)))
    assert got[5000] is None and got[-1] is None and got[0]["caption"] is None
    assert got[899] == {"id": 899, "source": "/data/ítem899.png", "caption": "item 899 ✓", "modality": "text",
                        "group": 899 % 7, "tags": [1, "x"], "nested": {"k": 899}}
    tombstoned = Retriever(folder).config.tombstones
    for gone in (3, 77, 100, 650):  # deleted rows: gone, or flagged and never returned
        assert (got[gone] is not None and got[gone]["deleted"]) if tombstoned else got[gone] is None
        assert gone not in [h.id for h in mem.search(x[gone], k=20)]


def _columns_match_hits(results, names: tuple[str, ...]) -> None:
    """Every column equals the per-hit metadata (None for padding and unset fields), query by query."""
    cols = {n: results.column(n) for n in names}
    for q, hits in enumerate(results):
        found = results.ids[q] >= 0
        assert [h.id for h in hits] == results.ids[q][found].tolist()
        for n, col in cols.items():
            assert col.shape == results.ids.shape
            assert col[q][found].tolist() == [h.metadata.get(n) for h in hits], n
            assert all(v is None for v in col[q][~found])


def test_columns_equal_per_hit_metadata(index_dir, tmp_path) -> None:
    folder, _ = index_dir
    q = clustered(25, D, centres=20, seed=5)
    names = ("id", "source", "caption", "modality", "group", "nested", "absent")
    for r in (Retriever(folder), Retriever(folder, metadata_memory=0)):
        r.load_metadata()
        for k in (1, 10, 2000):  # 2000: more than the index holds, so faiss pads with -1
            _columns_match_hits(r.search_vectors(q, k), names)
    if Retriever(folder).config.tombstones:  # flagged rows are filtered out of HNSW's results: faiss pads with -1
        assert r.search_vectors(q, 2000).ids.min() == -1
    x = clustered(300, D, centres=10, seed=6)
    build_parts(ArraySource(x, _rows(300)), tmp_path / "set", 2, factory="Flat")
    _columns_match_hits(Retriever(tmp_path / "set").search_vectors(x[:7], 12), names)


def test_over_budget_reads_sqlite(index_dir) -> None:
    folder, _ = index_dir
    small, mem = Retriever(folder, metadata_memory=10_000), Retriever(folder, metadata_memory="1G")
    q = clustered(5, D, centres=20, seed=2)
    _same(small.search_vectors(q, 10), mem.search_vectors(q, 10))
    assert not mem.parts[0].meta.in_memory  # a one-shot search is served by SQLite: loading waits for a second
    _same(small.search_vectors(q, 10), mem.search_vectors(q, 10))
    assert not small.parts[0].meta.in_memory and mem.parts[0].meta.in_memory
    assert not small.load_metadata() and mem.load_metadata()
    assert small.parts[0].meta.table_bytes() > 10_000


def test_set_of_parts_in_memory_equals_sqlite(tmp_path) -> None:
    x = clustered(1200, D, centres=20, seed=3)
    build_parts(ArraySource(x, _rows(1200)), tmp_path / "set", 3, factory="IVF8,Flat", tune_queries=30)
    mem, sql = Retriever(tmp_path / "set"), Retriever(tmp_path / "set", metadata_memory=0)
    assert len(mem.parts) == 3
    q = clustered(30, D, centres=20, seed=4)
    for _ in range(2):
        _same(mem.search_vectors(q, 15), sql.search_vectors(q, 15))
    assert all(p.meta.in_memory for p in mem.parts) and not any(p.meta.in_memory for p in sql.parts)
    ids = [5, 450, 1199, 1200]
    assert mem.metadata(ids) == sql.metadata(ids) and mem.metadata(ids)[-1] is None


def test_writes_invalidate_a_loaded_table(tmp_path) -> None:
    with MetadataStore(tmp_path / "m.sqlite") as store:
        store.add([1, 2], [{"source": "a"}, {"source": "b", "x": 1}])
        assert store.get([2]) == [{"id": 2, "source": "b", "caption": None, "modality": None, "x": 1}]
        assert not store.in_memory  # a writable store reads SQLite unless told
        assert store.load(force=True) and store.in_memory
        store.add([3], [{"source": "c"}])
        assert not store.in_memory and store.get([3])[0]["source"] == "c"
        assert store.load(force=True)
        store.delete([1], tombstone=True)
        assert not store.in_memory and store.get([1])[0]["deleted"] is True
        assert store.load(force=True)
        store.delete([2])
        assert store.get([1, 2, 3]) == [{"id": 1, "source": "a", "caption": None, "modality": None,
                                         "deleted": True}, None, {"id": 3, "source": "c", "caption": None,
                                                                   "modality": None}]
    with MetadataStore(tmp_path / "m.sqlite", readonly=True) as ro:
        assert ro.get([3])[0]["source"] == "c" and not ro.in_memory  # read-only: SQLite serves the first lookup,
        assert [r is not None for r in ro.get([1, 2, 3])] == [True, False, True] and ro.in_memory  # then loaded


@pytest.mark.parametrize("ids", [list(range(100, 160)), [0, 1, 2, 5, 9], [7, 10**12, -(2**40), 3],
                                 list(range(0, 3000, 3))])
def test_row_table_lookup(ids: list[int]) -> None:
    table = RowTable([(i, f"s{i}", None, "m", "{}", 0) for i in sorted(ids)])
    span = max(ids) - min(ids) + 1
    assert table.run == (span == len(ids))
    assert (table.dense is not None) == (not table.run and span <= 2 * len(ids) + 1024)
    probe = np.array([*ids[::-1], 4, 10**13, -5, ids[0]], dtype=np.int64)
    want = [(i, f"s{i}", None, "m", "{}", 0) if i in set(ids) else None for i in probe.tolist()]
    assert table.aligned(probe) == want
    assert table.aligned(np.repeat(probe, 10)) == [w for w in want for _ in range(10)]  # the vectorised path
    assert RowTable([]).aligned(np.array([1, 2])) == [None, None]


def test_query_checks_and_gc_state(index_dir) -> None:
    folder, _ = index_dir
    r = Retriever(folder)
    with pytest.raises(ValueError, match="all zeros"):
        r.search_vectors(np.zeros((2, D), np.float32))
    with pytest.raises(ValueError, match=r"NaN or inf \(row 1\)"):
        r.search_vectors(np.stack([np.ones(D), np.full(D, np.nan)]).astype(np.float32))
    tiny = np.full(D, 1e-30, np.float32)  # its squared norm underflows float32: the exact check still accepts it
    assert [h.id for h in r.search(tiny, k=3)] == [h.id for h in r.search(np.ones(D), k=3)]
    assert gc.isenabled()
    gc.disable()
    try:
        r.search_vectors(np.ones((3, D), np.float32))
        assert not gc.isenabled()  # a caller's choice is left alone
    finally:
        gc.enable()
