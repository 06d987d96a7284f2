"""Out-of-tree extensions: modules that register components with the built-ins' decorators, imported from the entry
point group `anyalign.plugins`, `ANYALIGN_PLUGINS=module[,module]` and the CLI's `--plugin module`."""

from __future__ import annotations

import importlib
import logging
import os
import re
from importlib.metadata import entry_points

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "anyalign.plugins"
ENV_VAR = "ANYALIGN_PLUGINS"
_loaded: set[str] = set()
_scanned = False


class PluginError(ImportError):
    """A named plugin module cannot be imported; the message names it and where it was named."""


_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def load_plugins(extra: list[str] | None = None) -> list[str]:
    """Import every plugin not imported yet (entry points, `ANYALIGN_PLUGINS`, `extra`); returns the new ones. One
    named with `--plugin` that fails raises `PluginError`; one from the environment is disabled with a warning."""
    global _scanned
    wanted: list[tuple[str, str, bool]] = []  # (module, where it was named, strict)
    if not _scanned:
        _scanned = True
        try:
            eps = list(entry_points(group=ENTRY_POINT_GROUP))
        except Exception as e:  # noqa: BLE001 - broken package metadata must not break every command
            logger.warning("plugins: cannot list the %r entry points (%s: %s); none loaded", ENTRY_POINT_GROUP,
                           type(e).__name__, e)
            eps = []
        for ep in eps:
            wanted.append((ep.value.split(":")[0].strip(), f"entry point {ep.name!r} ({ep.group})", False))
    for name in os.environ.get(ENV_VAR, "").split(","):
        if name.strip():
            wanted.append((name.strip(), ENV_VAR, False))
    wanted += [(name, "--plugin", True) for name in extra or []]
    new = []
    for module, where, strict in wanted:
        if module in _loaded:
            continue
        _loaded.add(module)
        problem = _import(module)
        if problem is None:
            logger.info("plugin %s loaded (from %s)", module, where)
            new.append(module)
            continue
        message = f"plugin {module!r} (from {where}) cannot be loaded: {problem}"
        if strict:
            _loaded.discard(module)
            raise PluginError(message)
        logger.warning("%s; disabled (fix or uninstall it)", message)
    return new


def _import(module: str) -> str | None:
    """Import `module`; None on success, else the reason in one line."""
    if not _MODULE_NAME.fullmatch(module):
        return "expected a module name such as my_package.anyalign_plugin (not a file path)"
    try:
        importlib.import_module(module)
    except BaseException as e:  # noqa: BLE001 - any failure of a plugin's own code (SystemExit included)
        if isinstance(e, KeyboardInterrupt) or type(e).__name__ == "Interrupted":
            raise
        text = " ".join(str(e).split())
        return f"{type(e).__name__}: {text}" if text else type(e).__name__
    return None


__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "PluginError", "load_plugins"]
