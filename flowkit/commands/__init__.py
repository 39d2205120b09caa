r"""Subcommands of the ``flowkit`` command line.

Each module listed in :data:`COMMANDS` lives in this package and exposes
``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``. To add a
command, write ``flowkit/commands/NAME.py`` and append ``"NAME"`` here.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = [
    "COMMANDS",
    "add_checkpoint_argument",
    "add_command_parser",
    "add_device_argument",
    "add_seed_argument",
    "fraction",
    "non_negative_int",
    "positive_int",
]

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


def add_command_parser(subparsers: Any, name: str, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
    r"""The parser of subcommand ``name`` (``description`` and ``epilog`` printed as written)."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_checkpoint_argument(p: argparse.ArgumentParser) -> None:
    r"""``--checkpoint DIR`` (required): the run a command reads its model from."""
    p.add_argument(
        "--checkpoint",
        metavar="DIR",
        required=True,
        help="a training run folder holding checkpoint.pt (flowkit train --out DIR), or the file",
    )


def add_seed_argument(p: argparse.ArgumentParser) -> None:
    r"""``--seed S`` (default 0): the seed of a command's sampling."""
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    r"""``--device cpu|cuda`` (default cpu): where a command runs a trained model."""
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run the model (default cpu)")
