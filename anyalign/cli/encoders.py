"""`anyalign encoders` and `anyalign projectors`: list what is registered, with each one's options.

Plain text (names and values are never truncated, whatever the terminal width) or `--json`.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from . import options as o

HELP_ORDER = 10  # place of this module's commands in `anyalign --help`


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("encoders")(list_encoders_cmd)
    app.command("projectors")(list_projectors_cmd)


def _options(cls: type) -> tuple[list[dict[str, Any]], str]:
    from ..options import option_fields

    return [o.as_dict() for o in option_fields(cls)], getattr(cls, "extra_options", "")


def _option_lines(options: list[dict[str, Any]], extra: str) -> list[str]:
    """`  name  type = default  help` lines, columns aligned."""
    if not options and not extra:
        return ["  options: none"]
    rows = [(o["name"], f"{o['type']} " + ("(required)" if o["required"] else f"= {_value(o['default'])}"),
             o["help"]) for o in options]
    w0 = max((len(r[0]) for r in rows), default=0)
    w1 = max((len(r[1]) for r in rows), default=0)
    lines = ["  options:"] + [f"    {a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows]
    if extra:
        lines.append(f"    plus {extra}")
    return lines


def _value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else repr(v)


def list_encoders_cmd(
    name: str = typer.Argument(None, help="Show only this encoder."),
    modality: str = typer.Option(None, help="Only encoders of this modality."),
    as_json: bool = o.JSON,
) -> None:
    """List registered encoders: modality, dims, default model, expected input and options (with defaults)."""
    from ..encoders import encoder_info, list_encoders
    from ..encoders.registry import encoder_options

    names = [name] if name else list_encoders(modality)
    items = []
    for n in names:
        info = encoder_info(n)
        options, extra = _options(encoder_options(n))
        items.append({**info.__dict__, "options": options, "extra_options": extra})
    if as_json:
        o.echo_json(items)
        return
    for i, it in enumerate(items):
        if i:
            typer.echo("")
        typer.echo(f"{it['name']}  ({it['modality']}; token dim {it['token_dim']}, pooled dim {it['pooled_dim']})")
        if it["default_model"]:
            typer.echo(f"  default model: {it['default_model']}")
        typer.echo(f"  input: {it['input_spec']}")
        for line in _option_lines(it["options"], it["extra_options"]):
            typer.echo(line)


def list_projectors_cmd(
    name: str = typer.Argument(None, help="Show only this projector."),
    as_json: bool = o.JSON,
) -> None:
    """List registered projectors: the design each follows and its options (with defaults)."""
    from ..projectors import PROJECTORS, list_projectors, projector_options

    known = list_projectors()
    items = []
    for n in [name] if name else known:
        doc = (PROJECTORS.get(n).__doc__ or "").strip().splitlines()
        options, extra = _options(projector_options(n))
        items.append({"name": n, "design": doc[0] if doc else "", "options": options, "extra_options": extra})
    if as_json:
        o.echo_json(items)
        return
    for i, it in enumerate(items):
        if i:
            typer.echo("")
        typer.echo(f"{it['name']}  {it['design']}".rstrip())
        for line in _option_lines(it["options"], it["extra_options"]):
            typer.echo(line)
