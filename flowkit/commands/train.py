r"""``flowkit train``: train LNFMM on the shapes or COCO data, with exact resume.

Writes ``OUT/checkpoint.pt`` (``torch.load(..., weights_only=True)``), ``OUT/config.json``,
``OUT/vocab.json``, ``OUT/training.json`` and ``OUT/log.csv`` (plus ``OUT/tensorboard/``).

Example:
    >>> import tempfile
    >>> from flowkit.cli import main
    >>> tiny = ["image_encoder_init=random", "freeze_image_trunk=false", "shared_dim=8", "fs_layers=1", "fv_layers=1", "ft_layers=1"]
    >>> out = tempfile.mkdtemp()
    >>> main(["train", "--sizes", "train=2,val=1,test=1", "--steps", "1", "--batch-size", "4", "--no-progress", "--out", out, "--set", *tiny])  # doctest: +ELLIPSIS
    saved .../checkpoint.pt at step 1 (...)
    0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from flowkit.commands import (
    add_command_parser,
    fraction,
    non_negative_int,
    positive_int,
)
from flowkit.data.loading import DATA_DEFAULTS
from flowkit.io import CHECKPOINT_NAME
from flowkit.recipes import PRESET_BATCH_SIZES
from flowkit.training.trainer import TrainSettings

_DEFAULT = TrainSettings()  # the defaults the help names (the library applies them)

__all__ = ["add_parser", "parse_overrides", "run"]

DESCRIPTION = """\
Train LNFMM (latent normalizing flows for many-to-many cross-domain mappings) on the embedded
shapes data or on COCO-format files. Writes OUT/checkpoint.pt (loadable with
torch.load(..., weights_only=True)), OUT/config.json, OUT/vocab.json, OUT/training.json and
OUT/log.csv (plus TensorBoard events in OUT/tensorboard when tensorboard is installed).

Resuming (--resume DIR) continues exactly where DIR's checkpoint stopped: same weights,
optimizer moments, RNG states and data position, so N steps + N resumed steps give the same
weights as 2N steps straight. Options left out are taken from the checkpoint; options that
change what a step computes (model config, data, batch size, seed, labeled fraction) must match.

Several processes (DistributedDataParallel): launch with torchrun, e.g.
  torchrun --standalone --nproc_per_node=2 -m flowkit train --data shapes --out runs/ddp
"""

EPILOG = """\
examples:
  flowkit train --data shapes --preset small --steps 2000 --out runs/small
  flowkit train --resume runs/small --steps 4000
  flowkit train --data coco --coco-root data/coco --features data/coco/fc7.npy --preset paper \\
      --steps 300000 --batch-size 128 --device cuda --out runs/coco
  flowkit train --data shapes --labeled-fraction 0.3 --set lambda_align=5 gan=true --out runs/semi
