"""Loading causal LMs and saving/loading a `MultimodalLM` as one folder.

Bundle layout:
    anyalign_mmlm.json            base LLM (hub id or absolute folder, GGUF file name, dtype), adapters, flags
    adapters/<modality>/          one `ModalityAdapter` folder per modality
    lora/                         peft LoRA weights (when attached and not merged)
    code_embeddings.safetensors   rows of the extended vocabulary (discrete adapters only)
    llm/                          the LLM itself, only when it cannot be referenced (merged LoRA, in-memory model)
The base LLM is referenced, not copied: GGUF checkpoints cannot be re-serialised with `save_pretrained`; a GGUF
file is converted once into a safetensors folder (`cached_gguf_folder`, ~19 s of GGUF parsing saved per load).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapter import ModalityAdapter
from ..fingerprint import source_fingerprint
from ..hub import local_source, portable_source
from ..io import atomic_path, cache_dir, load_weights, read_json, save_weights, write_json
from ..version import FORMAT_VERSION, __version__

MultimodalLM = nn.Module  # annotations only: model.py calls into this module, so it is not imported back

logger = logging.getLogger(__name__)

BUNDLE_CONFIG = "anyalign_mmlm.json"
CODES_NAME = "code_embeddings.safetensors"
_FORMAT = "anyalign-mmlm"
GGUF_DONE = "anyalign_gguf_converted.json"


@dataclass
class LLMSource:
    """How to load the base LLM again: a hub id or an absolute folder, optionally a GGUF file inside it."""

    name_or_path: str
    gguf_file: str | None = None
    dtype: str = "float32"

    @classmethod
    def of(cls, model: nn.Module, gguf_file: str | None = None) -> LLMSource | None:
        """The source of an already loaded model, or None when it was built in memory."""
        name = str(getattr(model, "name_or_path", "") or "")
        if not name:
            return None
        path = Path(name).expanduser()
        if path.is_dir():
            name = str(path.resolve())
        dtype = str(getattr(model, "dtype", torch.float32)).replace("torch.", "")
        return cls(name, gguf_file, dtype)


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    value = getattr(torch, str(name).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype: expected a torch dtype name such as 'float32', got {name!r}")
    return value


def gguf_fingerprint(path: str | os.PathLike) -> str:
    """The converted folder's name: the GGUF file's content identity (`source_fingerprint`), shortened."""
    return str(source_fingerprint(path))[:16]


def cached_gguf_folder(folder: str | os.PathLike, gguf_file: str, *, root: str | os.PathLike | None = None) -> Path:
    """`folder/gguf_file` as a safetensors model folder in `$ANYALIGN_CACHE/llm-gguf/<fingerprint>/`, converted on
    the first call. transformers refuses `save_pretrained` on a GGUF-loaded model, so safetensors writes the state."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(folder).expanduser() / gguf_file
    if not src.is_file():
        raise FileNotFoundError(f"gguf_file={gguf_file!r}: not found in {folder}")
    if root is None:
        root = cache_dir("llm-gguf")
    target = Path(root) / gguf_fingerprint(src)
    if (target / GGUF_DONE).is_file():
        return target
    logger.info("converting %s to safetensors once (%s)", src, target)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=gguf_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied: rebuilt from the input embeddings on load
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / GGUF_DONE, {"source": str(src.resolve()), "gguf_file": gguf_file})
    return target


