"""Shared projectors: one projector instance used by several modality adapters (tied weights), saved once.

A recipe declares `projectors: {upm: {name: universal, ...}}` and adapters name it (`llm_projector: upm`). On disk
it sits once in `adapters/_shared/<name>/` (spec + users in JSON, weights in safetensors); each adapter using it
records `{"name", "path", "sha256", "format_version"}` in its config's `shared` field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..fingerprint import file_sha256
from ..io import load_weights, read_json, save_weights, write_json
from ..version import __version__
from .base import Projector, projector_from_spec

SHARED_DIR = "_shared"
SHARED_CONFIG = "anyalign_projector.json"
SHARED_WEIGHTS = "anyalign_projector.safetensors"
SHARED_FORMAT_VERSION = 1  # 1: spec + users in JSON, weights in safetensors, referenced by sha256


def save_shared_projector(directory: str | os.PathLike, name: str, projector: Projector,
                          users: list[str]) -> dict[str, Any]:
    """Write a shared projector into `directory` and return its reference `{name, sha256, format_version}`."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in projector.state_dict().items()}
    save_weights(path / SHARED_WEIGHTS, state, metadata={"format": "anyalign-shared-projector",
                                                         "format_version": str(SHARED_FORMAT_VERSION)})
    write_json(path / SHARED_CONFIG, {"name": name, "projector": projector.spec(), "users": list(users),
                                      "format_version": SHARED_FORMAT_VERSION, "anyalign_version": __version__})
    return {"name": name, "sha256": file_sha256(path / SHARED_WEIGHTS), "format_version": SHARED_FORMAT_VERSION}


def read_shared_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The JSON record of a saved shared projector (spec, users, version); errors name the file."""
    path = Path(directory) / SHARED_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shared projector here (expected {SHARED_CONFIG})")
    data = read_json(path)
    version = int(data.get("format_version", 0))
    if not 1 <= version <= SHARED_FORMAT_VERSION:
        raise ValueError(f"{path}: shared projector format_version {version} is not readable by anyalign "
                         f"{__version__} (reads 1..{SHARED_FORMAT_VERSION})")
    if not isinstance(data.get("projector"), dict) or "name" not in data["projector"]:
        raise ValueError(f"{path}: field 'projector' must be a projector spec with a 'name'")
    return data


def load_shared_state(directory: str | os.PathLike, *, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The weights of a saved shared projector, checked against the fingerprint an adapter recorded."""
    path = Path(directory) / SHARED_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shared projector weights missing")
    if sha256 is not None and file_sha256(path) != sha256:
        raise ValueError(f"{path}: this shared projector was rewritten after the adapter using it was saved "
                         f"(sha256 differs from the adapter's record); save the adapters again together")
    return load_weights(path)


def load_shared_projector(directory: str | os.PathLike, *, sha256: str | None = None) -> Projector:
    """Rebuild a saved shared projector, its weights checked against the fingerprint an adapter recorded."""
    spec = read_shared_config(directory)["projector"]
    proj = projector_from_spec(spec)
    missing, unexpected = proj.load_state_dict(load_shared_state(directory, sha256=sha256), strict=False)
    if missing or unexpected:
        raise ValueError(f"{Path(directory) / SHARED_WEIGHTS}: weights do not match {SHARED_CONFIG} "
                         f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})")
    return proj


__all__ = ["SHARED_CONFIG", "SHARED_DIR", "SHARED_FORMAT_VERSION", "SHARED_WEIGHTS", "load_shared_projector",
           "load_shared_state", "read_shared_config", "save_shared_projector"]
