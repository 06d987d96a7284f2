"""`anyalign encoders` and `anyalign projectors`: list what is registered."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("encoders")(list_encoders_cmd)
    app.command("projectors")(list_projectors_cmd)


def list_encoders_cmd(
    modality: str = typer.Option(None, help="Only encoders of this modality."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List registered encoders: modality, token dim, pooled dim and expected input (default variant)."""
    from ..encoders import encoder_info, list_encoders

    infos = [encoder_info(n) for n in list_encoders(modality)]
    if as_json:
        typer.echo(json.dumps([i.__dict__ for i in infos], indent=2))
        return
    table = Table(title="anyalign encoders")
    for col in ("name", "modality", "token dim", "pooled dim", "default model", "input"):
        table.add_column(col)
    for i in infos:
        table.add_row(i.name, i.modality, str(i.token_dim), str(i.pooled_dim), i.default_model, i.input_spec)
    Console().print(table)


def list_projectors_cmd() -> None:
    """List registered projectors with the design each follows."""
    from ..projectors import PROJECTORS, list_projectors

    table = Table(title="anyalign projectors")
    table.add_column("name")
    table.add_column("design")
    for name in list_projectors():
        doc = (PROJECTORS.get(name).__doc__ or "").strip().splitlines()
        table.add_row(name, doc[0] if doc else "")
    Console().print(table)