def load_llm(name_or_path: str | os.PathLike, *, gguf_file: str | None = None, dtype: str | torch.dtype = "float32",
             tokenizer: Any = None) -> tuple[nn.Module, Any, LLMSource]:
    """Load an unmodified `AutoModelForCausalLM` (+ its tokenizer) from a hub id, a folder or a GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = local_source(str(name_or_path), what="llm")  # asset:<name>, an asset's Hub id, ANYALIGN_WEIGHTS
    path = Path(text).expanduser()
    local = path.exists() or text.startswith((".", "/", "~"))
    if local and not path.is_dir():
        raise FileNotFoundError(f"llm={text!r}: no such folder (expected a model folder or a hub id)")
    if local:
        text = str(path.resolve())
        if gguf_file and not (path / gguf_file).is_file():
            raise FileNotFoundError(f"gguf_file={gguf_file!r}: not found in {path}")
        if not gguf_file and not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; pass gguf_file= one of {ggufs}" if ggufs else ""
            raise FileNotFoundError(f"llm={text!r}: no config.json in the folder{hint}")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    load_from = text
    if local and gguf_file:  # converted to safetensors on the first load, read from there afterwards
        load_from, kwargs = str(cached_gguf_folder(path, gguf_file)), {}
    torch_dtype = _dtype(dtype)
    try:
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer or load_from), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(load_from, dtype=torch_dtype, **kwargs)
    except OSError as e:
        raise ValueError(f"cannot load the LLM {text!r}: {e}") from None
    model.eval()
    return model, tokenizer, LLMSource(text, gguf_file, str(torch_dtype).replace("torch.", ""))


def is_bundle(path: str | os.PathLike) -> bool:
    return (Path(path) / BUNDLE_CONFIG).is_file()


def _load_adapter(modality: str, adapter: Any, *, load_encoders: bool, is_trainable: bool) -> ModalityAdapter:
    if isinstance(adapter, (str, os.PathLike)):
        return ModalityAdapter.from_pretrained(adapter, load_encoder=load_encoders, is_trainable=is_trainable)
    return adapter


def load_multimodal(cls: type[MultimodalLM], llm: Any, adapters: Mapping[str, Any] | None, *, tokenizer: Any,
                    gguf_file: str | None, dtype: torch.dtype | str, load_encoders: bool, is_trainable: bool,
                    merge_lora: bool, device: str | torch.device | None) -> MultimodalLM:
    """`MultimodalLM.from_pretrained`: a bundle folder, or an LLM (id, folder or instance) plus adapters."""
    if isinstance(llm, (str, os.PathLike)) and is_bundle(llm):
        if adapters:
            raise ValueError(f"{llm}: is a saved bundle (it names its own adapters); do not pass adapters=")
        model = load_bundle(cls, llm, load_encoders=load_encoders, is_trainable=is_trainable, merge_lora=merge_lora)
    else:
        if isinstance(llm, (str, os.PathLike)):
            base, tok, source = load_llm(llm, gguf_file=gguf_file, dtype=dtype, tokenizer=tokenizer)
        elif isinstance(llm, nn.Module) and hasattr(llm, "get_input_embeddings"):
            if tokenizer is None:
                raise ValueError("from_pretrained: pass tokenizer= together with an LLM instance")
            if isinstance(tokenizer, (str, os.PathLike)):
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), **({"gguf_file": gguf_file} if gguf_file
                                                                             else {}))
            base, tok, source = llm, tokenizer, LLMSource.of(llm, gguf_file)
        else:
            raise ValueError(f"llm: expected a hub id, a folder or a transformers causal LM, got {type(llm).__name__}")
        loaded = {m: _load_adapter(m, a, load_encoders=load_encoders, is_trainable=is_trainable)
                  for m, a in (adapters or {}).items()}
        model = cls(base, tok, loaded, source=source)
    if device is not None:
        model.to(device)
    return model


def save_bundle(model: MultimodalLM, directory: str | os.PathLike, *, save_llm: bool | None = None) -> Path:
    """Write the bundle folder atomically (see the module docstring for the layout)."""
    directory = Path(directory)
    source = model.source
    if save_llm is None:
        save_llm = model.lora_merged or source is None
    if save_llm and model.has_lora:
        raise ValueError("cannot save the LLM itself while LoRA is attached; merge_lora(unload=True) first, "
                         "or save the base LLM with save_pretrained and load it from that folder")
    if not save_llm and source is None:
        raise ValueError("the base LLM was built in memory and cannot be referenced; use save_llm=True")
    if not save_llm and model.lora_merged:
        raise ValueError("LoRA was merged into the LLM: the merged weights must be saved (save_llm=True)")
    model._sync_code_rows()
    config: dict[str, Any] = {
        "format": _FORMAT, "format_version": FORMAT_VERSION, "anyalign_version": __version__,
        "llm": None if save_llm else {**asdict(source), "name_or_path": portable_source(source.name_or_path)},
        "llm_saved": bool(save_llm),
        "adapters": {m: f"adapters/{m}" for m in sorted(model.adapters)},
        "lora": model.has_lora, "lora_merged": model.lora_merged or model.lora_merged_in_place,
        "base_vocab_size": model.base_vocab_size, "code_offsets": dict(model.code_offsets),
        "chat_template": model.use_chat_template,
    }
    with atomic_path(directory, is_dir=True) as tmp:
        for modality, adapter in model.adapters.items():
            adapter.save_pretrained(tmp / "adapters" / modality)
        if model.has_lora:
            model.llm.save_pretrained(str(tmp / "lora"), save_embedding_layers=False)
        if model.code_embeddings is not None:
            tensors = {"input": model.code_embeddings.weight}
            out = model.llm.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != model.llm.get_input_embeddings().weight.data_ptr():
                tensors["output"] = out.weight[model.base_vocab_size:]
            save_weights(tmp / CODES_NAME, tensors, metadata={"format": _FORMAT})
        if save_llm:
            try:
                model.llm.save_pretrained(str(tmp / "llm"))
            except ValueError as e:  # e.g. GGUF-quantised weights
                raise ValueError(f"cannot save the LLM into the bundle ({e}); keep LoRA attached (merge_lora() "
                                 "without unload=True merges in place and saves LoRA separately)") from None
            model.tokenizer.save_pretrained(str(tmp / "llm"))
        write_json(tmp / BUNDLE_CONFIG, config)
    return directory


def load_bundle(cls: type[MultimodalLM], directory: str | os.PathLike, *, load_encoders: bool = True,
                is_trainable: bool = False, merge_lora: bool = False) -> MultimodalLM:
    """Load a folder written by `save_bundle`: base LLM, adapters, LoRA and code embeddings."""
    directory = Path(directory)
    cfg_file = directory / BUNDLE_CONFIG
    cfg = read_json(cfg_file)
    if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
        raise ValueError(f"{cfg_file}: not an anyalign multimodal LM bundle (format != {_FORMAT!r})")
    if int(cfg.get("format_version", 0)) > FORMAT_VERSION:
        logger.warning("%s: written by a newer format (%s > %s)", cfg_file, cfg["format_version"], FORMAT_VERSION)
    if cfg.get("llm_saved"):
        base, tok, _ = load_llm(directory / "llm")
        source = None  # the LLM lives in this bundle: a re-save copies it again
    else:
        src = cfg.get("llm")
        if not isinstance(src, dict) or "name_or_path" not in src:
            raise ValueError(f"{cfg_file}: field 'llm' must name the base LLM ({{'name_or_path': ...}})")
        base, tok, source = load_llm(src["name_or_path"], gguf_file=src.get("gguf_file"),
                                     dtype=src.get("dtype", "float32"))
    adapters = {m: ModalityAdapter.from_pretrained(directory / rel, load_encoder=load_encoders,
                                                   is_trainable=is_trainable)
                for m, rel in dict(cfg.get("adapters") or {}).items()}
    model = cls(base, tok, adapters, source=source, base_vocab_size=cfg.get("base_vocab_size"))
    if model.code_offsets != dict(cfg.get("code_offsets") or {}):
        raise ValueError(f"{cfg_file}: code_offsets {cfg.get('code_offsets')} do not match the adapters "
                         f"({model.code_offsets})")
    if cfg.get("lora"):
        model.load_lora(directory / "lora", is_trainable=is_trainable)
        if merge_lora:
            model.merge_lora()
    if model.code_embeddings is not None:
        state = load_weights(directory / CODES_NAME, device=model.device)
        with torch.no_grad():
            model.code_embeddings.weight.copy_(state["input"])
            if "output" in state:
                model.llm.get_output_embeddings().weight[model.base_vocab_size:].copy_(state["output"])
        model._sync_code_rows()
        model.code_embeddings.requires_grad_(is_trainable)
    return model


__all__ = ["BUNDLE_CONFIG", "CODES_NAME", "GGUF_DONE", "LLMSource", "cached_gguf_folder", "gguf_fingerprint",
           "is_bundle", "load_bundle", "load_llm", "load_multimodal", "save_bundle"]
