"""`anyalign extract`: cache a frozen encoder's features over a corpus as webdataset shards."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("extract")(extract_cmd)


def extract_cmd(
    encoder: str = typer.Option(..., "--encoder", "-e", help="Registered encoder name (see `anyalign encoders`)."),
    input: Path = typer.Option(..., "--input", "-i", help="Folder, .jsonl/.txt list, or webdataset .tar shards."),
    output: Path = typer.Option(..., "--output", "-o", help="Feature folder to write (resumes if it exists)."),
    pretrained: str = typer.Option(None, help="Encoder weights: hub id, open_clip tag, local file or folder."),
    batch_size: int = typer.Option(32, min=1),
    num_workers: int = typer.Option(2, min=0, help="DataLoader workers decoding files."),
    shard_size: int = typer.Option(1000, min=1, help="Samples per output shard."),
    autocast: str = typer.Option(None, help="bf16 to run the encoder under bfloat16 autocast."),
    device: str = typer.Option(None, help="torch device (default: CPU, or this rank's GPU under accelerate)."),
    set_: list[str] = typer.Option(None, "--set", help="Encoder option key=value (repeatable), e.g. model=ViT-B-16"),
) -> None:
    """Run a frozen encoder over inputs once and write token/pooled features + metadata shards, resumably."""
    from ..config import parse_scalar
    from ..encoders import create_encoder
    from ..encoders.extract import extract, process_state
    from .main import CLIError

    overrides = {}
    for item in set_ or []:
        if "=" not in item:
            raise CLIError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        overrides[key] = parse_scalar(raw)
    state = process_state()
    enc = create_encoder(encoder, pretrained=pretrained, autocast=autocast,
                         device=device or (state.device if state.device.type == "cuda" else None), **overrides)
    summary = extract(enc, input, output, batch_size=batch_size, num_workers=num_workers, shard_size=shard_size,
                      spec={"pretrained": pretrained, "encoder_kwargs": overrides})
    typer.echo(f"rank {state.process_index}: {summary.n_ok} extracted, {summary.n_failed} failed, "
               f"{summary.shards_written} shards written, {summary.shards_skipped} already done "
               f"({summary.samples_per_second:.1f} samples/s) -> {output}")
    for f in summary.failures:
        typer.echo(f"  failed: {f['source']}: {f['error']}", err=True)
