"""Trainable projectors from encoder tokens into the shared space or an LLM's input space; one file each."""

from __future__ import annotations

import importlib

from .base import (
    PROJECTORS,
    Projector,
    ProjectorOutput,
    create_projector,
    full_mask,
    list_projectors,
    register_projector,
)

# Built-in projectors: each module registers itself on import. A new projector is one file plus one name here.
_BUILTIN = ["linear", "mlp", "perceiver", "qformer", "universal", "rvq"]
_imported = False


def _import_builtin() -> None:
    global _imported
    if _imported:
        return
    _imported = True
    for mod in _BUILTIN:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(f"{__name__}.{mod}"):
                continue  # not written yet
            raise


__all__ = ["PROJECTORS", "Projector", "ProjectorOutput", "create_projector", "full_mask", "list_projectors",
           "register_projector"]
