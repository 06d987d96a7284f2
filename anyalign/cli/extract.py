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
    model: str = typer.Option(None, help="Encoder architecture, e.g. a timm model name (same as --set model=NAME)."),
    batch_size: int = typer.Option(32, min=1),
    num_workers: int = typer.Option(2, min=0, help="DataLoader workers decoding and collating files."),
    shard_size: int = typer.Option(1000, min=1, help="Samples per output shard."),
    autocast: str = typer.Option(None, help="bf16 (or fp16) to run the encoder under autocast; default fp32."),
    device: str = typer.Option(None, help="torch device (default: CPU, or this rank's GPU under accelerate)."),
    set_: list[str] = typer.Option(None, "--set", help="Encoder option key=value (repeatable), e.g. window_seconds=5"),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Run a frozen encoder over inputs once and write token/pooled features + metadata shards, resumably.

    Several processes (each writes its own shards): `torchrun --nproc_per_node N -m anyalign.cli.main extract ...`
    or `accelerate launch --multi_gpu --num_processes N -m anyalign.cli.main extract ...` (also on CPU-only hosts;
    accelerate's `--cpu` multi-process mode needs MPI).
    """
    from ..encoders.extract import check_feature_output, extract, process_state
    from ..encoders.inputs import discover_inputs, encoder_class
    from ..encoders.spec import EncoderSpec
    from ..features import read_manifest

    spec = EncoderSpec.from_cli(encoder, pretrained, list(set_ or []) + ([f"model={model}"] if model else []),
                                autocast)  # unknown encoder or option: fail before anything loads
    check_feature_output(output, input)  # before the inputs are listed or a model loads
    cls = encoder_class(encoder, declared_inputs=True)
    items = discover_inputs(input, cls) if cls is not None else None  # wrong inputs, too
    state = process_state()
    enc = spec.build(device=device or (state.device if state.device.type == "cuda" else None))
    summary = extract(enc, input, output, batch_size=batch_size, num_workers=num_workers, shard_size=shard_size,
                      spec=spec, progress=progress, items=items)
    who = f"rank {state.process_index}: " if state.num_processes > 1 else ""
    typer.echo(f"{who}{summary.n_ok} extracted, {summary.n_failed} failed, {summary.shards_written} shards written, "
               f"{summary.shards_skipped} already done ({summary.n_new} new in {summary.seconds:.1f} s, "
               f"{summary.throughput:.1f} samples/s)")
    for f in summary.failures:
        typer.echo(f"  failed: {f['source']}: {f['error']}", err=True)
    if state.is_main_process:
        manifest = read_manifest(output)
        state_note = "" if manifest["complete"] else " (incomplete: rerun to resume)"
        typer.echo(f"{output}: {manifest['count']} samples in {len(manifest['shards'])} shards, "
                   f"{manifest['n_failed']} failed{state_note}")

