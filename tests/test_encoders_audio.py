"""Audio encoders (clap-audio, clap-text, whisper) on tiny random configs of the real transformers classes, saved
with save_pretrained and loaded back through `pretrained=`, fed real freedesktop sounds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from helpers_clap import make_tiny_clap
from transformers import (
    AutoTokenizer,
    ClapFeatureExtractor,
    ClapModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from anyalign.encoders import InputError, create_encoder, encoder_info, list_encoders
from anyalign.encoders.audio_io import load_audio

SENTENCES = ["a dog", "the sound of rain falling on a roof", "a bell ringing"]


def assert_frozen(enc: torch.nn.Module) -> None:
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())


# --- tiny checkpoints, built once per module --------------------------------------------------------------------
@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clap(tmp_path_factory.mktemp("clap"))


@pytest.fixture(scope="module")
def clap_ref(clap_dir: Path) -> ClapModel:
    return ClapModel.from_pretrained(clap_dir).eval()


@pytest.fixture(scope="module")
def clap_audio(clap_dir: Path):
    return create_encoder("clap-audio", pretrained=str(clap_dir))


@pytest.fixture(scope="module")
def clap_text(clap_dir: Path):
    return create_encoder("clap-text", pretrained=str(clap_dir))


@pytest.fixture(scope="module")
def whisper_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WhisperModel]:
    """A tiny WhisperModel (3000 mel frames -> 1500 positions, d_model 32) and the folder it was saved to."""
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=1, encoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                        max_source_positions=1500, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    model = WhisperModel(cfg).eval()
    path = tmp_path_factory.mktemp("whisper")
    model.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def whisper(whisper_pair):
    return create_encoder("whisper", pretrained=str(whisper_pair[0]))


@pytest.fixture(scope="module")
def sounds(assets: Path) -> dict[str, Path]:
    root = assets / "audio" / "freedesktop"
    files = {name: root / f"{name}.oga" for name in ("bell", "phone-incoming-call", "complete")}
    if not all(p.is_file() for p in files.values()):
        pytest.skip(f"freedesktop sounds missing under {root}")
    return files


def tiled(path: Path, seconds: float, rate: int) -> np.ndarray:
    """A real sound repeated to `seconds` at `rate` Hz."""
    wave = load_audio(path, rate)
    return np.tile(wave, math.ceil(seconds * rate / len(wave)))[: int(seconds * rate)]


# --- registration ----------------------------------------------------------------------------------------------
def test_registration_facts(clap_audio, clap_text, whisper) -> None:
    from transformers import ClapConfig

    cfg = ClapConfig()  # laion/clap-htsat-* architecture
    audio, text = encoder_info("clap-audio"), encoder_info("clap-text")
    assert (audio.modality, text.modality, encoder_info("whisper").modality) == ("audio", "text", "audio")
    assert audio.token_dim == cfg.audio_config.patch_embeds_hidden_size * 2 ** (len(cfg.audio_config.depths) - 1)
    assert audio.pooled_dim == text.pooled_dim == cfg.projection_dim and text.token_dim == cfg.text_config.hidden_size
    assert {"clap-audio", "whisper"} <= set(list_encoders("audio")) and "clap-text" in list_encoders("text")
    assert clap_audio.accepts_file("x.OGA") and whisper.accepts_file("a.flac") and not whisper.accepts_file("a.jpg")
    assert (clap_audio.token_dim, clap_audio.pooled_dim, clap_text.token_dim, clap_text.pooled_dim) == (16, 24, 32, 24)
    assert clap_audio.sample_rate == 48000 and clap_audio.window_seconds == 10 and whisper.sample_rate == 16000


# --- clap-audio --------------------------------------------------------------------------------------------------
def test_clap_audio_real_sounds_match_the_direct_model(clap_audio, clap_ref, clap_dir, sounds) -> None:
    paths = [str(sounds["bell"]), str(sounds["phone-incoming-call"])]
    out = clap_audio(paths)
    assert out.tokens.shape == (2, 64, 16) and out.mask.all() and out.pooled.shape == (2, 24)
    assert torch.allclose(out.pooled.norm(dim=-1), torch.ones(2), atol=1e-5)
    # the same through ClapModel + its processor, as the transformers docs do it
    fe = ClapFeatureExtractor.from_pretrained(clap_dir)
    waves = [load_audio(p, 48000) for p in paths]
    feats = fe(waves, sampling_rate=48000, truncation="rand_trunc", return_tensors="pt")
    with torch.no_grad():
        ref = clap_ref.get_audio_features(**feats)
    assert torch.allclose(out.pooled, ref.pooler_output, atol=1e-5)
    fmap = ref.last_hidden_state  # [B, D, F, T]
    assert torch.allclose(out.tokens, fmap.permute(0, 3, 2, 1).reshape(2, -1, 16), atol=1e-5)
    assert not torch.allclose(out.pooled[0], out.pooled[1], atol=1e-3)  # different sounds, different embeddings


def test_clap_inputs_arrays_and_tuples_equal_files(clap_audio, sounds) -> None:
    data, rate = sf.read(str(sounds["complete"]), dtype="float32")  # stereo 44.1 kHz
    assert data.ndim == 2 and rate != 48000
    from_file = clap_audio([str(sounds["complete"])]).pooled
    assert torch.allclose(clap_audio([(data, rate)]).pooled, from_file, atol=1e-6)
    assert torch.allclose(clap_audio([(torch.from_numpy(data.T.copy()), rate)]).pooled, from_file, atol=1e-6)
    at48 = load_audio(str(sounds["complete"]), 48000)
    assert torch.allclose(clap_audio([at48]).pooled, from_file, atol=1e-6)  # bare 1-D arrays are taken at 48 kHz


def test_clap_inference_is_deterministic(clap_audio, clap_dir, sounds, tmp_path) -> None:
    wave = tiled(sounds["phone-incoming-call"], 10.0, 48000)  # exactly one clip, and a longer one
    for x in (wave, np.concatenate([wave, wave[:48000 * 3]])):
        a, b = clap_audio([x]), clap_audio([x])
        assert torch.equal(a.pooled, b.pooled) and torch.equal(a.tokens, b.tokens)
    fused = create_encoder("clap-audio", pretrained=str(make_tiny_clap(tmp_path / "fused", fusion=True)))
    assert fused.fusion and fused([wave]).tokens.shape == (1, 64, 16)
    assert torch.equal(fused([wave, wave[:48000]]).pooled, fused([wave, wave[:48000]]).pooled)


def test_clap_long_audio_windows(clap_audio, sounds) -> None:
    wave = tiled(sounds["phone-incoming-call"], 26.0, 48000)  # windows 0-10, 10-20, 20-26 s
    short = tiled(sounds["bell"], 1.0, 48000)
    out = clap_audio([wave, short])
    assert out.tokens.shape == (2, 3 * 64, 16) and out.mask.sum(1).tolist() == [3 * 64, 64]
    parts = [wave[: 480000], wave[480000:960000], wave[960000:]]
    each = clap_audio(parts)
    assert torch.allclose(out.pooled[0], F.normalize(each.pooled.mean(0), dim=0), atol=1e-5)
    assert torch.allclose(out.tokens[0], each.tokens.reshape(-1, 16), atol=1e-5)
    assert torch.allclose(out.pooled[1], clap_audio([short]).pooled[0], atol=1e-5)
    assert torch.allclose(out.tokens[1, :64], clap_audio([short]).tokens[0], atol=1e-5)
    # a tail shorter than half a window is dropped
    assert clap_audio([wave[: 480000 + 48000 * 4]]).tokens.shape[1] == 64


def test_clap_window_seconds_option(clap_dir, sounds) -> None:
    enc = create_encoder("clap-audio", pretrained=str(clap_dir), window_seconds=4)
    out = enc([tiled(sounds["bell"], 9.0, 48000)])
    assert enc.window_seconds == 4 and out.tokens.shape[1] == 2 * 64  # 4 + 4 s windows, the 1 s tail dropped
    with pytest.raises(ValueError, match="window_seconds"):
        create_encoder("clap-audio", pretrained=str(clap_dir), window_seconds=12)


def test_clap_bf16_autocast_is_close(clap_audio, sounds) -> None:
    paths = [str(sounds["bell"]), str(sounds["phone-incoming-call"])]
    full = clap_audio(paths)
    clap_audio.autocast_dtype = torch.bfloat16
    try:
        half = clap_audio(paths)
    finally:
        clap_audio.autocast_dtype = None
    assert half.pooled.dtype == torch.float32
    assert F.cosine_similarity(full.pooled, half.pooled).min() > 0.99
    assert F.cosine_similarity(full.tokens.flatten(1), half.tokens.flatten(1)).min() > 0.99


# --- clap-text ---------------------------------------------------------------------------------------------------
def test_clap_text_real_mask_and_direct_model(clap_text, clap_ref, clap_dir) -> None:
    out = clap_text(SENTENCES)
    tok = AutoTokenizer.from_pretrained(clap_dir)
    lengths = [len(tok(s)["input_ids"]) for s in SENTENCES]
    assert out.tokens.shape == (3, max(lengths), 32) and out.mask.sum(1).tolist() == lengths
    assert not out.mask.all()  # "a dog" is padded
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = clap_ref.get_text_features(**batch)
    assert torch.allclose(out.pooled, ref.pooler_output, atol=1e-5)
    assert torch.allclose(out.tokens, ref.last_hidden_state, atol=1e-5)
    alone = clap_text([SENTENCES[0]])  # padding must not change a sentence's embedding
    assert torch.allclose(alone.pooled[0], out.pooled[0], atol=1e-5)
    with pytest.raises(InputError, match="strings"):
        clap_text([3])


def test_clap_text_and_audio_share_a_space(clap_text, clap_audio, clap_ref, clap_dir, sounds) -> None:
    """Audio x text cosines of the two encoders are ClapModel's own logits (before its temperature)."""
    paths = [str(sounds["bell"]), str(sounds["complete"])]
    sims = clap_audio(paths).pooled @ clap_text(SENTENCES).pooled.T  # [2, 3]
    fe, tok = ClapFeatureExtractor.from_pretrained(clap_dir), AutoTokenizer.from_pretrained(clap_dir)
    waves = [load_audio(p, 48000) for p in paths]
    feats = fe(waves, sampling_rate=48000, truncation="rand_trunc", return_tensors="pt")
    with torch.no_grad():
        ref = clap_ref(**tok(SENTENCES, padding=True, return_tensors="pt"), **feats)
    assert torch.allclose(sims, ref.logits_per_audio / clap_ref.logit_scale_a.exp(), atol=1e-5)


