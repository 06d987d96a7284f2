"""One-time converters of registry-shipped model files into safetensors + JSON: a CTranslate2 Whisper model into a
transformers folder (`read_ct2` parses `model.bin` as data, CTranslate2's binary version 6; no CTranslate2 needed)
and aisfx's pickled checkpoint, hash-checked and read with `torch.load(weights_only=True)`."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CT2_BINARY_VERSION = 6
_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
AISFX_CHECKPOINT_SHA256 = "499ea75909c932a2f94c35fa722fa4fabc5bcb7e84917209cc5f7402627b7eb5"  # aisfx==0.1.2


class ConversionError(ValueError):
    """A model file is not what the converter expects; the message names the file and the problem."""


def read_ct2(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Any]]:
    """Read a CTranslate2 `model.bin`: (variables by name, aliases included; aliases alias -> target; header).

    Nothing is executed: the file is parsed as data."""
    path = Path(path)
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        size = struct.calcsize("<" + fmt)
        if pos + size > len(data):
            raise ConversionError(f"{path}: truncated CTranslate2 model (offset {pos})")
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += size
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        raw = data[pos:pos + n]
        pos += n
        if len(raw) != n or not raw.endswith(b"\0"):
            raise ConversionError(f"{path}: malformed string at offset {pos - n}")
        return raw[:-1].decode("utf-8")

    version = take("I")
    if version != CT2_BINARY_VERSION:
        raise ConversionError(f"{path}: CTranslate2 binary version {version}; this reader supports "
                              f"{CT2_BINARY_VERSION}")
    header = {"version": version, "spec": string(), "revision": take("I")}
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        type_id, nbytes = take("B"), take("I")
        if type_id >= len(_CT2_DTYPES):
            raise ConversionError(f"{path}: variable {name!r} has unknown dtype id {type_id}")
        dtype = _CT2_DTYPES[type_id]
        raw = np.frombuffer(data, dtype=np.uint16 if dtype == "bfloat16" else dtype, count=nbytes // (
            2 if dtype == "bfloat16" else np.dtype(dtype).itemsize), offset=pos)
        pos += nbytes
        if dtype == "bfloat16":  # numpy has no bfloat16: widen the bits to float32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        if raw.size != int(np.prod(shape)):
            raise ConversionError(f"{path}: variable {name!r} has {raw.size} values for shape {shape}")
        variables[name] = raw.reshape(shape)
    aliases = {string(): string() for _ in range(take("I"))}
    if pos != len(data):
        raise ConversionError(f"{path}: {len(data) - pos} trailing bytes after the aliases")
    header["stored"] = len(variables)
    for alias, target in aliases.items():  # CTranslate2 stores equal tensors once (tied weights, zero biases, ...)
        if target not in variables:
            raise ConversionError(f"{path}: alias {alias!r} points to unknown variable {target!r}")
        variables[alias] = variables[target]
    return variables, aliases, header


# --- Whisper: CTranslate2 -> transformers ----------------------------------------------------------------------------


#: CTranslate2 WhisperSpec name pieces -> transformers' WhisperForConditionalGeneration ones, applied in order
_WHISPER_RENAMES = [
    (r"^(en|de)coder/", r"model.\1coder."), (r"layer_(\d+)/", r"layers.\1."),
    ("self_attention/linear_0", "self_attn.qkv"), ("self_attention/linear_1", "self_attn.out_proj"),
    ("self_attention/layer_norm", "self_attn_layer_norm"), ("attention/linear_0", "encoder_attn.q_proj"),
    ("attention/linear_1", "encoder_attn.kv"), ("attention/linear_2", "encoder_attn.out_proj"),
    ("attention/layer_norm", "encoder_attn_layer_norm"), ("ffn/linear_0", "fc1"), ("ffn/linear_1", "fc2"),
    ("ffn/layer_norm", "final_layer_norm"), ("position_encodings/encodings", "embed_positions.weight"),
    ("embeddings/weight", "embed_tokens.weight"), ("/gamma$", ".weight"), ("/beta$", ".bias"), ("/", "."),
]


def _whisper_state_dict(v: dict[str, np.ndarray], where: Path) -> dict[str, Any]:
    """CTranslate2 WhisperSpec variables as WhisperForConditionalGeneration weights (float32 tensors): renamed, the
    fused q/k/v (k/v) projections split; the tied output projection and the scalar settings left out."""
    import torch

    sd: dict[str, torch.Tensor] = {}
    for name, arr in v.items():
        if arr.ndim == 0 or name == "decoder/projection/weight":
            continue
        key = name
        for pattern, repl in _WHISPER_RENAMES:
            key = re.sub(pattern, repl, key)
        head, _, kind = key.rpartition(".")  # e.g. model.encoder.layers.0.self_attn.qkv, weight
        base, _, fused = head.rpartition(".")
        parts = fused if fused in ("qkv", "kv") else ""
        for p, chunk in zip(parts, np.split(arr, len(parts))) if parts else [(None, arr)]:
            out = f"{base}.{p}_proj.{kind}" if p else key
            if out.endswith("k_proj.bias"):  # transformers' k_proj has no bias
                if np.abs(chunk).max() > 0:
                    raise ConversionError(f"{where}: {name} has a non-zero key bias, which transformers' Whisper "
                                          f"cannot hold")
                continue
            sd[out] = torch.from_numpy(np.ascontiguousarray(chunk.astype(np.float32)))
    return sd


def _count_layers(v: dict[str, np.ndarray], side: str) -> int:
    found = {int(m.group(1)) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))}
    if not found or found != set(range(len(found))):
        raise ConversionError(f"CTranslate2 model: {side} layers {sorted(found)} are not 0..N-1")
    return len(found)


def convert_whisper_ct2(src: Path, dest: Path) -> None:
    """Convert a CTranslate2 Whisper folder (`model.bin`, `config.json`, `tokenizer.json`) into `dest`."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not (src / name).is_file():
            raise ConversionError(f"{src}: no {name} (expected a CTranslate2 Whisper model folder)")
    v, aliases, header = read_ct2(src / "model.bin")
    if header["spec"] != "WhisperSpec":
        raise ConversionError(f"{src / 'model.bin'}: spec {header['spec']!r}, expected 'WhisperSpec'")
    ct2_config = json.loads((src / "config.json").read_text())
    tok = json.loads((src / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    need = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")
    if any(t not in ids for t in need):
        raise ConversionError(f"{src / 'tokenizer.json'}: lacks special tokens {need}")
    eos, sot, no_ts = (ids[t] for t in need)
    sd = _whisper_state_dict(v, src / "model.bin")
    d_model, n_mels, _ = v["encoder/conv1/weight"].shape
    vocab = v["decoder/embeddings/weight"].shape[0]
    tied = aliases.get("decoder/projection/weight") == "decoder/embeddings/weight"
    if not tied:
        sd["proj_out.weight"] = torch.from_numpy(v["decoder/projection/weight"].astype(np.float32))
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=n_mels, d_model=d_model,
        encoder_layers=_count_layers(v, "encoder"), decoder_layers=_count_layers(v, "decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]), decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        bos_token_id=sot, eos_token_id=eos, pad_token_id=eos, decoder_start_token_id=sot,
        suppress_tokens=ct2_config.get("suppress_ids"), begin_suppress_tokens=ct2_config.get("suppress_ids_begin"),
        tie_word_embeddings=tied, dtype="float32",
    )
    model = WhisperForConditionalGeneration(config).eval()
    if tied:
        sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ConversionError(f"{src / 'model.bin'}: conversion left {len(missing)} missing ({missing[:3]}) and "
                              f"{len(unexpected)} unexpected ({unexpected[:3]}) weights")
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=sot, eos_token_id=eos, pad_token_id=eos, max_length=448,
        forced_decoder_ids=[[1, no_ts]], no_timestamps_token_id=no_ts, is_multilingual=vocab >= 51865,
        prev_sot_token_id=ids.get("<|startofprev|>"), suppress_tokens=ct2_config.get("suppress_ids"),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin"), alignment_heads=ct2_config.get("alignment_heads"),
        lang_to_id={t: i for t, i in ids.items() if i in set(ct2_config.get("lang_ids") or [])} or None,
    )
    model.save_pretrained(dest, safe_serialization=True)
    WhisperFeatureExtractor(feature_size=int(n_mels)).save_pretrained(dest)
    shutil.copy2(src / "tokenizer.json", dest / "tokenizer.json")
    special = dict.fromkeys(("bos_token", "eos_token", "unk_token", "pad_token"), "<|endoftext|>")
    (dest / "tokenizer_config.json").write_text(json.dumps({  # transformers' tokenizers-backed WhisperTokenizer
        "tokenizer_class": "WhisperTokenizer", "model_max_length": 1024, "errors": "replace",
        "add_prefix_space": False, **special}, indent=2) + "\n")
    shutil.copytree(src, dest / "ctranslate2")  # the original, kept for checks against CTranslate2 itself
    provenance = {"format": "CTranslate2", **header, "variables": header["stored"],
                  "source_files": sorted(p.name for p in src.iterdir())}
    (dest / "CONVERTED_FROM.json").write_text(json.dumps(provenance, indent=2) + "\n")
    logger.info("whisper: converted %d CTranslate2 variables (%d layers) -> %s", header["stored"],
                config.encoder_layers + config.decoder_layers, dest)


# --- aisfx: pickled checkpoint -> safetensors ------------------------------------------------------------------------

AISFX_FRONT_END = {  # aisfx/inference.py and preprocessing.py (0.1.2): the model's input contract
    "sample_rate": 44100, "n_fft": 2048, "hop_length": 1024, "n_mels": 96, "f_min": 0.0, "f_max": 22050.0,
    "log_scale": 10000.0, "norm_min": 0.0, "norm_max": 9.457798957824707, "block_frames": 100, "hop_frames": 50,
}


def convert_aisfx(src: Path, dest: Path) -> None:
    """Convert aisfx's `checkpoint.pth` (hash-checked) into `aisfx.safetensors` + `aisfx_config.json` in `dest`."""
    import torch
    from safetensors.torch import save_file

    ckpt = src / "checkpoint.pth"
    if not ckpt.is_file():
        raise ConversionError(f"{src}: no checkpoint.pth (expected aisfx==0.1.2's aisfx/models/checkpoint.pth)")
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    if digest != AISFX_CHECKPOINT_SHA256:
        raise ConversionError(f"{ckpt}: sha256 {digest} is not aisfx 0.1.2's {AISFX_CHECKPOINT_SHA256}; refusing "
                              f"to read an unknown pickle")
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
        weights, ds_dict = torch.load(ckpt, map_location="cpu", weights_only=True)
    prefix = "embedding_net."
    state = {k[len(prefix):]: t.contiguous() for k, t in weights.items() if k.startswith(prefix)}
    if not state:
        raise ConversionError(f"{ckpt}: no {prefix}* weights")
    hl1 = int(state["conv_block1.conv1.weight"].shape[0])
    config = {"architecture": "aisfx-cnn9", "hidden": hl1, "pool": "max", "embed_dim": hl1 * 8,
              "front_end": AISFX_FRONT_END, "source": "aisfx==0.1.2 aisfx/models/checkpoint.pth",
              "source_sha256": digest, "trained_on": {k: int(n) for k, (_, n) in ds_dict.items()}}
    save_file(state, str(dest / "aisfx.safetensors"), metadata={"format": "pt"})
    (dest / "aisfx_config.json").write_text(json.dumps(config, indent=2) + "\n")
    logger.info("aisfx: converted %d tensors -> %s", len(state), dest)


def _numpy_scalar_globals() -> list[Any]:
    """What the aisfx pickle needs besides tensors: numpy int64 scalars (its dataset-index dict) and their dtype."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return [(scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype(np.int64))]


CONVERTERS: dict[str, Callable[[Path, Path], None]] = {"whisper-ct2": convert_whisper_ct2, "aisfx": convert_aisfx}
