"""Feature shards: write, stream back, collate; atomic shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anyalign.encoders import EncoderOutput
from anyalign.features import FeatureWriter, collate_features, iter_features, load_features, shard_files


def test_roundtrip_drops_padding_and_keeps_meta(tmp_path: Path) -> None:
    out = EncoderOutput(torch.randn(2, 5, 4), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool(),
                        torch.randn(2, 3))
    with FeatureWriter(tmp_path / "features-r00-00000.tar") as w:
        w.add_batch(["a.wav", "b.wav"], out, [{"source": "a.wav", "label": "dog"}, {"source": "b.wav"}])
    recs = load_features(tmp_path)
    assert [r.key for r in recs] == ["a.wav", "b.wav"] and recs[0].meta["label"] == "dog"
    assert [r.meta["source"] for r in recs] == ["a.wav", "b.wav"]
    assert recs[0].tokens.shape == (3, 4) and recs[1].tokens.shape == (5, 4)
    assert torch.allclose(recs[1].tokens, out.tokens[1], atol=1e-2)  # float16 storage
    assert torch.equal(recs[0].pooled, out.pooled[0])
    batch = collate_features(recs)
    assert batch.tokens.shape == (2, 5, 4) and batch.mask.tolist() == out.mask.tolist()


def test_failed_shard_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with FeatureWriter(tmp_path / "features-r00-00000.tar") as w:
            w.add("x", torch.randn(2, 4), torch.randn(3))
            raise RuntimeError("killed")
    assert shard_files(tmp_path) == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="not a feature folder"):
        list(iter_features(tmp_path))
    with pytest.raises(ValueError, match="expected tokens"):
        FeatureWriter(tmp_path / "features-r00-00001.tar").add("x", torch.randn(4), torch.randn(3))


def test_npy_payloads_decode_without_numpy_header_parsing() -> None:
    """Payloads are written in C order; Fortran-order ones (older shards) decode as transposed views, no copy."""
    import io

    import numpy as np

    from anyalign.features import _npy, decode_npy

    a = np.arange(6 * 5, dtype=np.float16).reshape(5, 6).T  # [6, 5], a transposed view: numpy saves it Fortran
    assert b"'fortran_order': False" in _npy(a)[:128]
    assert np.array_equal(decode_npy(_npy(a)), a)
    buf = io.BytesIO()
    np.save(buf, a)
    payload = buf.getvalue()
    assert b"'fortran_order': True" in payload[:128]
    got = decode_npy(payload)
    assert got.shape == (6, 5) and np.array_equal(got, a) and not got.flags.owndata
