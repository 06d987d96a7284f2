"""Options shared by the commands, written once: the encoder spec group (`--adapter DIR` or `--encoder NAME
--pretrained P --set k=v --autocast A`, and its `--text-` variant for the other side of a space), workers, device,
`--json`, `--quiet` (added to every command by `AnyalignGroup`), and the replaced flags' one-line errors."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup


class CLIError(Exception):
    """An error the CLI reports as one line, without a traceback."""

ENCODER = typer.Option(None, "--encoder", "-e", help="Encoder spec: a registered encoder (see `anyalign encoders`).")
PRETRAINED = typer.Option(None, "--pretrained", help="Encoder spec: weights of --encoder (folder, file, tag or hub "
                                                     "id; default: the encoder's own).")
SET = typer.Option(None, "--set", help="Encoder spec: option key=value of --encoder (repeatable), e.g. "
                                       "--set model=ViT-B-32 or --set num_frames=4.")
AUTOCAST = typer.Option(None, "--autocast", help="Encoder spec: precision of the encoder: auto, bf16, fp16 or fp32 "
                                                 "(default fp32).")
ADAPTER = typer.Option(None, "--adapter", help="Encoder spec: a trained adapter folder (it records its encoder and "
                                               "space), instead of --encoder.")
TEXT_ENCODER = typer.Option(None, "--text-encoder", help="Text side: a registered encoder or a text adapter folder "
                                                         "(default: the text side the space records).")
TEXT_PRETRAINED = typer.Option(None, "--text-pretrained", help="Text side: weights of --text-encoder.")
TEXT_SET = typer.Option(None, "--text-set", help="Text side: option key=value of --text-encoder (repeatable).")
TEXT_AUTOCAST = typer.Option(None, "--text-autocast", help="Text side: precision of --text-encoder: auto, bf16, "
                                                           "fp16 or fp32 (default fp32).")
WORKERS = typer.Option(0, "--workers", min=0, help="DataLoader worker processes decoding inputs (0: decode in this "
                                                   "process).")
DEVICE = typer.Option(None, "--device", help="torch device: cpu, cuda, cuda:1 ... (default: cuda when available, "
                                             "this rank's GPU under a launcher; else cpu).")
JSON = typer.Option(False, "--json", help="Print the result as one JSON document on stdout.")
QUIET_HELP = "No progress bars or log lines below errors; only the result on stdout."

REPLACED = {  # flag -> what replaced it
    "--bf16": "--autocast bf16",
    "--clip-model": "--set model=NAME (the open_clip architecture of --clip)",
    "--model": "--set model=NAME",
    "--num-workers": "--workers N",
    "--embedder": "--adapter DIR or --encoder NAME [--pretrained P] [--set k=v] (and --text-encoder ... for text "
                  "queries); the encoder:NAME@P syntax is gone",
    "--progress": "(progress bars are on by default; --quiet turns them off)",
    "--no-progress": "--quiet",
}
_quiet = False
QUIET_ENV = ("TQDM_DISABLE", "ANYALIGN_QUIET")  # tqdm reads TQDM_DISABLE itself
QUIET_LOGGERS = ("", "transformers", "huggingface_hub", "accelerate")  # "": the root logger


def replaced_flag(args: list[str]) -> str | None:
    """A one-line error for the first replaced flag in `args` (before a `--`), else None."""
    for arg in args:
        if arg == "--":
            break
        flag = arg.split("=", 1)[0]
        if flag in REPLACED:
            return f"{flag} was replaced: use {REPLACED[flag]}"
    return None


def is_quiet() -> bool:
    """Whether `--quiet` was given (or ANYALIGN_QUIET is set)."""
    return _quiet or os.environ.get("ANYALIGN_QUIET", "") not in ("", "0")


def set_quiet(ctx: Any, param: Any, value: bool) -> bool:
    """`--quiet`: progress bars off (tqdm's TQDM_DISABLE), logging at ERROR."""
    global _quiet
    if value:
        _quiet = True
        for k in QUIET_ENV:
            os.environ[k] = "1"
        for name in QUIET_LOGGERS:
            logging.getLogger(name or None).setLevel(logging.ERROR)
    return value


def say(text: str) -> None:
    """Progress chatter: stderr, and nothing at all under `--quiet` (stdout is kept for results)."""
    if not is_quiet():
        typer.echo(text, err=True)


def echo_json(data: Any) -> None:
    """The `--json` result: one JSON document on stdout."""
    import json

    typer.echo(json.dumps(data, indent=2, default=str))


@functools.cache
def _quiet_option() -> Any:
    """The click `--quiet/-q` option as typer builds it, not passed to the command (see `set_quiet`); built once."""
    probe = typer.Typer()

    @probe.command()
    def _cmd(quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP, is_eager=True,
                                        callback=set_quiet)) -> None:
        pass

    param = typer.main.get_command(probe).params[0]
    param.expose_value = False
    return param


