"""LoRA on the frozen LLM of a `MultimodalLM` (peft): attach fresh or saved weights, merge and unmerge them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


class LoraMixin:
    """LoRA methods of `MultimodalLM`; they act on `self.llm` and the `lora_merged*` flags it keeps."""

    llm: Any
    lora_merged: bool
    lora_merged_in_place: bool

    @property
    def has_lora(self) -> bool:
        return hasattr(self.llm, "peft_config")

    def add_lora(self, *, r: int = 8, alpha: int = 16, dropout: float = 0.0,
                 target_modules: Sequence[str] | str | None = None, **lora_kwargs: Any) -> None:
        """Attach fresh LoRA weights to the LLM (peft; target modules default to peft's per-architecture list)."""
        from peft import LoraConfig, get_peft_model

        if self.has_lora:
            raise ValueError("the LLM already has LoRA weights attached")
        config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                            target_modules=list(target_modules) if isinstance(target_modules, (list, tuple))
                            else target_modules, **lora_kwargs)
        self.llm = get_peft_model(self.llm, config)

    def load_lora(self, path: str | os.PathLike, *, is_trainable: bool = False) -> None:
        """Attach LoRA weights saved by peft (`save_pretrained` of a PeftModel, or a bundle's `lora/` folder)."""
        from peft import PeftModel

        if self.has_lora:
            raise ValueError("the LLM already has LoRA weights attached")
        if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, "adapter_config.json"))):
            raise FileNotFoundError(f"{path}: not a peft LoRA folder (missing adapter_config.json)")
        self.llm = PeftModel.from_pretrained(self.llm, str(path), is_trainable=is_trainable)

    def merge_lora(self, *, unload: bool = False) -> None:
        """Fold the LoRA weights into the LLM weights for inference.

        By default in place (peft `merge_adapter`): the LoRA weights stay attached, so the bundle still saves
        them separately and `unmerge_lora()` undoes the merge. `unload=True` removes them (`merge_and_unload`);
        the bundle must then save the merged LLM itself, which GGUF-loaded models cannot do.
        """
        if not self.has_lora:
            raise ValueError("the LLM has no LoRA weights to merge")
        if unload:  # already merged in place: only drop the LoRA modules
            self.llm = self.llm.unload() if self.lora_merged_in_place else self.llm.merge_and_unload()
            self.lora_merged, self.lora_merged_in_place = True, False
        elif not self.lora_merged_in_place:
            self.llm.merge_adapter()
            self.lora_merged_in_place = True

    def unmerge_lora(self) -> None:
        """Undo an in-place `merge_lora()` (e.g. to train the LoRA weights further)."""
        if self.has_lora and self.lora_merged_in_place:
            self.llm.unmerge_adapter()
            self.lora_merged_in_place = False


__all__ = ["LoraMixin"]
