"""The text-anchor caption table: exact values across reopen, processes, hash collisions and crashed writers."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anyalign.align import text_cache
from anyalign.align.text_cache import TextEmbeddingTable

E = 8


def _vec(text: str, salt: float = 0.0) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).normal(size=E).astype(np.float32) + np.float32(salt)


class Encoder:
    """Deterministic per text (plus `salt`), records every batch it is asked for."""

    def __init__(self, salt: float = 0.0, delay: float = 0.0) -> None:
        self.salt, self.delay, self.calls = salt, delay, []

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        if self.delay:
            time.sleep(self.delay)
        return torch.from_numpy(np.stack([_vec(t, self.salt) for t in texts]))


def _normed(text: str, salt: float = 0.0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.from_numpy(_vec(text, salt))[None], dim=-1)[0]


def test_get_encodes_missing_once_in_length_sorted_batches(tmp_path: Path) -> None:
    enc = Encoder()
    table = TextEmbeddingTable(tmp_path, enc, batch_size=2)
    texts = ["a much longer caption", "b", "cc", "b", "", "dddd"]
    out = table.get(texts)
    assert out.dtype == torch.float32 and out.shape == (6, E)
    assert all(torch.equal(out[i], _normed(t)) for i, t in enumerate(texts))
    assert enc.calls == [["", "b"], ["cc", "dddd"], ["a much longer caption"]]
    assert len(table) == 5 and table.dim == E
    assert table.add(["b", "new", "cc"]) == 1 and len(table) == 6
    enc.calls.clear()
    assert torch.equal(table.get(["b", "absent"])[0], _normed("b")) and enc.calls == [["absent"]]
    assert table.get([]).shape == (0, E)
    table.close()


def test_values_identical_after_reopen(tmp_path: Path) -> None:
    texts = [f"caption {i}" + " x" * (i % 5) for i in range(3000)]
    first = TextEmbeddingTable(tmp_path, Encoder(), batch_size=64)
    assert first.add(texts, chunk=700) == 3000
    before = first.get(texts[::-1])
    first.close()
    enc = Encoder(salt=1.0)  # a different encoder: any call would change the values
    again = TextEmbeddingTable(tmp_path, enc)
    assert len(again) == 3000 and again.add(texts) == 0
    assert torch.equal(again.get(texts[::-1]), before) and enc.calls == []
    again.close()


def test_a_miss_sees_what_another_table_just_stored(tmp_path: Path) -> None:
    reader, writer = TextEmbeddingTable(tmp_path, enc := Encoder(salt=1.0)), TextEmbeddingTable(tmp_path, Encoder())
    reader.get(["old"])
    writer.get(["fresh", "other"])
    assert torch.equal(reader.get(["fresh"])[0], _normed("fresh")) and enc.calls == [["old"]]
    assert len(reader) == 3


def test_many_writes_and_reopen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_cache, "_WRITE_ROWS", 5)
    texts = [f"t{i}" for i in range(40)]
    table = TextEmbeddingTable(tmp_path, Encoder(), batch_size=3)
    table.add(texts[:23])
    table.get(texts[20:])
    assert len(table) == 40
    reopened = TextEmbeddingTable(tmp_path, Encoder(salt=1.0))
    assert all(torch.equal(v, _normed(t)) for t, v in zip(texts, reopened.get(texts)))


def _collide(monkeypatch: pytest.MonkeyPatch, key: bytes) -> None:
    """Every caption gets the same hash key."""
    monkeypatch.setattr(text_cache, "caption_hash", lambda caption: key)


def test_hash_collision_returns_the_right_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _collide(monkeypatch, b"\0" * 8)  # every caption collides
    texts = [f"caption {i}" for i in range(50)]
    table = TextEmbeddingTable(tmp_path, Encoder(), batch_size=16)
    table.add(texts[:30])
    out = table.get(texts[::-1])
    assert all(torch.equal(v, _normed(t)) for t, v in zip(texts[::-1], out))
    enc = Encoder(salt=1.0)
    again = TextEmbeddingTable(tmp_path, enc)
    assert torch.equal(again.get(texts), out.flip(0)) and enc.calls == [] and len(again) == 50
    again.get(["caption 3", "caption 77"])
    assert enc.calls == [["caption 77"]]


def test_leftovers_of_a_crashed_writer_are_never_read(tmp_path: Path) -> None:
    table = TextEmbeddingTable(tmp_path, Encoder())
    table.get(["a", "b"])
    for name in ("vectors.f32", "ends.u64", "texts.bin"):  # a writer killed after appending, before table.json
        with open(tmp_path / name, "ab") as f:
            f.write(b"\x07" * 40)
    reader = TextEmbeddingTable(tmp_path, enc := Encoder())
    assert len(reader) == 2 and torch.equal(reader.get(["c"])[0], _normed("c")) and enc.calls == [["c"]]
    table.get(["c"])
    again = TextEmbeddingTable(tmp_path, Encoder(salt=1.0))
    assert torch.equal(again.get(["a", "b", "c"]), torch.stack([_normed(t) for t in "abc"])) and len(again) == 3


def test_other_dimension_is_refused(tmp_path: Path) -> None:
    TextEmbeddingTable(tmp_path, Encoder()).get(["a"])
    with pytest.raises(ValueError, match="4-d embeddings, the table holds 8-d"):
        TextEmbeddingTable(tmp_path, lambda texts: torch.ones(len(texts), 4)).get(["b"])


def _adder(folder: str, salt: float, texts: list[str], barrier, out: str) -> None:  # noqa: ANN001
    torch.set_num_threads(1)
    table = TextEmbeddingTable(folder, Encoder(salt=salt, delay=0.002), batch_size=16)
    barrier.wait(timeout=120)
    table.add(texts, chunk=100)
    np.save(out, table.get(texts).numpy())


def test_two_processes_adding_at_once_store_one_value_per_caption(tmp_path: Path) -> None:
    common = [f"shared {i}" for i in range(600)]
    own = {s: [f"own {s} {i}" for i in range(200)] for s in ("a", "b")}
    texts = {"a": common + own["a"], "b": own["b"] + common[::-1]}
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_adder, args=(str(tmp_path / "t"), salt, texts[s], barrier, str(tmp_path / s)))
             for s, salt in (("a", 0.0), ("b", 1.0))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    table = TextEmbeddingTable(tmp_path / "t", Encoder(salt=2.0))
    assert len(table) == 1000  # nothing lost, nothing twice
    for s in "ab":
        seen = torch.from_numpy(np.load(tmp_path / f"{s}.npy"))
        assert torch.equal(table.get(texts[s]), seen)  # both processes got the one stored value
    stored = table.get(common)
    salts = [0.0 if torch.equal(v, _normed(t)) else 1.0 if torch.equal(v, _normed(t, 1.0)) else None
             for t, v in zip(common, stored)]
    assert None not in salts


@pytest.mark.parametrize("collide", [False, True])
def test_lookups_find_exactly_the_stored_captions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  collide: bool) -> None:
    """One caption or hundreds at once, with or without hash collisions: each stored caption's own vector."""
    if collide:
        _collide(monkeypatch, b"\1" * 8)
    texts = [f"caption {i} ✓" for i in range(300)]
    table = TextEmbeddingTable(tmp_path, enc := Encoder())
    table.add(texts)
    enc.calls.clear()
    many = table.get(texts)
    few = torch.cat([table.get(texts[i:i + 7]) for i in range(0, len(texts), 7)])
    assert enc.calls == [] and torch.equal(many, few)
    assert all(torch.equal(v, _normed(t)) for t, v in zip(texts, many))
