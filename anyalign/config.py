"""Dataclass configs with YAML/JSON io and `key=value` overrides.

A user's recipe is read strictly: an unknown key or a wrong type fails, naming the file and the field.
A saved config (written by anyalign itself) is read leniently: unknown keys only warn, so newer files
still load in older versions (peft's forward compatibility).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

logger = logging.getLogger(__name__)
C = TypeVar("C")


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the source and the field."""


def _type_ok(value: Any, tp: Any) -> bool:
    """Loose runtime check of `value` against a dataclass field annotation."""
    if tp is Any or tp is object:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            return isinstance(value, (dict, tp))
        return isinstance(value, tp)
    return True


def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config", strict: bool = True) -> C:
    """Build dataclass `cls` from `data`, recursing into nested dataclass fields.

    Args:
        source: name used in error messages (a file path, or "config").
        strict: unknown keys raise `ConfigError` (user recipes); otherwise they warn (saved files).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        msg = f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; expected: {', '.join(fields)}"
        if strict:
            raise ConfigError(msg)
        logger.warning(msg + " (ignored)")
    kwargs: dict[str, Any] = {}
    for name in fields:
        if name not in data:
            continue
        value, tp = data[name], hints[name]
        sub = _dataclass_in(tp)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, source=f"{source}: {name}", strict=strict)
        elif not _type_ok(value, tp):
            raise ConfigError(f"{source}: field {name!r} expects {_type_name(tp)}, got {value!r}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{source}: {e}") from None
    except ValueError as e:  # __post_init__ checks
        raise ConfigError(f"{source}: {e}") from None


def _dataclass_in(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (recursively)."""
    return dataclasses.asdict(cfg)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML/JSON mapping with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML scalars) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = parse_scalar(raw)
    return data


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


def parse_scalar(raw: str) -> Any:
    """A YAML value, except that `1e-4` is a float (YAML 1.1 reads exponents without a dot as strings)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def load_config(cls: type[C], path: str | os.PathLike, overrides: list[str] | None = None) -> C:
    """Read a user recipe strictly into dataclass `cls`, after `key=value` overrides."""
    data = apply_overrides(load_yaml(path), overrides or [])
    return from_dict(cls, data, source=str(path), strict=True)
