"""`anyalign train CONFIG [key=value ...] [--resume] [--output DIR]`: run one alignment recipe.

Multi-process: `accelerate launch --num_processes N -m anyalign.cli.main train CONFIG` (DDP; FSDP through an
accelerate config file). `train.batch_size` is the global batch, split across the processes.
"""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as o

HELP_ORDER = 30  # place of this module's commands in `anyalign --help`


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("train")(train_cmd)


def train_cmd(
    config: Path = typer.Argument(..., help="Recipe YAML, or a shipped recipe by name (e.g. imu_text_contrastive)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. train.max_steps=200 train.lr=3e-4"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in the output folder."),
    output: Path = typer.Option(None, "--output", "-o", help="Output folder (default: the recipe's output_dir)."),
    as_json: bool = o.JSON,
) -> None:
    """Train adapters from paired data: contrastive binding, LLM caption alignment or joint instruction tuning."""
    from ..align import TrainingError, load_recipe, train
    from .options import CLIError

    recipe = load_recipe(config, list(overrides or []))
    try:
        if recipe.progressive is not None:  # OneLLM's stages, one after another (align/progressive.py)
            from ..align.progressive import format_table, train_progressive

            report = train_progressive(recipe, output_dir=output, resume=resume)
            if as_json:
                o.echo_json(report)
            else:
                typer.echo(format_table(report["stages"]))
            return
        result = train(recipe, output_dir=output, resume=resume)
    except TrainingError as e:
        raise CLIError(str(e)) from None
    if result.adapters and as_json:  # main process
        o.echo_json({"output_dir": str(result.output_dir), "step": result.step,
                     "adapters": {m: str(p) for m, p in result.adapters.items()}, "metrics": result.metrics,
                     "curves": None if result.curves is None else str(result.curves)})
    elif result.adapters:
        typer.echo(f"trained {result.step} steps -> {result.output_dir}")
        for modality, path in result.adapters.items():
            typer.echo(f"  adapter {modality}: {path}")
        for key, value in sorted(result.metrics.items()):
            typer.echo(f"  {key}: {value:.4f}")
        if result.curves is not None:
            typer.echo(f"  curves: {result.curves}")
