"""aisfx encoder: the librosa-free front end against references, block windowing and padding on a tiny random
network, and the real converted checkpoint (skips without it) on real freedesktop sounds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.signal import get_window

from anyalign.encoders import create_encoder
from anyalign.encoders.aisfx import FRONT_END, WEIGHTS, AisfxFrontEnd, mel_filterbank
from anyalign.encoders.audio_io import load_audio, resample
from anyalign.io import save_weights

SR = 44100
RNG = np.random.default_rng(0)


def reference_mel(sr: float, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """librosa's HTK mel filters with unit-sum rows, written out bin by bin (slow and plain)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    step = (mel(f_max) - mel(f_min)) / (n_mels + 1)
    edges = [hz(mel(f_min) + i * step) for i in range(n_mels + 2)]
    out = np.zeros((n_mels, n_fft // 2 + 1))
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            out[i, k] = max(0.0, min((f - lo) / (mid - lo), (hi - f) / (hi - mid)))
        if out[i].sum() > 0:
            out[i] /= out[i].sum()
    return out


def test_mel_filterbank_matches_librosa_formula() -> None:
    ours = mel_filterbank(SR, 2048, 96, 0.0, 22050.0)
    ref = reference_mel(SR, 2048, 96, 0.0, 22050.0)
    assert ours.shape == (96, 1025) and np.allclose(ours, ref, atol=1e-6)
    assert np.allclose(ours.sum(1), 1.0, atol=1e-5)  # norm=1: every filter sums to one
    if importlib.util.find_spec("librosa") is not None:  # the package's own front end, where installed
        import librosa

        lib = librosa.filters.mel(sr=SR, n_fft=2048, n_mels=96, fmin=0.0, fmax=22050.0, htk=True, norm=1.0)
        assert np.allclose(ours, lib, atol=1e-6)


def test_front_end_matches_a_numpy_stft() -> None:
    wave = (np.sin(np.arange(30000) * 0.07) * 0.2 + RNG.normal(0, 0.05, 30000)).astype(np.float32)
    ours = AisfxFrontEnd(FRONT_END)(torch.from_numpy(wave)).numpy()  # [T, 96]
    n_fft, hop = 2048, 1024
    x = np.pad(wave / np.abs(wave).max(), n_fft // 2)  # peak-normalised, zero-padded centred frames
    frames = np.stack([x[i * hop:i * hop + n_fft] for i in range(1 + len(wave) // hop)])
    power = np.abs(np.fft.rfft(frames * get_window("hann", n_fft, fftbins=True), axis=1)) ** 2  # [T, F]
    mel = power @ reference_mel(SR, n_fft, 96, 0.0, 22050.0).T
    ref = np.log10(mel * 1e4 + 1) / FRONT_END["norm_max"]
    assert ours.shape == ref.shape == (1 + 30000 // 1024, 96)
    assert np.allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_tiny_random_blocks_padding_and_pooling(tmp_path: Path) -> None:
    enc = create_encoder("aisfx", hidden=8)
    assert enc.token_dim == enc.pooled_dim == 64 and enc.sample_rate == SR
    lengths = [int(0.3 * SR), int(1.0 * SR), int(6.0 * SR)]  # under the package's ~1.2 s assert, and long
    waves = [RNG.normal(0, 0.1, n).astype(np.float32) for n in lengths]
    out = enc(waves)
    frames = [1 + n // 1024 for n in lengths]
    blocks = [1 if t < 100 else 1 + (t - 100) // 50 for t in frames]
    assert blocks == [1, 1, 4] and out.mask.sum(1).tolist() == blocks and out.tokens.shape == (3, 4, 64)
    assert torch.allclose(out.pooled[2], out.tokens[2].mean(0), atol=1e-6)  # pooled = mean of block embeddings
    assert torch.isfinite(out.pooled).all()
    batch = enc.collate([enc.load(w) for w in waves])
    assert batch["blocks"].shape == (6, 100, 96)
    short = enc.front(torch.from_numpy(waves[0]))
    assert torch.equal(batch["blocks"][0, :short.shape[0]], short) and not batch["blocks"][0, short.shape[0]:].any()
    with torch.no_grad():  # block 2 of the long clip starts 50 frames (one hop) after block 1
        assert torch.allclose(out.tokens[2, 1], enc.net(enc.front(torch.from_numpy(waves[2]))[None, 50:150])[0],
                              atol=1e-5)
    assert torch.allclose(enc([(waves[1], SR)]).pooled, out.pooled[1:2], atol=1e-6)  # alone == in a batch
    save_weights(tmp_path / WEIGHTS, enc.net.state_dict())
    back = create_encoder("aisfx", pretrained=str(tmp_path))
    assert torch.allclose(back(waves).pooled, out.pooled, atol=1e-6)
    with pytest.raises(ValueError, match="not an aisfx checkpoint of hidden=16"):
        create_encoder("aisfx", pretrained=str(tmp_path / WEIGHTS), hidden=16)
    with pytest.raises(FileNotFoundError, match="not a local folder or file"):
        create_encoder("aisfx", pretrained="nowhere-tag")
    with pytest.raises(ValueError, match="hop_fraction must be in"):
        create_encoder("aisfx", hidden=8, hop_fraction=0.0)


# --- the real checkpoint ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_dir(assets: Path) -> Path:
    folder = assets / "audio-models" / "aisfx"
    if not (folder / WEIGHTS).is_file():
        pytest.skip(f"{folder} missing: run `python -m anyalign.assets aisfx`")
    return folder


@pytest.fixture(scope="module")
def real(real_dir: Path):
    return create_encoder("aisfx", pretrained=str(real_dir))


@pytest.fixture(scope="module")
def sounds(assets: Path) -> Path:
    root = assets / "audio" / "freedesktop"
    if not root.is_dir():
        pytest.skip(f"{root} missing")
    return root


def test_real_checkpoint_is_the_package_network(real, real_dir: Path, sounds: Path) -> None:
    if importlib.util.find_spec("aisfx") is None:
        pytest.skip("pip aisfx not installed (pip install --no-deps aisfx==0.1.2) to compare with its network")
    from aisfx.models.cnn2d import EmbeddingNet  # torch only; its front end would need librosa
    from safetensors.torch import load_file

    ref = EmbeddingNet("max", 3, 1, 64).eval()
    ref.load_state_dict(load_file(str(real_dir / WEIGHTS)))  # the package's class takes the converted weights
    blocks = real.collate([real.load(sounds / "bell.oga"), real.load(sounds / "trash-empty.oga")])["blocks"]
    with torch.no_grad():
        assert torch.allclose(ref(blocks), real.net(blocks), atol=1e-5)


def test_real_sounds_are_found_again_after_perturbation(real, sounds: Path) -> None:
    """Each sound, delayed 50 ms, halved in level, band-limited (via 32 kHz) and with faint noise, is closer to its
    own original than to any of the other nine (chance 1/10)."""
    names = ["bell", "camera-shutter", "complete", "dialog-error", "message", "phone-incoming-call",
             "service-login", "trash-empty", "alarm-clock-elapsed", "audio-channel-front-left"]
    waves = [load_audio(sounds / f"{n}.oga", SR) for n in names]

    def perturb(w: np.ndarray) -> np.ndarray:
        w = resample(resample(w, SR, 32000), 32000, SR)
        w = np.concatenate([np.zeros(SR // 20, np.float32), w]) * 0.5
        return (w + RNG.normal(0, 1e-3 * np.abs(w).max(), w.shape)).astype(np.float32)

    a = F.normalize(real(waves).pooled, dim=-1)
    b = F.normalize(real([perturb(w) for w in waves]).pooled, dim=-1)
    sim = b @ a.T  # [10, 10]
    assert sim.argmax(1).tolist() == list(range(len(names))), sim
    assert real([waves[0]]).mask.sum() == 1 and real([waves[8]]).mask.sum() > 1  # 0.14 s padded, 6 s blocked
