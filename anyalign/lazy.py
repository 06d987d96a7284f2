"""Package attributes imported on first use (PEP 562): `import anyalign` or `anyalign.retrieval` stays cheap, and a
command that only searches vectors never loads torch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, table: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package` whose names (`table`: name -> relative module) load on first use;
    a loaded name is stored in the package, so later lookups skip `__getattr__`."""
    namespace = sys.modules[package].__dict__  # the package being imported (call it from its __init__)

    def getattr_(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(table[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted({*namespace, *table})

    return getattr_, dir_


__all__ = ["lazy_exports"]
