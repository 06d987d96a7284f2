"""Shared projectors in a recipe: one instance per `projectors:` entry, attached to every adapter that names it.

The adapters hold the same module (tied weights), so the optimizer, DDP and checkpoints see one set of parameters;
saved runs keep it once in `adapters/_shared/<name>/` (projectors/shared.py).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..projectors import Projector, check_projector_options, create_projector
from ..projectors.shared import SHARED_CONFIG, SHARED_DIR, load_shared_projector
from ..projectors.universal import UniversalProjector

logger = logging.getLogger(__name__)


class SharedProjectors:
    """A recipe's shared projectors (`projectors:`), each built when its first adapter asks for it; a "universal"
    projector gains each further user as a modality (`add_modality`: its own input projection, modality tokens and
    router; the experts stay shared). `init_from` continues from a saved `_shared/<name>` folder (a previous stage),
    whose weights are kept bit-exactly; modalities new in this stage are added to it. Random parts are seeded from
    the recipe seed, the projector name and the modality, so they do not depend on build order."""

    _FILLED = ("name", "init_from", "in_dim", "out_dim", "modalities", "in_dims")

    def __init__(self, specs: dict[str, dict[str, Any]], *, seed: int = 0) -> None:
        self.specs = specs
        self.seed = seed
        self.built: dict[str, Projector] = {}
        for name, spec in specs.items():
            filled = sorted(k for k in ("in_dim", "out_dim", "modalities", "in_dims") if k in spec)
            if filled:
                raise ConfigError(f"projectors.{name}: {', '.join(filled)} are filled in from the adapters that "
                                  f"use it; remove them")
            filled_in = {"modalities": [name]} if spec["name"] == "universal" else {}  # from its users, later
            check_projector_options(spec["name"], {**filled_in, **self.options(name)}, source=f"projectors.{name}")

    def options(self, name: str) -> dict[str, Any]:
        return {k: v for k, v in self.specs[name].items() if k not in self._FILLED}

    def _seed(self, *parts: str) -> None:
        torch.manual_seed(self.seed * 7919 + zlib.crc32("/".join(("shared", *parts)).encode()) % 7919)

    def attach(self, name: str, modality: str, *, in_dim: int, out_dim: int) -> Projector:
        """The shared projector `name`, ready for `modality`'s tokens of width `in_dim`."""
        where = f"projectors.{name}"
        proj = self.built.get(name)
        if proj is None:
            proj = self.built[name] = self._build(name, modality, in_dim=in_dim, out_dim=out_dim)
        if proj.out_dim != out_dim:
            raise ValueError(f"{where}: output width {proj.out_dim}, but adapters.{modality} needs {out_dim}")
        if isinstance(proj, UniversalProjector):
            if modality not in proj.modalities:
                self._seed(name, modality)
                proj.add_modality(modality, in_dim=in_dim)
            elif proj.inputs[modality].in_features != in_dim:
                raise ValueError(f"{where}: modality {modality!r} was saved with width "
                                 f"{proj.inputs[modality].in_features}, but its features now have width {in_dim}")
        elif proj.in_dim != in_dim:
            raise ValueError(f"{where}: a {proj.name!r} projector takes width {proj.in_dim}, but adapters.{modality} "
                             f"gives {in_dim}; share a 'universal' projector between modalities of different widths")
        return proj

    def _build(self, name: str, modality: str, *, in_dim: int, out_dim: int) -> Projector:
        spec, opts = self.specs[name], self.options(name)
        if spec.get("init_from"):
            proj = load_shared_projector(shared_folder(spec["init_from"], name))
            saved = {k: v for k, v in proj.spec().items() if k not in self._FILLED}
            differ = {k: (saved.get(k), v) for k, v in opts.items() if saved.get(k) != v}
            if proj.name != spec["name"] or differ:
                raise ValueError(f"projectors.{name}.init_from={spec['init_from']}: saved as {proj.name!r} with "
                                 f"{saved}; this recipe asks for {spec['name']!r} with {opts}")
            logger.info("projectors.%s: continuing from %s (modalities %s)", name, spec["init_from"],
                        proj.config.get("modalities"))
            return proj
        self._seed(name)
        if spec["name"] == "universal":
            opts = {**opts, "modalities": [modality]}
        return create_projector(spec["name"], in_dim=in_dim, out_dim=out_dim, **opts)


def shared_folder(path: str, name: str) -> Path:
    """A saved shared projector's folder: `path` itself, or `path/_shared/<name>`, or `path/adapters/_shared/<name>`
    (a stage's run folder)."""
    for cand in (Path(path), Path(path) / SHARED_DIR / name, Path(path) / "adapters" / SHARED_DIR / name):
        if (cand / SHARED_CONFIG).is_file():
            return cand
    raise FileNotFoundError(f"projectors.{name}.init_from={path}: no saved shared projector there (looked for "
                            f"{SHARED_CONFIG} in it, in {SHARED_DIR}/{name} and in adapters/{SHARED_DIR}/{name})")


__all__ = ["SharedProjectors", "shared_folder"]
