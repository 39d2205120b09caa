r"""Subcommands of the ``flowkit`` command line.

Each module listed in :data:`COMMANDS` lives in this package and exposes
``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``. To add a
command, write ``flowkit/commands/NAME.py`` and append ``"NAME"`` here.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

__all__ = [
    "COMMANDS",
    "add_checkpoint_argument",
    "add_command_parser",
    "add_decoding_arguments",
    "add_device_argument",
    "add_seed_argument",
    "decoding_of",
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


def add_decoding_arguments(p: Any) -> None:
    r"""``--method greedy|beam`` and ``--beam-width K``: how each sampled latent becomes a caption
    (default: as the run's recipe decodes, see :func:`decoding_of`)."""
    p.add_argument(
        "--method",
        choices=["greedy", "beam"],
        default=None,
        help="decoding of each sampled latent (default: the run's recipe's, e.g. beams of 5 for a 'captioning' run; else greedy)",
    )
    p.add_argument(
        "--beam-width", type=positive_int, default=None, metavar="K", help="beam width of --method beam (default: the recipe's, else 2)"
    )


def decoding_of(args: argparse.Namespace, checkpoint: Mapping[str, Any] | None) -> dict[str, Any]:
    r"""The decoding keywords of :func:`flowkit.evaluation.generate_captions` for a run: the
    given ``--method`` / ``--beam-width``, else those of the recipe named by the run's preset.

    Example:
        >>> args = argparse.Namespace(method=None, beam_width=None)
        >>> decoding_of(args, {"meta": {"preset": "captioning"}}), decoding_of(args, {"meta": {"preset": "small"}})
        ({'method': 'beam', 'beam_width': 5}, {'method': 'greedy'})
        >>> decoding_of(args, {"meta": {"preset": "captioner"}}), decoding_of(argparse.Namespace(method=None, beam_width=3), None)
        ({'method': 'sample'}, {'method': 'beam', 'beam_width': 3})
    """
    from flowkit.models.lnfmm.recipes import RECIPES, choose_decoding

    preset = ((checkpoint or {}).get("meta") or {}).get("preset")
    # method and beam width only: evaluate_captioning samples words at temperature 1
    recipe = {k: v for k, v in RECIPES[preset]().decoding.items() if k in ("method", "beam_width")} if preset in RECIPES else {}
    return choose_decoding(recipe or {"method": "greedy"}, args.method, args.beam_width)


def add_seed_argument(p: argparse.ArgumentParser) -> None:
    r"""``--seed S`` (default 0): the seed of a command's sampling."""
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    r"""``--device cpu|cuda`` (default cpu): where a command runs a trained model."""
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run the model (default cpu)")