# --- whisper -----------------------------------------------------------------------------------------------------
def test_whisper_real_sounds_masks_and_direct_model(whisper, whisper_pair, sounds) -> None:
    paths = [str(sounds["bell"]), str(sounds["phone-incoming-call"])]
    out = whisper(paths)
    assert out.tokens.shape == (2, 1500, 32) and out.pooled.shape == (2, 32)
    durations = [sf.info(p).duration for p in paths]  # 0.14 s and 1.46 s
    expected = [math.ceil(math.ceil(round(d * 16000) / 160) / 2) for d in durations]  # 100 mel/s, 2 mel per token
    valid = out.mask.sum(1).tolist()
    assert valid == expected and valid[0] < valid[1] < 1500
    assert out.mask[:, : valid[0]].all() and not out.mask[0, valid[0]:].any()  # a prefix mask
    w = out.mask.float().unsqueeze(-1)
    assert torch.allclose(out.pooled, (out.tokens * w).sum(1) / w.sum(1), atol=1e-5)
    _, model = whisper_pair
    fe = WhisperFeatureExtractor(feature_size=80)
    feats = fe([load_audio(p, 16000) for p in paths], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ref = model.encoder(feats["input_features"]).last_hidden_state
    assert torch.allclose(out.tokens, ref, atol=1e-5)
    again = whisper(paths)
    assert torch.equal(again.tokens, out.tokens) and torch.equal(again.pooled, out.pooled)


def test_whisper_long_audio_windows(whisper, whisper_pair, sounds) -> None:
    wave = tiled(sounds["phone-incoming-call"], 48.0, 16000)  # a 30 s window + an 18 s tail
    out = whisper([wave, wave[:16000]])
    assert out.mask.sum(1).tolist() == [1500 + 900, 50] and out.tokens.shape[1] == 2400
    head, tail = whisper([wave[: 30 * 16000]]), whisper([wave[30 * 16000:]])
    assert torch.allclose(out.tokens[0], torch.cat([head.tokens[0], tail.tokens[0, :900]]), atol=1e-5)
    assert torch.allclose(out.pooled[0], torch.cat([head.tokens[0], tail.tokens[0, :900]]).mean(0), atol=1e-5)
    assert whisper([wave[: 16000 * 40]]).mask.sum().item() == 1500 + 500  # a 10 s tail is embedded too
    enc = create_encoder("whisper", pretrained=str(whisper_pair[0]), window_seconds=5)
    assert enc([wave[: 16000 * 12]]).mask.sum().item() == 2 * 250 + 100  # 5 + 5 s windows and the 2 s tail


def test_whisper_bf16_autocast_is_close(whisper_pair, sounds) -> None:
    enc = create_encoder("whisper", pretrained=str(whisper_pair[0]), autocast="bf16")
    full = create_encoder("whisper", pretrained=str(whisper_pair[0]))
    paths = [str(sounds["complete"])]
    assert F.cosine_similarity(enc(paths).pooled, full(paths).pooled).item() > 0.99


# --- shared behaviour --------------------------------------------------------------------------------------------
def test_frozen_even_after_train(clap_audio, clap_text, whisper) -> None:
    for enc in (clap_audio, clap_text, whisper):
        assert_frozen(enc)


@pytest.mark.parametrize("name", ["clap-audio", "whisper"])
def test_bad_audio_inputs_name_the_file(name, clap_audio, whisper, tmp_path) -> None:
    enc = clap_audio if name == "clap-audio" else whisper
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    with pytest.raises(InputError, match=r"corrupt\.wav: cannot read as audio"):
        enc([str(corrupt)])
    truncated = tmp_path / "cut.ogg"
    truncated.write_bytes(b"OggS" + bytes(60))
    with pytest.raises(InputError, match=r"cut\.ogg"):
        enc.load(truncated)
    with pytest.raises(InputError, match=r"missing\.flac: audio file not found"):
        enc.load(tmp_path / "missing.flac")
    with pytest.raises(InputError, match="NaN"):
        enc.load(np.array([0.0, np.nan, 0.1], dtype=np.float32))
    with pytest.raises(InputError, match="shape"):
        enc.load(np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(InputError, match="no audio samples"):
        enc.load((np.zeros(0, dtype=np.float32), 16000))
    with pytest.raises(InputError, match="expected an audio file path"):
        enc.load({"not": "audio"})


def test_bad_pretrained_sources(clap_dir, whisper_pair, tmp_path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="Hugging Face model folder"):
        create_encoder("clap-audio", pretrained=str(weights))
    with pytest.raises(FileNotFoundError, match="no such file"):
        create_encoder("whisper", pretrained=str(tmp_path / "nowhere"))
    with pytest.raises((FileNotFoundError, ValueError), match="clap-text"):
        create_encoder("clap-text", pretrained=str(whisper_pair[0]))  # a Whisper folder is not a CLAP one
    with pytest.raises((FileNotFoundError, ValueError), match="whisper"):
        create_encoder("whisper", pretrained=str(clap_dir))
