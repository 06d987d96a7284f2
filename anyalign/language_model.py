"""What alignment training and the LLM package agree on, below both of them in the layer order.

`anyalign.align` (training) and `anyalign.llm` (a frozen causal LM with adapters' heads) are independent siblings:
neither imports the other. Training meets the LLM through two things defined here: the `<modality>` placeholder
syntax of prompts, and the registry of frozen-LLM backends. `anyalign.llm.training` registers the built-in backend
(Hugging Face causal LMs, GGUF included); `llm_backend()` imports it by name the first time a recipe needs an LLM,
the way plugins are imported (`anyalign.plugins`), and an out-of-tree backend registers the same way.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .registry import Registry

#: placeholders recognised even without a matching adapter, so that a typo-free `<image>` never passes as text
DEFAULT_MODALITIES = ("image", "audio", "video", "imu")


def placeholder_pattern(modalities: Iterable[str]) -> re.Pattern[str]:
    """Regex matching `<m>` for each modality name (longest names first)."""
    names = sorted(set(modalities) | set(DEFAULT_MODALITIES), key=len, reverse=True)
    return re.compile("<(" + "|".join(re.escape(n) for n in names) + ")>")


@dataclass(frozen=True)
class LLMBackend:
    """How training loads a frozen LLM and wraps it with the adapters' LLM heads.

    `load(name_or_path, gguf_file=, dtype=) -> (llm, tokenizer, source)`; `wrap(llm, tokenizer, adapters,
    source=) -> multimodal LM` (with `add_lora`, `save_pretrained`, `prepare`, `embed_ids` and a call computing the
    loss, as `anyalign.llm.MultimodalLM`); `is_bundle(folder)`: whether the folder is a saved multimodal LM."""

    load: Callable[..., tuple[Any, Any, Any]]
    wrap: Callable[..., Any]
    is_bundle: Callable[[str | os.PathLike], bool]


LLM_BACKENDS: Registry[LLMBackend] = Registry("LLM backend")
DEFAULT_BACKEND = "transformers"
#: built-in backend -> the module that registers it (imported on first use; align cannot import llm)
_BUILTIN: Mapping[str, str] = {DEFAULT_BACKEND: "anyalign.llm.training"}


def llm_backend(name: str = DEFAULT_BACKEND) -> LLMBackend:
    """The frozen-LLM backend registered as `name` (importing the built-in one first)."""
    if name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    return LLM_BACKENDS.create(name)


__all__ = ["DEFAULT_BACKEND", "DEFAULT_MODALITIES", "LLMBackend", "LLM_BACKENDS", "llm_backend",
           "placeholder_pattern"]
