"""One generic name -> factory registry, shared by encoders, projectors, losses and index types.

A new component is one decorated function (timm style)::

    @ENCODERS.register("my-encoder")
    def my_encoder(pretrained=None, **overrides) -> Encoder: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists what is."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to factories (functions or classes) of one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a factory under `name` (default: the function's name, `_` -> `-`)."""

        def wrap(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__.replace("_", "-")
            if key in self._items and self._items[key] is not fn:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = fn
            return fn

        return wrap

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered as `name` (importing plugins first when it is unknown), or raise
        naming the known ones."""
        if name not in self._items:
            from .plugins import load_plugins

            load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; expected one of: {known}") from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the component registered as `name`."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Registered names (plugins included), sorted."""
        from .plugins import load_plugins

        load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            from .plugins import load_plugins

            load_plugins()
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
