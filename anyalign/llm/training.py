"""The built-in frozen-LLM backend of alignment training (Hugging Face causal LMs, GGUF included).

`anyalign.align` finds it by name through `anyalign.language_model.llm_backend()`: align and llm are independent
siblings in the layer order, so training never imports this package.
"""

from __future__ import annotations

from ..language_model import LLMBackend, register_llm_backend
from .bundle import is_bundle, load_llm
from .model import MultimodalLM


@register_llm_backend("transformers")
def transformers_backend() -> LLMBackend:
    """`load_llm`, `MultimodalLM` and the bundle check."""
    return LLMBackend(load=load_llm, wrap=MultimodalLM, is_bundle=is_bundle)


__all__ = ["transformers_backend"]
