"""`autocast: auto` (anyalign/encoders/autocast.py): bf16 only with native bf16 instructions and a faster probe."""

from __future__ import annotations

import pytest
import torch

from anyalign.encoders import autocast


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("ANYALIGN_CACHE", str(tmp_path))
    autocast._cpu_bf16_is_faster.cache_clear()
    yield
    autocast._cpu_bf16_is_faster.cache_clear()


def test_no_native_bf16_means_fp32_without_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autocast, "cpu_flags", lambda: {"avx2", "avx512f"})
    monkeypatch.setattr(autocast, "probe_cpu_bf16", lambda: pytest.fail("must not probe"))
    assert autocast.auto_autocast_dtype("cpu") is None
    assert autocast.resolve_autocast("auto") is None


@pytest.mark.parametrize("speedup, expected", [(3.3, torch.bfloat16), (0.2, None), (1.05, None)])
def test_native_bf16_follows_the_cached_probe(monkeypatch: pytest.MonkeyPatch, speedup: float,
                                              expected: torch.dtype | None) -> None:
    calls = []
    monkeypatch.setattr(autocast, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(autocast, "probe_cpu_bf16", lambda: calls.append(1) or speedup)
    assert autocast.auto_autocast_dtype("cpu") is expected
    autocast._cpu_bf16_is_faster.cache_clear()
    assert autocast.auto_autocast_dtype("cpu") is expected and len(calls) == 1  # cached on disk


def test_real_probe_and_names() -> None:
    assert autocast.probe_cpu_bf16(n=64, k=128, repeats=2) > 0
    assert autocast.resolve_autocast("bf16") is torch.bfloat16 and autocast.resolve_autocast(None) is None
    with pytest.raises(ValueError, match="autocast: expected auto"):
        autocast.resolve_autocast("fast")
