"""Float16 checkpoints load into float32 encoders on CPU, for every family that can be built tiny.

Each case saves one tiny random checkpoint twice: in float16 and as float32 holding the same (rounded) values.
Loaded through `create_encoder`, the float16 one must give float32 weights, finite outputs, and the same outputs
as the float32 copy (a float16 weight left in place would fail the forward pass or change the numbers).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import torch
from helpers_clap import make_tiny_clap, make_tiny_tokenizer
from transformers import ClapModel, RobertaConfig, RobertaModel, WhisperConfig, WhisperFeatureExtractor, WhisperModel

from anyalign.encoders import create_encoder
from anyalign.encoders.clip import register_model_configs
from anyalign.io import save_weights

TINY_CLIP = "anyalign-tiny-vit"
TINY_DINO = dict(img_size=28, embed_dim=32, depth=2, num_heads=2)
RNG = np.random.default_rng(0)
IMAGES = [RNG.integers(0, 256, (40, 52, 3), dtype=np.uint8)]
WAVES = [(np.sin(np.arange(16000) * 0.05) * 0.3).astype(np.float32), RNG.normal(0, 0.1, 6000).astype(np.float32)]


def _halves(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(float16 copy, float32 copy of the float16 values) of a state dict; integer buffers untouched."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return half, {k: v.float() if v.is_floating_point() else v for k, v in half.items()}


def _hf_pair(model: torch.nn.Module, tmp: Path, extra: Callable[[Path], None]) -> tuple[str, str]:
    """Save a transformers model as float16 and as rounded float32 folders (plus tokenizer/extractor files)."""
    paths = []
    for name, dtype in (("fp16", torch.float16), ("fp32", torch.float32)):
        model.to(torch.float16).to(dtype).save_pretrained(tmp / name)  # fp32 copy holds the rounded values
        extra(tmp / name)
        paths.append(str(tmp / name))
    assert json.loads((tmp / "fp16" / "config.json").read_text()).get("dtype") == "float16"
    return paths[0], paths[1]


def _state_pair(state: dict[str, torch.Tensor], tmp: Path, name: str) -> tuple[str, str]:
    half, rounded = _halves(state)
    save_weights(tmp / f"{name}-fp16.safetensors", half)
    save_weights(tmp / f"{name}-fp32.safetensors", rounded)
    return str(tmp / f"{name}-fp16.safetensors"), str(tmp / f"{name}-fp32.safetensors")


def case_text(tmp: Path) -> tuple[str, str, dict[str, Any], list[Any]]:
    tok = make_tiny_tokenizer()
    model = RobertaModel(RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=80))
    return (*_hf_pair(model, tmp, tok.save_pretrained), {}, ["a dog barking", "rain"])


def case_clip(tmp: Path) -> tuple[str, str, dict[str, Any], list[Any]]:
    register_model_configs()
    return (*_state_pair(open_clip.create_model(TINY_CLIP).state_dict(), tmp, "clip"), {"model": TINY_CLIP}, IMAGES)


def case_timm(tmp: Path) -> tuple[str, str, dict[str, Any], list[Any]]:
    enc = create_encoder("timm-image", model="test_efficientnet")
    return (*_state_pair(enc.model.state_dict(), tmp, "timm"), {"model": "test_efficientnet"}, IMAGES)


def case_dinov2(tmp: Path) -> tuple[str, str, dict[str, Any], list[Any]]:
    return (*_state_pair(create_encoder("dinov2", **TINY_DINO).model.state_dict(), tmp, "dino"), TINY_DINO, IMAGES)


def case_clap(tmp: Path) -> tuple[str, str, dict[str, Any], list[Any]]:
    src = make_tiny_clap(tmp / "src")

    def copy_processor(dest: Path) -> None:
        for f in src.iterdir():
            if f.suffix in (".json", ".txt") and f.name not in ("config.json",):
                (dest / f.name).write_bytes(f.read_bytes())

    return (*_hf_pair(ClapModel.from_pretrained(src), tmp, copy_processor), {}, [(w, 16000) for w in WAVES])


def case_whisper(tmp: Path) -> tuple[str, str, dict[str, Any], list[Any]]:
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=1, encoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                        max_source_positions=1500, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=1)
    return (*_hf_pair(WhisperModel(cfg), tmp, WhisperFeatureExtractor(feature_size=80).save_pretrained), {}, WAVES)


def case_imu(tmp: Path) -> tuple[str, str, dict[str, Any], list[Any]]:
    opts = dict(dim=32, depth=1, heads=2)
    return (*_state_pair(create_encoder("imu", **opts).state_dict(), tmp, "imu"), opts, [RNG.normal(size=(6, 64))])


def case_aisfx(tmp: Path) -> tuple[str, str, dict[str, Any], list[Any]]:
    return (*_state_pair(create_encoder("aisfx", hidden=8).net.state_dict(), tmp, "aisfx"), {},
            [(w, 16000) for w in WAVES])


CASES = {"text": case_text, "clip-image": case_clip, "timm-image": case_timm, "dinov2": case_dinov2,
         "clap-audio": case_clap, "whisper": case_whisper, "imu": case_imu, "aisfx": case_aisfx}


@pytest.mark.parametrize("name", list(CASES))
def test_float16_checkpoint_loads_as_float32(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    fp16, fp32, options, inputs = CASES[name](tmp_path)
    enc = create_encoder(name, pretrained=fp16, **options)
    floats = {t.dtype for t in (*enc.parameters(), *enc.buffers()) if t.is_floating_point()}
    assert floats == {torch.float32}, f"{name}: weights left in {floats}"
    out = enc(inputs)
    assert out.tokens.dtype == out.pooled.dtype == torch.float32
    assert torch.isfinite(out.tokens[out.mask]).all() and torch.isfinite(out.pooled).all()
    ref = create_encoder(name, pretrained=fp32, **options)(inputs)  # same values, stored in float32
    assert torch.allclose(out.pooled, ref.pooled, atol=1e-5) and torch.equal(out.mask, ref.mask)


def test_half_weights_only_on_cuda(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weights_dtype='fp16' needs device='cuda'"):
        create_encoder("imu", dim=32, depth=1, heads=2, weights_dtype="fp16")
    enc = create_encoder("imu", dim=32, depth=1, heads=2, weights_dtype="fp32")
    assert {p.dtype for p in enc.parameters()} == {torch.float32}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_weights_on_cuda_when_asked(tmp_path: Path) -> None:
    fp16, _, options, inputs = case_whisper(tmp_path)
    enc = create_encoder("whisper", pretrained=fp16, device="cuda", weights_dtype="fp16", **options)
    assert {p.dtype for p in enc.parameters()} == {torch.float16}
    assert torch.isfinite(enc(inputs).pooled).all()
