"""`anyalign extract`: cache a frozen encoder's features over a corpus as webdataset shards."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as o

HELP_ORDER = 20  # place of this module's commands in `anyalign --help`


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    app.command("extract")(extract_cmd)


def extract_cmd(
    encoder: str = o.ENCODER,
    input: Path = typer.Option(..., "--input", "-i", help="Folder, .jsonl/.txt list, or webdataset .tar shards."),
    output: Path = typer.Option(..., "--output", "-o", help="Feature folder to write (resumes if it exists)."),
    pretrained: str = o.PRETRAINED, set_: list[str] = o.SET, autocast: str = o.AUTOCAST,
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    workers: int = o.WORKERS,
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Samples per output shard."),
    device: str = o.DEVICE,
    as_json: bool = o.JSON,
) -> None:
    """Run a frozen encoder over inputs once and write token/pooled features + metadata shards, resumably.

    Several processes (each writes its own shards): `torchrun --nproc_per_node N -m anyalign.cli.main extract ...`
    or `accelerate launch --multi_gpu --num_processes N -m anyalign.cli.main extract ...` (also on CPU-only hosts;
    accelerate's `--cpu` multi-process mode needs MPI).
    """
    from ..encoders.extract import check_feature_output, extract, process_state
    from ..encoders.inputs import discover_inputs
    from ..encoders.registry import encoder_class
    from ..features import read_manifest
    from .options import CLIError

    if encoder is None:
        raise CLIError("extract needs --encoder NAME (see `anyalign encoders`)")
    spec = o.encoder_spec(encoder, pretrained, set_, autocast)  # unknown encoder or option: fail before loading
    check_feature_output(output, input)  # before the inputs are listed or a model loads
    cls = encoder_class(encoder, declared_inputs=True)
    items = discover_inputs(input, cls) if cls is not None else None  # wrong inputs, too
    state = process_state()
    enc = spec.build(device=device or (state.device if state.device.type == "cuda" else "cpu"))
    summary = extract(enc, input, output, batch_size=batch_size, num_workers=workers, shard_size=shard_size,
                      spec=spec, progress=not o.is_quiet(), items=items)
    who = f"rank {state.process_index}: " if state.num_processes > 1 else ""
    if as_json:
        if state.is_main_process:
            manifest = read_manifest(output)
            o.echo_json({"output": str(output), "rank": state.process_index, "extracted": summary.n_ok,
                         "failed": summary.n_failed, "failures": summary.failures, "seconds": summary.seconds,
                         "count": manifest["count"], "shards": len(manifest["shards"]),
                         "complete": manifest["complete"]})
        return
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

