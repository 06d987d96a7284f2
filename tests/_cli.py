"""Run the `anyalign` CLI in-process from tests: the exit status (0, or what a usage error / failure exits with),
and with `run_captured` also what it printed."""

from __future__ import annotations

from typing import Any


def run_cli(args: list[str]) -> int:
    from anyalign.cli.main import main

    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def run_captured(capsys: Any, *args: object) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `anyalign ARGS...` (`capsys`: pytest's capture fixture)."""
    code = run_cli([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err