"""


def _sizes(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("train", "val", "test"):
            raise argparse.ArgumentTypeError(f"expected train=N,val=N,test=N, got {text!r}")
        try:
            out[key] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"size of {key!r} must be an int, got {value!r}") from None
        if out[key] < 1:
            raise argparse.ArgumentTypeError(f"size of {key!r} must be >= 1, got {out[key]}")
    return out


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    r"""Adds ``train`` to the ``flowkit`` subparsers.

    Arguments:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.
    """

    p = add_command_parser(subparsers, "train", "train LNFMM (exact resume, DDP under torchrun)", DESCRIPTION, EPILOG)
    for add_group in (_add_data_arguments, _add_model_arguments, _add_training_arguments, _add_output_arguments):
        add_group(p)
    return p


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    r"""The ``data`` options: which data, where, its split, sizes, seed and vocabulary."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", choices=["shapes", "coco"], default=None, help="the embedded shapes data (default) or COCO-format files under --coco-root"
    )
    g.add_argument("--coco-root", metavar="PATH", default=None, help="COCO-format folder (annotations and images), for --data coco")
    g.add_argument(
        "--features",
        metavar="PATH",
        default=None,
        help="pre-extracted image features keyed by image id (.npy/.npz/.h5); the model then uses the 'features' encoder",
    )
    g.add_argument(
        "--split-scheme",
        choices=["karpathy", "coco", "ids", "mrnn"],
        default=None,
        help=f"how COCO images are split (default {DATA_DEFAULTS['split_scheme']})",
    )
    g.add_argument(
        "--sizes",
        metavar="train=N,val=N,test=N",
        type=_sizes,
        default=None,
        help="images per split of the shapes data (default train=2000,val=200,test=200)",
    )
    g.add_argument(
        "--data-seed", metavar="S", type=int, default=None, help=f"seed of the generated shapes data (default {DATA_DEFAULTS['data_seed']})"
    )
    g.add_argument(
        "--max-len",
        metavar="L",
        type=positive_int,
        default=None,
        help="caption length in tokens with <start>/<end> (default 20 shapes, 40 COCO)",
    )
    g.add_argument(
        "--vocab-threshold",
        metavar="K",
        type=positive_int,
        default=None,
        help=f"keep words seen at least K times in training captions (default {DATA_DEFAULTS['vocab_threshold']})",
    )


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    r"""The ``model`` options: the preset, the learning rate and config overrides."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--preset",
        choices=["small", "paper"],
        default=None,
        help="LNFMMConfig preset: 'small' (CPU minutes, default) or 'paper' (appendix A.1 sizes)",
    )
    g.add_argument(
        "--lr",
        type=float,
        metavar="LR",
        default=None,
        help="the base Adam learning rate (config.optim.lr; the image encoder keeps config.optim.image_encoder_lr)",
    )
    g.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        nargs="+",
        action="append",
        default=None,
        help="override LNFMMConfig fields by their flat names or as group.field, e.g. --set fs_layers=6 gan=true alignment=mse loss.rec_t=1 (values are parsed as JSON, else taken as strings)",
    )


def _add_training_arguments(p: argparse.ArgumentParser) -> None:
    r"""The ``training`` options: the budget, seed, labeled fraction, device and precision."""
    g = p.add_argument_group("training")
    g.add_argument(
        "--steps",
        type=non_negative_int,
        metavar="N",
        default=None,
        help=f"total optimizer steps (a resumed run continues up to N; default {_DEFAULT.steps})",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="B",
        default=None,
        help="pairs per step and process (default " + ", ".join(f"{v} {k}" for k, v in PRESET_BATCH_SIZES.items()) + ")",
    )
    g.add_argument(
        "--seed",
        type=int,
        metavar="S",
        default=None,
        help=f"seed of the initialization, training noise and data order (default {_DEFAULT.seed})",
    )
    g.add_argument(
        "--labeled-fraction",
        type=fraction,
        metavar="F",
        default=None,
        help=f"semi-supervised: only this fixed, seeded fraction of training pairs is labeled (default {_DEFAULT.labeled_fraction})",
    )
    g.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help=f"where to train (default {_DEFAULT.device}; auto: CUDA when available, under torchrun cuda:LOCAL_RANK)",
    )
    g.add_argument(
        "--amp",
        choices=["auto", "bf16", "fp16", "off"],
        default=None,
        help=f"mixed precision on CUDA (default {_DEFAULT.amp}; auto: bf16 where supported, else fp16 + GradScaler); ignored on CPU",
    )
    g.add_argument(
        "--num-workers",
        type=non_negative_int,
        metavar="W",
        default=None,
        help=f"DataLoader worker processes (default {_DEFAULT.num_workers})",
    )
    g.add_argument(
        "--find-unused-parameters",
        action="store_true",
        default=None,
        help="under torchrun: let DDP handle parameters without a gradient in a step (slower; LNFMM does not need it)",
    )


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    r"""The ``output`` options: the run folder, resume, checkpoints, logs and progress."""
    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="run folder for checkpoint.pt, config.json, vocab.json, log.csv (default: the --resume folder)",
    )
    g.add_argument(
        "--resume", metavar="DIR", default=None, help="continue exactly from DIR/checkpoint.pt (errors if there is none or the run differs)"
    )
    g.add_argument(
        "--overwrite", action="store_true", help="start a new run in an --out folder that already holds a checkpoint (replacing it)"
    )
    g.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        metavar="K",
        default=None,
        help=f"save a checkpoint every K steps, 0 for the end only (default {_DEFAULT.checkpoint_every}, on --resume the checkpoint's); saves are atomic",
    )
    g.add_argument(
        "--log",
        "--log-backend",
        dest="log",
        choices=["csv", "tensorboard", "both"],
        default=None,
        help=f"log.csv is always written; 'tensorboard'/'both' add TensorBoard events when installed (default {_DEFAULT.log}, on --resume the checkpoint's). "
        "Under torchrun spell it --log-backend: torchrun's own parser takes --log for an abbreviation of its --log-dir",
    )
    g.add_argument(
        "--log-every", type=positive_int, metavar="K", default=None, help=f"write a log row every K steps (default {_DEFAULT.log_every})"
    )
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def parse_overrides(items: list[str], config_class: Any) -> dict[str, Any]:
    r"""Parses ``KEY=VALUE`` overrides into typed config fields.

    Values are read as JSON (``6``, ``1e-4``, ``true``, ``"x"``), else as plain strings, then
    cast to the field's type (an int given for a float field becomes a float).

    Keys are the config's fields; for :class:`~flowkit.models.LNFMMConfig` its flat names
    (``lambda_rec_t``, :data:`~flowkit.models.lnfmm.config.FLAT_NAMES`) or ``group.field``
    (``loss.rec_t``), passed on to the preset as given.

    Arguments:
        items: The ``KEY=VALUE`` strings.
        config_class: The config dataclass (e.g. ``LNFMMConfig``).

    Example:
        >>> from flowkit.models import LNFMMConfig
        >>> parse_overrides(["fs_layers=6", "gan=true", "lr=1e-3"], LNFMMConfig)
        {'fs_layers': 6, 'gan': True, 'lr': 0.001}
    """

    reference = config_class()
    # a config of groups (LNFMMConfig) names its fields flat, as before the groups, and as "group.field"
    fields = (
        reference.to_flat_dict()
        if hasattr(reference, "to_flat_dict")
        else {f.name: getattr(reference, f.name) for f in dataclasses.fields(config_class)}
    )
    nested = {f"{g}.{k}": v for g, d in dataclasses.asdict(reference).items() if isinstance(d, dict) and g != "notes" for k, v in d.items()}
    known = {**fields, **nested}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        if key not in known:
            raise ValueError(f"--set {key}: unknown config field; known fields: {', '.join(sorted(fields))} (or group.field)")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        current = known[key]
        if isinstance(current, bool):
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "false", "no", "off"):
                value = value.lower() in ("true", "yes", "on")
            elif value in (0, 1) and not isinstance(value, float):
                value = bool(value)
            if not isinstance(value, bool):
                raise ValueError(f"--set {key}: expected true or false, got {text!r}")
        elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(current, int) and isinstance(value, float) and value.is_integer():
            value = int(value)
        if type(value) is not type(current) and not (isinstance(current, dict) and isinstance(value, dict)):
            raise ValueError(f"--set {key}: expected a {type(current).__name__}, got {text!r}")
        out[key] = value
    return out


def _flatten(groups: list[list[str]] | None) -> list[str]:
    return [x for g in (groups or []) for x in g]


def run(args: argparse.Namespace) -> int:
    r"""Runs ``flowkit train`` with parsed arguments (:func:`flowkit.recipes.train_run`); returns
    the exit status.

    Arguments:
        args: The parsed arguments.
    """
    from flowkit.models import LNFMMConfig
    from flowkit.recipes import train_run

    overrides = parse_overrides(_flatten(args.overrides), LNFMMConfig)
    if args.lr is not None:
        overrides["lr"] = float(args.lr)
    settings = {
        name: getattr(args, name)
        for name in (
            "steps",
            "batch_size",
            "seed",
            "labeled_fraction",
            "device",
            "amp",
            "num_workers",
            "find_unused_parameters",
            "checkpoint_every",
            "log",
            "log_every",
        )
    }
    trainer = train_run(
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        preset=args.preset,
        overrides=overrides,
        data={k: getattr(args, k) for k in DATA_DEFAULTS},
        settings={**settings, "progress": not args.no_progress},
    )
    if trainer.ctx.is_main:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in trainer.last_terms.items())
        print(f"saved {trainer.out / CHECKPOINT_NAME} at step {trainer.step}" + (f" ({terms})" if terms else ""))
    return 0
