"""Training meets the frozen LLM through anyalign/language_model.py: the built-in backend is found by name (align
never imports anyalign.llm), an out-of-tree backend registers the same way, and llm shares the placeholder syntax."""

from __future__ import annotations

import subprocess
import sys

import pytest

from anyalign.language_model import LLM_BACKENDS, LLMBackend, llm_backend, placeholder_pattern
from anyalign.registry import UnknownNameError


def test_training_finds_the_builtin_backend_without_importing_llm_first() -> None:
    code = ("import sys; from anyalign.align.build import build_model; assert 'anyalign.llm' not in sys.modules; "
            "from anyalign.language_model import llm_backend; b = llm_backend(); "
            "from anyalign.llm import MultimodalLM, is_bundle, load_llm; "
            "assert (b.load, b.wrap, b.is_bundle) == (load_llm, MultimodalLM, is_bundle)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_registered_backend_is_found_by_name_and_an_unknown_one_named() -> None:
    backend = LLMBackend(load=lambda *a, **k: (None, None, None), wrap=lambda *a, **k: None, is_bundle=bool)
    LLM_BACKENDS.register("test-backend")(lambda: backend)
    assert llm_backend("test-backend") is backend
    with pytest.raises(UnknownNameError, match="test-backend"):
        llm_backend("no-such-backend")


def test_llm_prompts_use_the_shared_placeholder_syntax() -> None:
    from anyalign.llm import prompt

    assert prompt.placeholder_pattern is placeholder_pattern
    assert placeholder_pattern(["ir-depth"]).findall("<ir-depth> then <image>, not <imus>") == ["ir-depth", "image"]
