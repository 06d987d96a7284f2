"""A GGUF LLM converted once into a safetensors model folder, so later loads skip GGUF parsing and de-quantising.

Loading SmolLM2-135M from its GGUF file takes 19 s (gguf-py parsing the tokenizer metadata, then de-quantising);
the same weights as safetensors load in a fraction of a second. `cached_gguf_folder(folder, gguf_file)` returns
`$ANYALIGN_CACHE/llm-gguf/<fingerprint>/` (config, generation config, tokenizer and `model.safetensors` in float32,
written atomically) after converting on the first call; the fingerprint covers the GGUF file's resolved path, size
and modification time, so a changed file is converted again. transformers refuses `save_pretrained` on a GGUF-loaded
model ("quantized with gguf and is not serializable"), so the state dict is written with safetensors directly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..fingerprint import source_fingerprint

logger = logging.getLogger(__name__)

DONE = "anyalign_gguf_converted.json"


def _root() -> Path:
    root = os.environ.get("ANYALIGN_CACHE") or Path.home() / ".cache" / "anyalign"
    return Path(root) / "llm-gguf"


def gguf_fingerprint(path: str | os.PathLike) -> str:
    """The converted folder's name: the GGUF file's content identity (`source_fingerprint`), shortened."""
    return str(source_fingerprint(path))[:16]


def cached_gguf_folder(folder: str | os.PathLike, gguf_file: str, *, root: str | os.PathLike | None = None) -> Path:
    """The converted safetensors folder of `folder/gguf_file` (converting it now if this is the first time)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..io import atomic_path, write_json

    src = Path(folder).expanduser() / gguf_file
    if not src.is_file():
        raise FileNotFoundError(f"gguf_file={gguf_file!r}: not found in {folder}")
    target = (Path(root) if root is not None else _root()) / gguf_fingerprint(src)
    if (target / DONE).is_file():
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
        write_json(tmp / DONE, {"source": str(src.resolve()), "gguf_file": gguf_file})
    return target


__all__ = ["cached_gguf_folder", "gguf_fingerprint"]
