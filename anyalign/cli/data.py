"""`anyalign data ...`: commands that make datasets (synthesised speech corpora, LLM paraphrases of captions).

Each command is a function registered on the `data` group below; a new one is a function plus one line.
"""

from __future__ import annotations

import typer

data_app = typer.Typer(help="Make datasets: synthesised speech corpora, caption paraphrases.", no_args_is_help=True)


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
