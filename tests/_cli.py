"""Run the `anyalign` CLI in-process from tests: the exit status (0, or what a usage error / failure exits with)."""

from __future__ import annotations


def run_cli(args: list[str]) -> int:
    from anyalign.cli.main import main

    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0
