"""`anyalign` console script: one module per command group, each found by its `def register(app, eval_app)` line and
placed in `--help` by its `HELP_ORDER`; expected errors and SIGINT / SIGTERM end in one line (exit 2, 130 / 143)."""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import os
import re
import signal
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import typer

from .options import AnyalignGroup, CLIError, version_callback

app = typer.Typer(help="anyalign: adapter-based multimodal alignment toolkit.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False, cls=AnyalignGroup)
eval_app = typer.Typer(help="Evaluate retrieval or zero-shot classification.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@app.callback()
def _global_options(
    plugin: list[str] = typer.Option(None, "--plugin", help="Import this module first: it registers encoders, "
                                                            "projectors, tasks or data kinds (repeatable; also "
                                                            "ANYALIGN_PLUGINS and the 'anyalign.plugins' entry "
                                                            "points)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=version_callback,
                                 help="Print the version and exit."),
) -> None:
    """anyalign: adapter-based multimodal alignment toolkit."""
    if plugin:
        from ..plugins import load_plugins

        load_plugins(list(plugin))


def command_modules() -> list[str]:
    """This package's command modules: those defining `register(app, eval_app)` at module level (read from their
    source), in `--help` order: their `HELP_ORDER` (modules without one come last), then their name."""
    found = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        if re.search(r"^def register\(", source, re.MULTILINE):
            order = re.search(r"^HELP_ORDER\s*=\s*(\d+)", source, re.MULTILINE)
            found.append((int(order.group(1)) if order else 1_000_000, path.stem))
    return [name for _, name in sorted(found)]


def _register_all() -> None:
    if app.registered_commands:  # once per process (tests call `main` many times)
        return
    for name in command_modules():
        importlib.import_module(f"{__package__}.{name}").register(app, eval_app)


# what survives an interrupted command and how to go on (keyed by the command path)
_KEPT = {
    "embed": "nothing was written (the output is swapped in only when complete); run the same command again",
    "extract": "finished shards are kept in the output folder; run the same command again to resume",
    "train": "checkpoints saved so far are kept in the output folder; rerun with --resume to continue",
    "index": "the index folder is as it was before this command (writes are swapped in atomically); "
             "run the same command again",
    "quickstart": "finished steps are kept; run the same command again to resume",
}
_DEFAULT = "nothing half-written was kept; run the same command again"


class Interrupted(BaseException):
    """The process received SIGINT or SIGTERM; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


def _raise(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second one kills at once
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, SIGINT / SIGTERM raise `Interrupted` in the main thread; old handlers restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def interrupted_message(e: Interrupted, argv: list[str]) -> str:
    """One line: which signal stopped which command, what was kept, how to go on."""
    rest = list(argv)
    while rest and rest[0].startswith("-"):  # global options; --plugin takes a value
        rest = rest[2:] if rest[0] == "--plugin" else rest[1:]
    command = rest[0] if rest else ""
    return (f"interrupted by {signal.Signals(e.signum).name}{f' during `anyalign {command}`' if command else ''}: "
            f"{_KEPT.get(command, _DEFAULT)}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn expected errors into one-line messages (exit code 2)."""
    logging.basicConfig(level=os.environ.get("ANYALIGN_LOG", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _register_all()
    from ..config import ConfigError
    from ..plugins import PluginError
    from ..registry import UnknownNameError

    # InputError and ConfigError are ValueErrors; listed classes come without importing torch (fast --help)
    expected = (CLIError, ConfigError, UnknownNameError, FileNotFoundError, ValueError, PluginError)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with interrupts_raise():
            code = app(args=args, standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code:  # typer.Exit(n) comes back as n
            sys.exit(code)
    except expected as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt) as e:
        if not isinstance(e, Interrupted):
            e = Interrupted(signal.SIGINT)  # before the handler was installed
        typer.echo(interrupted_message(e, args), err=True)
        sys.exit(e.exit_code)
    except OSError as e:  # disk full, permission denied, read-only file system: the path and the reason
        hint = "; free some space and run the command again" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        where = f"{e.filename}: " if e.filename is not None else ""
        typer.echo(f"error: {where}{e.strerror or e}{hint}", err=True)
        sys.exit(1)
    except sqlite3.Error as e:  # an index's metadata store (disk full, locked, corrupt)
        typer.echo(f"error: metadata database: {' '.join(str(e).split())}", err=True)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # usage errors of the click that typer uses (typer may bundle its own copy)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            message = " ".join(str(e.format_message()).split())
            ctx = getattr(e, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            typer.echo(f"error: {message}{where}", err=True)
            sys.exit(2 if e.exit_code not in (0, 1) else e.exit_code)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        raise


if __name__ == "__main__":
    # `python -m anyalign.cli.main` (launchers): run the package module, whose CLIError the commands raise
    # (this file as __main__ defines a second CLIError class that the except clause would not match)
    from anyalign.cli.main import main as _main

    _main()
