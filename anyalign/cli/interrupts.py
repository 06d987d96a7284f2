"""SIGINT / SIGTERM for the CLI: the command stops with 130 / 143 and one line saying what was kept. `Interrupted`
is a BaseException (every `finally` runs) but not a KeyboardInterrupt (which typer would swallow)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

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


def command_of(argv: list[str]) -> str:
    """The command named in `argv` (global options skipped), e.g. "embed" or "index"."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--plugin":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return ""


def interrupted_message(e: Interrupted, argv: list[str]) -> str:
    """One line: which signal stopped which command, what was kept, how to go on."""
    command = command_of(argv)
    return (f"interrupted by {signal.Signals(e.signum).name}{f' during `anyalign {command}`' if command else ''}: "
            f"{_KEPT.get(command, _DEFAULT)}")


__all__ = ["Interrupted", "command_of", "interrupted_message", "interrupts_raise"]