class AnyalignGroup(TyperGroup):
    """The CLI's click group: every command gets `--quiet`; replaced flags get a one-line error naming the new one."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        stack = list(self.commands.values())
        while stack:
            cmd = stack.pop()
            if hasattr(cmd, "commands"):
                stack += list(cmd.commands.values())
            elif not any("--quiet" in getattr(p, "opts", ()) for p in cmd.params):
                cmd.params.append(_quiet_option())

    def main(self, args: Any = None, *a: Any, **kw: Any) -> Any:
        global _quiet
        message = replaced_flag(list(sys.argv[1:] if args is None else args))
        if message:
            raise CLIError(message)
        env = {k: os.environ.get(k) for k in QUIET_ENV}
        levels = {n: logging.getLogger(n or None).level for n in QUIET_LOGGERS}
        try:
            return super().main(args, *a, **kw)
        finally:  # `--quiet` lasts one invocation (tests run many in one process)
            _quiet = False
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            for n, level in levels.items():
                logging.getLogger(n or None).setLevel(level)


def version_callback(value: bool) -> None:
    """`anyalign --version`."""
    if value:
        from ..version import __version__

        typer.echo(f"anyalign {__version__}")
        raise typer.Exit()


def resolve_device(device: str | None) -> str:
    """`--device`, or cuda when available (this rank's GPU under a launcher), else cpu."""
    if device:
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    local = os.environ.get("LOCAL_RANK")
    return f"cuda:{int(local)}" if local and local.isdigit() else "cuda"


def encoder_spec(encoder: str | None, pretrained: str | None, sets: list[str] | None, autocast: str | None,
                 prefix: str = "") -> Any:
    """The `EncoderSpec` of `--{prefix}encoder/--{prefix}pretrained/--{prefix}set/--{prefix}autocast` (None when no
    encoder is named; one-line errors for options given without it)."""
    if encoder is None:
        given = [f"--{prefix}{n}" for n, v in (("pretrained", pretrained), ("set", sets), ("autocast", autocast))
                 if v]
        if given:
            raise CLIError(f"{'/'.join(given)} need --{prefix}encoder NAME")
        return None
    from ..encoders.spec import EncoderSpec  # imports torch: only when an encoder is named

    return EncoderSpec.from_cli(encoder, pretrained, list(sets or []), autocast)


def query_embedders(adapter: Path | None, encoder: str | None, pretrained: str | None, sets: list[str] | None,
                    autocast: str | None, text_encoder: str | None = None, text_pretrained: str | None = None,
                    text_sets: list[str] | None = None, text_autocast: str | None = None) -> dict[str, dict]:
    """Query embedder records by modality from the encoder spec group and its text variant (for an index's
    queries: `search`, `serve`, `index build`); empty when none is given (the index's own records are used)."""
    out: dict[str, dict] = {}
    if adapter is not None:
        if encoder is not None or pretrained or sets:
            raise CLIError("give --adapter DIR or --encoder NAME [--pretrained/--set], not both")
        if autocast:
            raise CLIError("--autocast goes with --encoder here: an index records an adapter, not its precision")
        from ..adapter import read_adapter_config

        ref = str(Path(adapter).resolve()) if Path(adapter).exists() else str(adapter)  # a folder, or a Hub id
        out[read_adapter_config(ref).modality] = {"adapter": ref}
    else:
        spec = encoder_spec(encoder, pretrained, sets, autocast)
        if spec is not None:
            out[spec.modality] = {"encoder": spec.to_dict()}
    if text_encoder is not None and (Path(text_encoder) / "anyalign_adapter.json").is_file():
        if text_pretrained or text_sets or text_autocast:
            raise CLIError("--text-pretrained/--text-set/--text-autocast go with a --text-encoder NAME, not an "
                           "adapter folder")
        out["text"] = {"adapter": str(Path(text_encoder).resolve())}
    else:
        spec = encoder_spec(text_encoder, text_pretrained, text_sets, text_autocast, prefix="text-")
        if spec is not None:
            out["text"] = {"encoder": spec.to_dict()}
    return out


__all__ = ["ADAPTER", "AUTOCAST", "AnyalignGroup", "DEVICE", "ENCODER", "JSON", "PRETRAINED", "REPLACED", "SET",
           "TEXT_AUTOCAST", "TEXT_ENCODER", "TEXT_PRETRAINED", "TEXT_SET", "WORKERS", "echo_json", "encoder_spec",
           "is_quiet", "query_embedders", "replaced_flag", "resolve_device", "say", "version_callback"]
