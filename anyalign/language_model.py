"""What training (`align`) and the frozen LLM (`llm`) agree on, below both: the `<modality>` placeholder syntax and
the registry of LLM backends (`anyalign/llm/model.py` declares the built-in one with `@register_llm_backend`)."""

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
    """How training loads a frozen LLM (`load(name_or_path, gguf_file=, dtype=) -> (llm, tokenizer, source)`), wraps
    it with the adapters' heads (`wrap(...)`, as `anyalign.llm.MultimodalLM`) and recognises a saved bundle."""

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
