r"""The ``flowkit`` command line: ``flowkit train | caption | synthesize | evaluate``.

Subcommands are discovered from :data:`flowkit.commands.COMMANDS`: each listed module of
:mod:`flowkit.commands` exposes ``add_parser(subparsers)`` and ``run(args) -> int``.

Example:
    >>> from flowkit.cli import main
    >>> main(["train", "--data", "shapes", "--preset", "small", "--steps", "10", "--out", "runs/a"])
    0
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    r"""The argument parser with one subparser per module in :data:`flowkit.commands.COMMANDS`."""

    from flowkit import __version__
    from flowkit.commands import COMMANDS

    parser = argparse.ArgumentParser(
        prog="flowkit",
        description="flowkit: conditional normalizing flows and LNFMM (diverse captioning and text-to-image).",
    )
    parser.add_argument("--version", action="version", version=f"flowkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"flowkit.commands.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    r"""Runs the command line; returns the exit status.

    Expected failures (a missing file, a bad option value, a non-finite loss) print one
    ``flowkit COMMAND: error: ...`` line and return 1; set ``FLOWKIT_TRACEBACK=1`` for the
    full traceback.

    Arguments:
        argv: The arguments (``sys.argv[1:]`` by default).
    """

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (OSError, ValueError, RuntimeError, ArithmeticError, KeyboardInterrupt) as e:
        if os.environ.get("FLOWKIT_TRACEBACK"):
            raise
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
        print(f"flowkit {args.command}: error: {what}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 1


if __name__ == "__main__":
    sys.exit(main())
