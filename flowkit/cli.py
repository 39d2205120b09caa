r"""The ``flowkit`` command line: ``flowkit train | caption | synthesize | evaluate``.

Subcommands are discovered from :data:`flowkit.commands.COMMANDS`: each listed module of
:mod:`flowkit.commands` exposes ``add_parser(subparsers)`` and ``run(args) -> int``.

Example (a tiny run, then captions of its test image):
    >>> import tempfile
    >>> from flowkit.cli import main
    >>> run = tempfile.mkdtemp()
    >>> tiny = ["image_encoder_init=random", "freeze_image_trunk=false", "shared_dim=8", "fs_layers=1", "fv_layers=1", "ft_layers=1"]
    >>> main(["train", "--sizes", "train=2,val=1,test=1", "--steps", "1", "--batch-size", "4", "--no-progress", "--out", run, "--set", *tiny])  # doctest: +ELLIPSIS
    saved .../checkpoint.pt at step 1 (...)
    0
    >>> main(["caption", "--checkpoint", run, "--num-samples", "2", "--show", "0", "--no-progress"])  # doctest: +ELLIPSIS
    wrote 1 images x 2 captions to .../captions_test.json
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
