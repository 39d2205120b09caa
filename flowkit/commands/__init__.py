r"""Subcommands of the ``flowkit`` command line.

Each module listed in :data:`COMMANDS` lives in this package and exposes
``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``. To add a
command, write ``flowkit/commands/NAME.py`` and append ``"NAME"`` here.
"""

from __future__ import annotations

__all__ = ["COMMANDS"]

COMMANDS: tuple[str, ...] = ("train", "caption", "synthesize", "evaluate")
