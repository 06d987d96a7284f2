"""Saved-format regression: adapters written by on-disk format v1 must keep loading with the same outputs."""

from __future__ import annotations

from pathlib import Path

import torch

from anyalign.adapter import ModalityAdapter
from anyalign.encoders import EncoderOutput
from anyalign.io import load_weights

FIXTURES = Path(__file__).parent / "fixtures"


def test_adapter_format_v1_loads_with_identical_outputs() -> None:
    folder = FIXTURES / "adapter_format_v1"
    adapter = ModalityAdapter.from_pretrained(folder, load_encoder=False)
    assert adapter.config.format_version == 1 and adapter.config.llm_projector["name"] == "perceiver"
    ref = load_weights(folder / "expected.safetensors")
    feats = EncoderOutput(ref["tokens"], ref["mask"].bool(), ref["tokens"].mean(1))
    with torch.no_grad():
        assert torch.allclose(adapter.embed(feats), ref["embed"], atol=1e-6)
        assert torch.allclose(adapter.soft_tokens(feats).tokens, ref["soft"], atol=1e-6)
