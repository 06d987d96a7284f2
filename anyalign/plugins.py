"""Out-of-tree extensions: encoders, projectors, tasks and data kinds defined in a user's own package.

A plugin is a module that registers components when imported (`@register_encoder`, `@register_projector`,
`@register_task`, `@register_data_kind`, the same decorators the built-ins use). anyalign imports plugins from
the entry-point group `anyalign.plugins` (in the plugin's `pyproject.toml`:
`[project.entry-points."anyalign.plugins"] myenc = "my_package.anyalign_plugin"`), from the environment variable
`ANYALIGN_PLUGINS=module[,module]`, and from the CLI's `--plugin module` (repeatable). Every registry asks for
plugins before it answers, so every command finds them.
"""

from __future__ import annotations

import importlib
import logging
import os
from importlib.metadata import entry_points

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "anyalign.plugins"
ENV_VAR = "ANYALIGN_PLUGINS"
_loaded: set[str] = set()
_scanned = False


class PluginError(ImportError):
    """A named plugin module cannot be imported; the message names it and where it was named."""


def load_plugins(extra: list[str] | None = None) -> list[str]:
    """Import every plugin not imported yet (entry points, `ANYALIGN_PLUGINS`, `extra`); returns the new ones."""
    global _scanned
    wanted: list[tuple[str, str]] = []
    if not _scanned:
        _scanned = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            wanted.append((ep.value.split(":")[0], f"entry point {ep.name!r} ({ep.group})"))
    for name in os.environ.get(ENV_VAR, "").split(","):
        if name.strip():
            wanted.append((name.strip(), ENV_VAR))
    wanted += [(name, "--plugin") for name in extra or []]
    new = []
    for module, where in wanted:
        if module in _loaded:
            continue
        _loaded.add(module)
        try:
            importlib.import_module(module)
        except ImportError as e:
            _loaded.discard(module)
            raise PluginError(f"plugin {module!r} (from {where}) cannot be imported: {e}") from None
        logger.info("plugin %s loaded (from %s)", module, where)
        new.append(module)
    return new


__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "PluginError", "load_plugins"]
