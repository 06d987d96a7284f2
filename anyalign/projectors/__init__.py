"""Trainable projectors from encoder tokens into the shared space or an LLM's input space; one file each."""

from __future__ import annotations

from .base import (
    PROJECTORS,
    Projector,
    ProjectorOutput,
    check_projector_options,
    create_projector,
    full_mask,
    list_projectors,
    projector_options,
    register_projector,
)

__all__ = ["PROJECTORS", "Projector", "ProjectorOutput", "check_projector_options", "create_projector", "full_mask",
           "list_projectors", "projector_options", "register_projector"]
