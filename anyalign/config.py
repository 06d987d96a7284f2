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
    if origin is list:
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and (not args or all(_type_ok(v, args[0]) for v in value))
    if origin is tuple:
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            return isinstance(value, (dict, tp))
        return isinstance(value, tp)
    return True


def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config", strict: bool = True) -> C:
    """Build dataclass `cls` from `data`, recursing into nested dataclass fields; `source` names it in errors, and
    unknown keys raise `ConfigError` when `strict` (user recipes), else warn (saved files)."""
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
        sub = next((t for t in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(t)), None)
        reader, mapped = _reader_in(tp)
        if reader is not None and value is not None:  # a type with its own config form (e.g. EncoderSpec)
            where = f"{source}: {name}"
            if mapped:
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: expected a mapping of name -> value, got {value!r}")
                value = {k: reader(v, source=f"{where}.{k}") for k, v in value.items()}
            else:
                value = reader(value, source=where)
        elif sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, source=f"{source}: {name}", strict=strict)
        elif not _type_ok(value, tp):
            values = value if isinstance(value, (list, tuple)) else [value]
            hint = ("; YAML reads unquoted yes/no/on/off/true/false as booleans: quote them (e.g. '[\"on\", \"off\"]')"
                    if any(isinstance(v, bool) for v in values) and "str" in _type_name(tp) else "")
            raise ConfigError(f"{source}: field {name!r} expects {_type_name(tp)}, got {value!r}{hint}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # missing required fields, __post_init__ checks
        raise ConfigError(f"{source}: {e}") from None


def _reader_in(tp: Any) -> tuple[Any, bool]:
    """`(T.__from_config__, is_mapping)` for a field typed `T`, `T | None` or `dict[str, T]`; (None, False) else."""
    for t in (tp, *typing.get_args(tp)):
        if hasattr(t, "__from_config__"):
            return t.__from_config__, False
        if typing.get_origin(t) is dict:
            args = typing.get_args(t)
            if len(args) == 2 and hasattr(args[1], "__from_config__"):
                return args[1].__from_config__, True
    return None, False


def _type_name(tp: Any) -> str:
    if typing.get_args(tp):  # list[str] | None, dict[str, float], ...: the whole annotation
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (recursively)."""
    return dataclasses.asdict(cfg)


MAX_YAML_BYTES = 4 * 2**20  # a recipe is a few KB; larger files are refused before they are read
MAX_YAML_DEPTH = 64  # nesting levels (the composer recurses: deeper input would end in a RecursionError)
MAX_YAML_NODES = 200_000  # values after aliases are expanded (a 1 KB alias bomb expands to billions)


class _LimitError(Exception):
    """A YAML document over one of the limits above."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`), refuses duplicate keys, and bounds
    depth, alias expansion and recursive aliases."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise _LimitError(f"nested deeper than {MAX_YAML_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return self.construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_QUOTED = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\n]|\'\')*\'|#[^\n]*')


def _flow_depth(text: str) -> None:
    """Refuse deeply nested `[[[...` / `{{{...` before PyYAML's scanner, which slows quadratically with the depth."""
    depth = top = 0
    for ch in _QUOTED.sub("", text):
        if ch in "[{":
            depth += 1
            top = max(top, depth)
            if top > MAX_YAML_DEPTH:
                raise _LimitError(f"nested deeper than {MAX_YAML_DEPTH} levels")
        elif ch in "]}":
            depth = max(depth - 1, 0)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Values under `node` with every alias expanded (memoised per node: linear in the document's size)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise _LimitError(f"recursive alias (line {node.start_mark.line + 1}): a value that contains itself")
    open_.add(key)
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_size(child, sizes, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_) for k, v in node.value)
    open_.discard(key)
    if n > MAX_YAML_NODES:
        raise _LimitError(f"expands to more than {MAX_YAML_NODES} values through aliases (an alias bomb?)")
    sizes[key] = n
    return n


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"),
    list("-+0123456789."),
)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> Python values (the one YAML reader of recipes, overrides and `--set` values)."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters of YAML; more than the {MAX_YAML_BYTES} allowed")
    try:
        _flow_depth(text)
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML ({' '.join(str(e).split())})") from None
    except _LimitError as e:
        raise ConfigError(f"{source}: refused: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: refused: nested too deeply") from None


#: variables with a default when unset: the asset cache is where the install command puts the real models
ENV_DEFAULTS = {"ANYALIGN_ASSETS": "~/.cache/anyalign-assets"}


def expand_env(value: Any, where: str = "", extra: dict[str, str] | None = None) -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in every string of a nested structure (`extra` vars first)."""
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k), extra) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]", extra) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if extra and name in extra:
            return extra[name]
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        if name in ENV_DEFAULTS:
            return os.path.expanduser(ENV_DEFAULTS[name])
        raise ConfigError(f"field {where!r}: environment variable {name} is not set (used in {value!r}); "
                          f"export {name}=... or write the path directly")

    return _VAR.sub(sub, value)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML; list items by index: `data.train.0.path=...`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        node: Any = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            if isinstance(node.get(part), str):  # a bare name is short for {name: ...} (e.g. `encoder: imu`)
                node[part] = {"name": node[part]}
            node = node.setdefault(part, {})
        value = parse_yaml(raw, f"override {item!r}")
        if isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
            node[int(parts[-1])] = value
        elif isinstance(node, dict):
            node[parts[-1]] = value
        else:
            raise ConfigError(f"override {item!r}: {parts[-2] if len(parts) > 1 else key!r} is not a section")
    return data


#: the recipes shipped with the package (package data: `anyalign/configs`, the checkout's `configs/`)
RECIPES_DIR = Path(__file__).resolve().parent / "configs"


def shipped_recipes() -> list[str]:
    """Names of the shipped recipes (`load_recipe(name)` reads them)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_file(name: str | os.PathLike) -> Path:
    """A recipe's YAML file: `name` itself when it is a path, else the shipped recipe of that name."""
    path = Path(name)
    if path.suffix or len(path.parts) > 1 or path.exists():
        return path
    shipped = RECIPES_DIR / f"{path.name}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"{name}: no such recipe file or shipped recipe; shipped: {', '.join(shipped_recipes())}")
    return shipped


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML/JSON mapping with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes; a recipe may hold at most {MAX_YAML_BYTES}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    data = parse_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[C], path: str | os.PathLike, overrides: list[str] | None = None, *,
                variables: dict[str, str] | None = None) -> C:
    """Read a user recipe strictly into dataclass `cls`: YAML, `key=value` overrides, `${VAR}` expansion."""
    data = apply_overrides(load_yaml(path), overrides or [])
    try:
        data = expand_env(data, extra=variables)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return from_dict(cls, data, source=str(path), strict=True)


def read_saved(cls: type[C], path: str | os.PathLike, *, what: str,
               upgrade: Any = None) -> C:
    """A config file anyalign wrote, read leniently (unknown keys warn); `what` names the folder kind in errors,
    `upgrade(data, source)` brings older layouts up to date first."""
    from .io import read_json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: not an anyalign {what} folder (missing {path.name})")
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if upgrade is not None:
        data = upgrade(data, str(path))
    return from_dict(cls, data, source=str(path), strict=False)

