"""`anyalign transcribe`: Whisper's own decoder on audio files, folders or jsonl lists (the ASR baseline), with the
corpus WER where the inputs carry reference text."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as o

HELP_ORDER = 100  # place of this module's commands in `anyalign --help`


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("transcribe")(transcribe_cmd)


def transcribe_cmd(
    inputs: list[str] = typer.Argument(..., help="Audio files, folders, jsonl/csv/txt lists or globs."),
    whisper: Path = typer.Option(None, "--whisper", help="Whisper checkpoint folder (default: the whisper-tiny.en "
                                                         "asset, `python -m anyalign.assets whisper-tiny.en`)."),
    reference: str = typer.Option("text", "--reference", help="Record field with the spoken text, for WER."),
    no_reference: bool = typer.Option(False, "--no-reference", help="Do not score, even where rows have text."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Clips (30 s windows) decoded together."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=1, help="Tokens per 30 s window at most."),
    output: Path = typer.Option(None, "--output", "-o", help="Also write the rows as jsonl here."),
    device: str = o.DEVICE,
    as_json: bool = o.JSON,
) -> None:
    """Transcribe speech with Whisper's own decoder (greedy, batched); WER when the inputs have reference text."""
    from ..io import write_jsonl
    from ..llm.transcribe import transcribe

    report = transcribe(inputs, whisper, reference=None if no_reference else reference, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, device=o.resolve_device(device), quiet=o.is_quiet())
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(output, [{"key": r["key"], "audio": r["audio"], "text": r["transcript"],
                              "reference": r["reference"]} for r in report["rows"]])
    if as_json:
        o.echo_json(report)
        return
    for r in report["rows"]:
        typer.echo(f"{r['key']}\t{r['transcript']}")
    if report["wer"] is not None:
        typer.echo(f"WER {report['wer']:.4f} over {report['n_scored']} of {report['n']} clips "
                   f"({report['reference_words']} reference words; Whisper's English normaliser)")

