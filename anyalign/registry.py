"""One generic name -> factory registry (timm style: a new component is one decorated function). Given its package
and decorator name, a registry finds the built-ins by reading their decorator lines without importing them, so asking
for one component imports only its module; plugins register the same way (`anyalign.plugins`)."""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists what is."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to factories (functions or classes) of one kind of component."""

    def __init__(self, kind: str, *, package: str | None = None, decorator: str | None = None) -> None:
        self.kind = kind
        self.package, self.decorator = package, decorator  # where the built-ins are declared, and how
        self._items: dict[str, Callable[..., T]] = {}
        self._declared: dict[str, str] | None = None  # built-in name -> its module (read, not imported)

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a factory under `name` (default: the function's name, `_` -> `-`)."""

        def wrap(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__.replace("_", "-")
            if key in self._items and self._items[key] is not fn:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = fn
            return fn

        return wrap

    def declared(self) -> dict[str, str]:
        """Built-in name -> module, from the `@<decorator>("name", ...)` lines of the package's modules."""
        if self._declared is None:
            self._declared = {}
            if self.package and self.decorator:
                spec = importlib.util.find_spec(self.package)  # the package's folder, its __init__ not run
                for folder in (spec.submodule_search_locations or []) if spec else []:
                    for path in sorted(Path(folder).glob("*.py")):
                        self._declared.update(dict.fromkeys(_decorated(path, self.decorator),
                                                            f"{self.package}.{path.stem}"))
        return self._declared

    def _load(self, name: str | None = None) -> None:
        """Import the built-in module declaring `name` (every declaring module for None), then the plugins when
        `name` is still unknown."""
        from .plugins import load_plugins

        if name is None:
            for module in dict.fromkeys(self.declared().values()):
                importlib.import_module(module)
        elif name not in self._items and name in self.declared():
            importlib.import_module(self.declared()[name])
        if name is None or name not in self._items:
            load_plugins()

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered as `name` (importing its built-in module or the plugins first when it is
        not registered yet), or raise naming the known ones."""
        if name not in self._items:
            self._load(name)
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; expected one of: {known}") from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the component registered as `name`."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Registered names (built-ins and plugins), sorted."""
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and name not in self._items:
            self._load(name)
        return name in self._items


def _decorated(path: Path, decorator: str) -> list[str]:
    """The names a module registers with `@decorator("name", ...)` at module level (not indented, so examples in
    docstrings are not read), read from its source (a name must be a literal)."""
    pattern = re.compile(rf"^@{re.escape(decorator)}\(\s*([\"'])([^\"']+)\1", re.MULTILINE)
    return [m.group(2) for m in pattern.finditer(path.read_text(encoding="utf-8"))]
