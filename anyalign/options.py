"""Typed options of registered components (encoders, projectors): a dataclass per component (field defaults and
`metadata={"help": ...}`), or one derived from the factory's keyword parameters; `check_options` validates a user's
mapping against it in one line naming the source, the field and the valid options. A dataclass whose class variable
`extra_options` says where unknown keys go accepts them (`check_extra(values, extra, source)` may check them)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Callable
from typing import Any

from .config import ConfigError, _type_name, _type_ok

#: keyword arguments of factories that are not options (the pretrained source, placement, precision)
NOT_OPTIONS = ("pretrained", "device", "autocast", "frozen", "weights_dtype")


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """One option as listed by `anyalign encoders` / `anyalign projectors` (and their `--json`)."""

    name: str
    type: str
    default: Any  # `REQUIRED` when the option has no default
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        """`name (type, default value)` or `name (type, required)`."""
        return f"{self.name} ({self.type}, {'required' if self.required else 'default ' + _show(self.default)})"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "help": self.help, "required": self.required}
        if not self.required:
            out["default"] = self.default
        return out


REQUIRED: Any = dataclasses.MISSING  #: the default of an option that has none


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value, default=repr)


def type_label(tp: Any) -> str:
    """A short readable name for a field annotation: `int`, `float | None`, `list[str]`, `'a' | 'b'`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_label(a) for a in args)
    if tp is type(None):
        return "None"
    if origin is not None and args:
        name = getattr(origin, "__name__", None) or _type_name(origin)
        return f"{name}[{', '.join(type_label(a) for a in args if a is not Ellipsis)}]"
    if tp is Any:
        return "any"
    return _type_name(tp)


def option_fields(cls: type) -> list[OptionInfo]:
    """The options of dataclass `cls` in declaration order."""
    hints = typing.get_type_hints(cls)
    return [OptionInfo(f.name, type_label(hints.get(f.name, Any)),
                       f.default if f.default_factory is dataclasses.MISSING else f.default_factory(),
                       f.metadata.get("help", "")) for f in dataclasses.fields(cls) if f.init]


def describe_options(cls: type, *, with_extra: bool = True) -> str:
    """`a (int, default 1), b (str, default 'x')` (plus where extra keys go), for error messages."""
    parts = [o.describe() for o in option_fields(cls)]
    extra = getattr(cls, "extra_options", "")
    if extra and with_extra:
        parts.append(f"plus {extra}")
    return ", ".join(parts) or "(none)"


def options_from_signature(fn: Callable[..., Any], *, skip: tuple[str, ...] = (), name: str | None = None) -> type:
    """A dataclass of `fn`'s keyword parameters (annotations + defaults) but `skip`, `NOT_OPTIONS`, `self` and
    `*args`; a `**kwargs` parameter allows extra keys."""
    target = fn.__init__ if inspect.isclass(fn) else fn  # type: ignore[misc]
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable annotations in a user's plugin: treat as Any
        hints = {}
    fields: list[tuple[str, Any, Any]] = []
    extra = ""
    for p in sig.parameters.values():
        if p.name in ("self", *skip, *NOT_OPTIONS) or p.kind is p.VAR_POSITIONAL:
            continue
        if p.kind is p.VAR_KEYWORD:
            extra = f"any other keyword (passed to {getattr(fn, '__qualname__', fn)} unchecked)"
            continue
        tp = hints.get(p.name, Any)
        if p.default is p.empty:
            fields.append((p.name, tp, dataclasses.field()))
        elif getattr(p.default, "__hash__", None) is None:  # list, dict, set: dataclasses want a factory
            fields.append((p.name, tp, dataclasses.field(default_factory=lambda d=p.default: copy.deepcopy(d))))
        else:
            fields.append((p.name, tp, dataclasses.field(default=p.default)))
    fields.sort(key=lambda f: f[2].default is not dataclasses.MISSING or f[2].default_factory is not
                dataclasses.MISSING)  # required first, as dataclasses demand (stable sort keeps the order)
    cls_name = name or f"{getattr(fn, '__name__', 'Component')}Options"
    cls = dataclasses.make_dataclass(cls_name, fields)
    cls.extra_options = extra  # type: ignore[attr-defined]
    cls.derived = True  # type: ignore[attr-defined]  # not declared: no help texts
    cls.__doc__ = f"Options derived from the keyword parameters of {getattr(fn, '__qualname__', fn)}."
    return cls


def _coerce(value: Any, tp: Any) -> Any:
    """`value` as the declared type where that is lossless (an int given for a float becomes a float)."""
    if isinstance(value, int) and not isinstance(value, bool):
        floats = tp is float or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                                 and float in typing.get_args(tp) and int not in typing.get_args(tp))
        if floats:
            return float(value)
    return value


def check_options(kind: str, name: str, cls: type, options: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Validate `options` against dataclass `cls` of component `kind` `name`; return the given keys coerced to its
    types, or raise a one-line `ConfigError` naming `source`, the component, the field and the valid options."""
    if not isinstance(options, dict):
        raise ConfigError(f"{source}: {kind} {name!r} options must be a mapping, got {type(options).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    extra_allowed = bool(getattr(cls, "extra_options", ""))
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in options.items():
        where = f"{source} {key}={_show(value)}"
        if key not in fields:
            if key in NOT_OPTIONS:
                raise ConfigError(f"{where}: {key!r} is not an option of {kind} {name!r} but its own setting "
                                  f"(give it as {key}=...); options: {describe_options(cls)}")
            if extra_allowed:
                extra[key] = value
                continue
            raise ConfigError(f"{where}: {kind} {name!r} has no option {key!r}; options: {describe_options(cls)}")
        tp = hints.get(key, Any)
        if not _type_ok(value, tp):
            raise ConfigError(f"{where}: {kind} {name!r} option {key!r} expects {type_label(tp)}, got "
                              f"{type(value).__name__} {_show(value)}; options: {describe_options(cls)}")
        out[key] = _coerce(value, tp)
        low = fields[key].metadata.get("min")
        if low is not None and isinstance(out[key], (int, float)) and out[key] < low:
            raise ConfigError(f"{where}: {kind} {name!r} option {key!r} must be >= {low}")
    missing = [o for o in option_fields(cls) if o.required and o.name not in out]
    if missing:
        raise ConfigError(f"{source}: {kind} {name!r} needs option {missing[0].name!r} ({missing[0].type}); "
                          f"options: {describe_options(cls)}")
    if hasattr(cls, "__post_init__") and not missing:  # the dataclass's own cross-field checks
        try:
            cls(**{**_defaults(cls), **out})
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{source}: {kind} {name!r}: {e}") from None
    if extra:
        check_extra = getattr(cls, "check_extra", None)
        if check_extra is not None:
            extra = check_extra({**_defaults(cls), **out}, extra, source)
        out.update(extra)
    return out


def _defaults(cls: type) -> dict[str, Any]:
    return {o.name: o.default for o in option_fields(cls) if not o.required}


__all__ = ["NOT_OPTIONS", "REQUIRED", "OptionInfo", "check_options", "describe_options", "option_fields",
           "options_from_signature", "type_label"]
