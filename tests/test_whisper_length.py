"""Whisper on the clip's own length (`padding="longest"`) vs Whisper's 30 s pad (`padding="window"`): the same
computation where nothing is padded, batch-independent tokens, valid token counts, long audio's tail embedded.

A tiny random-init WhisperModel of the real architecture (1500 positions) runs by default; the real Whisper tiny.en
asset (`python -m anyalign.assets whisper-tiny.en`) with espeak-ng speech checks the measured tolerance between
the two paths (benchmarks/whisper_length.py: per-frame cosine 0.94 mean, pooled 0.97 on 2 s clips)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

from anyalign.config import ConfigError
from anyalign.encoders import create_encoder
from anyalign.encoders.spec import EncoderSpec

RATE = 16000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                        max_source_positions=1500, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("whisper")
    WhisperModel(cfg).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def encoders(tiny: Path):
    return create_encoder("whisper", pretrained=str(tiny)), create_encoder("whisper", pretrained=str(tiny),
                                                                          padding="longest")


def chirps(seconds: list[float], seed: int = 0) -> list[np.ndarray]:
    """Tone sweeps with a little noise: audio whose every frame differs."""
    rng = np.random.default_rng(seed)
    out = []
    for s in seconds:
        t = np.arange(int(round(s * RATE))) / RATE
        f = 200 + 1500 * t / max(s, 1e-3) + rng.uniform(0, 300)
        out.append((0.3 * np.sin(2 * np.pi * f * t) + 0.02 * rng.normal(size=t.shape)).astype(np.float32))
    return out


def expected_tokens(n_samples: int) -> int:
    return math.ceil(math.ceil(n_samples / 160) / 2)  # 100 mel frames per second, 2 per token


# --- tiny random Whisper ---------------------------------------------------------------------------------------
def test_valid_token_counts_and_shapes(encoders) -> None:
    window, longest = encoders
    lengths = [1, 159, 161, 320, 321, 16000, 37_123]
    waves = [np.full(n, 0.1, dtype=np.float32) for n in lengths]
    for enc, steps in ((window, 1500), (longest, max(map(expected_tokens, lengths)))):
        out = enc(waves)
        assert out.mask.sum(1).tolist() == [expected_tokens(n) for n in lengths]
        assert out.tokens.shape == (len(lengths), steps, 32)
        n = out.mask.sum(1)
        assert all(out.mask[i, :k].all() and not out.mask[i, k:].any() for i, k in enumerate(n.tolist()))
    batch = longest.collate(waves)
    assert batch["input_features"].shape[-1] == 2 * (max(map(expected_tokens, lengths)) + 1)  # even, + look-ahead


def test_unpadded_is_the_padded_computation_when_nothing_is_padded(encoders) -> None:
    window, longest = encoders
    full = chirps([30.0])
    a, b = window(full), longest(full)
    assert a.tokens.shape == b.tokens.shape == (1, 1500, 32)
    assert torch.allclose(a.tokens, b.tokens, atol=1e-5) and torch.allclose(a.pooled, b.pooled, atol=1e-5)


def test_unpadded_matches_transformers_forward_on_sliced_positions(encoders, tiny: Path) -> None:
    """An independent reference: transformers' own WhisperEncoder built for exactly T positions (the checkpoint's
    first T position embeddings), fed the padded path's first 2T mel frames. Only the last token differs (its
    convolution reads zero padding there instead of the next frames)."""
    _, longest = encoders
    wave = chirps([2.3])
    steps = expected_tokens(len(wave[0]))
    ref_model = WhisperModel.from_pretrained(tiny, max_source_positions=steps, ignore_mismatched_sizes=True).eval()
    full = WhisperModel.from_pretrained(tiny).eval()
    ref_model.encoder.embed_positions.weight.data.copy_(full.encoder.embed_positions.weight[:steps])
    feats = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=RATE, return_tensors="pt")["input_features"]
    with torch.no_grad():
        ref = ref_model.encoder(feats[..., : 2 * steps]).last_hidden_state[0]  # [T, D]
    ours = longest(wave).tokens[0]
    assert ours.shape == ref.shape
    assert torch.allclose(ours[:-1], ref[:-1], atol=1e-4), (ours[:-1] - ref[:-1]).abs().max()


def test_a_clip_gives_the_same_tokens_alone_or_in_a_batch(encoders) -> None:
    _, longest = encoders
    short, long_ = chirps([0.7, 4.1], seed=1)
    alone = longest([short])
    both = longest([long_, short])
    n = int(alone.mask.sum())
    assert int(both.mask[1].sum()) == n and both.tokens.shape[1] == expected_tokens(len(long_))
    assert torch.allclose(both.tokens[1, :n], alone.tokens[0], atol=1e-5)
    assert torch.allclose(both.pooled[1], alone.pooled[0], atol=1e-5)


def test_eager_attention_masks_like_sdpa(tiny: Path) -> None:
    sdpa = create_encoder("whisper", pretrained=str(tiny), padding="longest")
    eager = create_encoder("whisper", pretrained=str(tiny), padding="longest")
    eager.encoder.config._attn_implementation = "eager"
    waves = chirps([0.6, 2.0], seed=2)
    a, b = sdpa(waves), eager(waves)
    assert torch.allclose(a.tokens[a.mask], b.tokens[b.mask], atol=1e-4)
    bf16 = create_encoder("whisper", pretrained=str(tiny), padding="longest", autocast="bf16")
    assert F.cosine_similarity(bf16(waves).pooled, a.pooled).min() > 0.99


def test_long_audio_tail_is_embedded(encoders) -> None:
    for enc in encoders:
        wave = chirps([40.0], seed=3)[0]  # a 30 s window + a 10 s tail (dropped before)
        out = enc([wave])
        assert int(out.mask.sum()) == 1500 + 500
        changed = wave.copy()
        changed[-5 * RATE:] = chirps([5.0], seed=4)[0]  # only the last 5 s differ
        assert not torch.allclose(enc([changed]).pooled, out.pooled, atol=1e-4)
        short_tail = enc([wave[: 30 * RATE + 800]])  # a 50 ms tail: 3 more tokens
        assert int(short_tail.mask.sum()) == 1500 + 3


def test_padding_option_is_recorded_and_checked(tiny: Path, encoders) -> None:
    window, longest = encoders
    assert EncoderSpec.of(longest).options == {"padding": "longest"} and EncoderSpec.of(window).options == {}
    assert EncoderSpec.of(longest).key() != EncoderSpec.of(window).key()  # cached features never mix paths
    assert EncoderSpec.of(longest).build().padding == "longest"
    with pytest.raises(ConfigError, match="padding"):
        create_encoder("whisper", pretrained=str(tiny), padding="clip")


# --- real Whisper tiny.en --------------------------------------------------------------------------------------
def test_real_whisper_unpadded_within_measured_tolerance(assets: Path) -> None:
    folder = assets / "audio-models" / "whisper-tiny.en"
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} missing (python -m anyalign.assets whisper-tiny.en converts it)")
    espeak = pytest.importorskip("anyalign.demos.speech_corpus", reason="speech synthesis unavailable")
    from anyalign.encoders.audio_io import resample

    try:
        eng = espeak.EspeakEngine.get()
    except (ImportError, OSError) as e:
        pytest.skip(f"no espeak-ng: {e}")
    texts = ["Please turn on the kitchen light.", "What time does the train leave?", "Call my sister after lunch."]
    waves = [resample(eng.synthesize(t, "en-us", 160, 50).astype(np.float32) / 32768.0, eng.sample_rate, RATE)
             for t in texts]
    window = create_encoder("whisper", pretrained=str(folder))
    longest = create_encoder("whisper", pretrained=str(folder), padding="longest")
    with torch.inference_mode():
        a, b = window(waves), longest(waves)
    assert a.mask.sum(1).tolist() == b.mask.sum(1).tolist()
    cos, pooled = [], F.cosine_similarity(a.pooled, b.pooled, dim=-1)
    for i in range(len(texts)):
        n = int(a.mask[i].sum())
        cos.append(F.cosine_similarity(a.tokens[i, :n], b.tokens[i, :n], dim=-1).mean())
    # measured on these 1.3-1.8 s clips: mean per-frame cosine 0.938-0.943, pooled 0.961-0.965 (not equal: see
    # whisper.py); two different sentences' pooled cosine is 0.939 (Whisper's pooled features are anisotropic)
    assert min(cos) > 0.88 and pooled.min() > 0.92, (cos, pooled)
    other = F.cosine_similarity(a.pooled[0], a.pooled[1], dim=0)  # two different sentences, same path
    assert pooled.min() > other, "the bound must separate the paths' difference from a different sentence"
