"""`anyalign quickstart`: the main job end to end on real offline data, with an HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as o
from .options import CLIError

HELP_ORDER = 70  # place of this module's commands in `anyalign --help`


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("quickstart")(quickstart_cmd)


def quickstart_cmd(
    output: Path = typer.Option(Path("quickstart-report"), "--output", "-o", help="Report folder."),
    assets: Path = typer.Option(None, help="Asset cache (default: $ANYALIGN_ASSETS or ~/.cache/anyalign-assets)."),
    fast: bool = typer.Option(False, "--fast", help="Reduced mode: a few training steps (for smoke tests)."),
    contrastive_steps: int = typer.Option(300, help="IMU-text binding steps."),
    caption_steps: int = typer.Option(20, help="LLM alignment steps."),
    speech_steps: int = typer.Option(150, help="Speech words-head (CTC) training steps."),
    speech_llm_steps: int = typer.Option(40, help="Speech-to-LLM alignment steps."),
    as_json: bool = o.JSON,
) -> None:
    """Train an IMU adapter on real data, classify zero-shot, search across modalities, ask an LLM; write a report."""
    from ..assets import AssetError
    from ..demos.quickstart import QuickstartOptions, run_quickstart

    opts = QuickstartOptions(output=output, assets=assets, fast=fast, contrastive_steps=contrastive_steps,
                             caption_steps=caption_steps, speech_steps=speech_steps,
                             speech_llm_steps=speech_llm_steps)
    try:
        result = run_quickstart(opts, say=o.say if as_json or o.is_quiet() else typer.echo)
    except AssetError as e:
        raise CLIError(f"{e}") from None
    if as_json:
        o.echo_json({"report": str(result.report.resolve()), "metrics": result.metrics})
        return
    m = result.metrics
    imu, u = m["imu"], m["images"]["unseen_protocol"]
    typer.echo(f"images, unseen classes: H {u['harmonic_mean']:.2f} (calibrated; chance {u['chance_all']:.2f}); "
               f"IMU new wordings {imu['new_wordings_top1']:.1%}, closed set {imu['closed_set_top1']:.1%} (chance "
               f"{imu['chance']:.0%}); done in {m['seconds']:.0f} s")
    typer.echo(f"report: {result.report.resolve()}")
