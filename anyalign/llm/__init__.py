"""Modality adapters plugged into an unmodified Hugging Face causal LM (soft tokens or discrete code ids).

    mm = MultimodalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", adapters={"imu": "runs/imu-adapter"})
    mm.generate(["<imu>\\nWhat is the person doing?"], inputs={"imu": [window]}, max_new_tokens=32)
"""

from __future__ import annotations

from .bundle import BUNDLE_CONFIG, LLMSource, is_bundle, load_llm
from .model import MultimodalLM, MultimodalLMOutput, context_length, is_discrete
from .prompt import (
    DEFAULT_MODALITIES,
    IGNORE_INDEX,
    Layout,
    MediaSlot,
    MediaTokens,
    PromptPlan,
    layout_batch,
    plan_prompts,
    splice,
)

__all__ = ["BUNDLE_CONFIG", "DEFAULT_MODALITIES", "IGNORE_INDEX", "LLMSource", "Layout", "MediaSlot", "MediaTokens",
           "MultimodalLM", "MultimodalLMOutput", "PromptPlan", "context_length", "is_bundle", "is_discrete",
           "layout_batch", "load_llm", "plan_prompts", "splice"]
