"""What alignment training and the LLM package agree on, below both of them in the layer order.

`anyalign.align` (training) and `anyalign.llm` (a frozen causal LM with adapters' heads) are independent siblings:
neither imports the other. Training meets the LLM through two things defined here: the `<modality>` placeholder
syntax of prompts, and the registry of frozen-LLM backends. `anyalign/llm/model.py` declares the built-in backend
(Hugging Face causal LMs, GGUF included) with `@register_llm_backend("transformers")`; like every registry's
built-ins (`anyalign.registry`), it is found by that line and its module imported the first time a recipe needs an
LLM, and an out-of-tree backend registers the same way from a plugin.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
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


#: built-in backends are declared by `@register_llm_backend("name")` in anyalign/llm/ (found there by reading, the
#: module imported on first use: align cannot import llm); out-of-tree ones register the same way from a plugin
LLM_BACKENDS: Registry[LLMBackend] = Registry("LLM backend", package="anyalign.llm", decorator="register_llm_backend")
register_llm_backend = LLM_BACKENDS.register
DEFAULT_BACKEND = "transformers"


def llm_backend(name: str = DEFAULT_BACKEND) -> LLMBackend:
    """The frozen-LLM backend registered as `name` (importing the module that declares a built-in one first)."""
    return LLM_BACKENDS.create(name)


__all__ = ["DEFAULT_BACKEND", "DEFAULT_MODALITIES", "LLMBackend", "LLM_BACKENDS", "llm_backend",
           "placeholder_pattern", "register_llm_backend"]
