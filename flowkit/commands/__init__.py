r"""Subcommands of the ``flowkit`` command line.

Each module listed in :data:`COMMANDS` lives in this package and exposes
``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``. To add a
command, write ``flowkit/commands/NAME.py`` and append ``"NAME"`` here.
"""

from __future__ import annotations

import argparse

__all__ = ["COMMANDS", "fraction", "non_negative_int", "positive_int"]

COMMANDS: tuple[str, ...] = ("train", "caption", "synthesize", "evaluate")


def positive_int(text: str) -> int:
    r"""argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text}")
    return value


def non_negative_int(text: str) -> int:
    r"""argparse type: an int >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    r"""argparse type: a float in (0, 1]."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value
