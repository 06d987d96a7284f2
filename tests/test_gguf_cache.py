"""The GGUF LLM is converted once into a safetensors folder and loaded from there afterwards (llm/bundle.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from anyalign.llm.bundle import GGUF_DONE, cached_gguf_folder, load_llm


@pytest.mark.slow
def test_second_gguf_load_comes_from_the_safetensors_cache(assets: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    folder = assets / "llm" / "SmolLM2-135M-Instruct"
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (folder / name).is_file():
        pytest.skip(f"{folder / name} missing")
    monkeypatch.setenv("ANYALIGN_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    first, tok, source = load_llm(folder, gguf_file=name)
    t1 = time.perf_counter()
    cache = cached_gguf_folder(folder, name)
    assert (cache / GGUF_DONE).is_file() and (cache / "model.safetensors").is_file()
    assert source.gguf_file == name  # the recorded source stays the GGUF file
    second, tok2, _ = load_llm(folder, gguf_file=name)
    t2 = time.perf_counter()
    ids = tok("What is the capital of France?", return_tensors="pt").input_ids
    assert tok2("What is the capital of France?", return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)
    print(f"GGUF load {t1 - t0:.1f} s, cached load {t2 - t1:.2f} s ({(t1 - t0) / (t2 - t1):.0f}x)")
