r"""``flowkit train``: train LNFMM on the shapes or COCO data, with exact resume.

Writes ``OUT/checkpoint.pt`` (``torch.load(..., weights_only=True)``), ``OUT/config.json``,
``OUT/vocab.json``, ``OUT/training.json`` and ``OUT/log.csv`` (plus ``OUT/tensorboard/``).

Example:
    >>> from flowkit.cli import main
    >>> main(["train", "--data", "shapes", "--preset", "small", "--steps", "200", "--out", "runs/a"])
    0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from flowkit.commands import fraction, non_negative_int, positive_int
from flowkit.data.loading import DATA_DEFAULTS
from flowkit.training.checkpoint import CHECKPOINT_NAME

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

# Data options: kept in the checkpoint (as "meta") so that --resume reloads the same data.
_BATCH_DEFAULTS = {"small": 32, "paper": 128}

#: Defaults of the run options a resume takes from the checkpoint when they are not given.
RUN_DEFAULTS: dict[str, Any] = {
    "checkpoint_every": 500,
    "log": "both",
    "log_every": 1,
    "device": "auto",
    "amp": "auto",
    "num_workers": 0,
    "find_unused_parameters": False,
}


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

    p = subparsers.add_parser(
        "train",
        help="train LNFMM (exact resume, DDP under torchrun)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=["shapes", "coco"], default=None, help="the embedded shapes data (default) or COCO-format files under --coco-root")
    g.add_argument("--coco-root", metavar="PATH", default=None, help="COCO-format folder (annotations and images), for --data coco")
    g.add_argument("--features", metavar="PATH", default=None, help="pre-extracted image features keyed by image id (.npy/.npz/.h5); the model then uses the 'features' encoder")
    g.add_argument("--split-scheme", choices=["karpathy", "coco", "ids", "mrnn"], default=None, help="how COCO images are split (default karpathy)")
    g.add_argument("--sizes", metavar="train=N,val=N,test=N", type=_sizes, default=None, help="images per split of the shapes data (default train=2000,val=200,test=200)")
    g.add_argument("--data-seed", metavar="S", type=int, default=None, help="seed of the generated shapes data (default 0)")
    g.add_argument("--max-len", metavar="L", type=positive_int, default=None, help="caption length in tokens with <start>/<end> (default 20 shapes, 40 COCO)")
    g.add_argument("--vocab-threshold", metavar="K", type=positive_int, default=None, help="keep words seen at least K times in training captions (default 4)")

    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=["small", "paper"], default=None, help="LNFMMConfig preset: 'small' (CPU minutes, default) or 'paper' (appendix A.1 sizes)")
    g.add_argument("--lr", type=float, metavar="LR", default=None, help="the base Adam learning rate (config.lr; the image encoder keeps config.image_encoder_lr)")
    g.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        nargs="+",
        action="append",
        default=None,
        help="override LNFMMConfig fields, e.g. --set fs_layers=6 gan=true alignment=mse (values are parsed as JSON, else taken as strings)",
    )

    g = p.add_argument_group("training")
    g.add_argument("--steps", type=non_negative_int, metavar="N", default=None, help="total optimizer steps (a resumed run continues up to N; default 1000)")
    g.add_argument("--batch-size", type=positive_int, metavar="B", default=None, help="pairs per step and process (default 32 small, 128 paper)")
    g.add_argument("--seed", type=int, metavar="S", default=None, help="seed of the initialization, training noise and data order (default 0)")
    g.add_argument("--labeled-fraction", type=fraction, metavar="F", default=None, help="semi-supervised: only this fixed, seeded fraction of training pairs is labeled (default 1.0)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="where to train (default auto: CUDA when available; under torchrun cuda:LOCAL_RANK)")
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default=None, help="mixed precision on CUDA (auto: bf16 where supported, else fp16 + GradScaler); ignored on CPU")
    g.add_argument("--num-workers", type=non_negative_int, metavar="W", default=None, help="DataLoader worker processes (default 0)")
    g.add_argument("--find-unused-parameters", action="store_true", default=None, help="under torchrun: let DDP handle parameters without a gradient in a step (slower; LNFMM does not need it)")

    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", default=None, help="run folder for checkpoint.pt, config.json, vocab.json, log.csv (default: the --resume folder)")
    g.add_argument("--resume", metavar="DIR", default=None, help="continue exactly from DIR/checkpoint.pt (errors if there is none or the run differs)")
    g.add_argument("--overwrite", action="store_true", help="start a new run in an --out folder that already holds a checkpoint (replacing it)")
    g.add_argument("--checkpoint-every", type=non_negative_int, metavar="K", default=None, help="save a checkpoint every K steps, 0 for the end only (default 500, on --resume the checkpoint's); saves are atomic")
    g.add_argument(
        "--log",
        "--log-backend",
        dest="log",
        choices=["csv", "tensorboard", "both"],
        default=None,
        help="log.csv is always written; 'tensorboard'/'both' add TensorBoard events when installed (default both, on --resume the checkpoint's). "
        "Under torchrun spell it --log-backend: torchrun's own parser takes --log for an abbreviation of its --log-dir",
    )
    g.add_argument("--log-every", type=positive_int, metavar="K", default=None, help="write a log row every K steps (default 1)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def parse_overrides(items: list[str], config_class: Any) -> dict[str, Any]:
    r"""Parses ``KEY=VALUE`` overrides into typed config fields.

    Values are read as JSON (``6``, ``1e-4``, ``true``, ``"x"``), else as plain strings, then
    cast to the field's type (an int given for a float field becomes a float).

    Arguments:
        items: The ``KEY=VALUE`` strings.
        config_class: The config dataclass (e.g. ``LNFMMConfig``).

    Example:
        >>> parse_overrides(["fs_layers=6", "gan=true", "lr=1e-3"], LNFMMConfig)
        {'fs_layers': 6, 'gan': True, 'lr': 0.001}
    """

    fields = {f.name: f for f in dataclasses.fields(config_class)}
    reference = config_class()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        if key not in fields:
            raise ValueError(f"--set {key}: unknown config field; known fields: {', '.join(sorted(fields))}")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        current = getattr(reference, key)
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


def _resume_target(resume: str) -> Path:
    path = Path(resume)
    target = path / CHECKPOINT_NAME if path.is_dir() or not path.suffix else path
    if not target.is_file():
        raise FileNotFoundError(f"--resume {resume}: no checkpoint at '{target}' (train with --out {resume} first)")
    return target


def _check_out(args: argparse.Namespace, out: Path, resume_path: Path | None) -> None:
    # Runs under the run-folder lock, so no other process can write a checkpoint meanwhile.
    existing = out / CHECKPOINT_NAME
    if not existing.exists() or args.overwrite:
        return
    if resume_path is None:
        raise ValueError(f"'{out}' already holds a checkpoint: pass --resume {out} to continue it, or --overwrite to start over")
    if existing.resolve() != resume_path.resolve():
        raise ValueError(
            f"--out '{out}' already holds another run's checkpoint, which continuing --resume {args.resume} there "
            f"would replace: pass another --out, or --overwrite to replace it"
        )


def _run_options(args: argparse.Namespace, saved: dict[str, Any]) -> dict[str, Any]:
    r"""Each run option: as given, else the checkpoint's (on resume), else the default."""
    return {k: getattr(args, k) if getattr(args, k) is not None else saved.get(k, default) for k, default in RUN_DEFAULTS.items()}


def _is_main_rank() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def run(args: argparse.Namespace) -> int:
    r"""Runs ``flowkit train`` with parsed arguments; returns the exit status.

    The run folder is locked (:class:`flowkit.training.safety.RunLock`) from the first check
    of its content to the end of training.
    """
    from contextlib import nullcontext

    from flowkit.training.safety import RunLock

    if args.out is None and args.resume is None:
        raise ValueError("--out DIR is required (or --resume DIR to continue a run)")
    resume_path = _resume_target(args.resume) if args.resume is not None else None
    out = Path(args.out) if args.out is not None else resume_path.parent  # type: ignore[union-attr]
    with RunLock(out) if _is_main_rank() else nullcontext():
        _check_out(args, out, resume_path)
        return _train(args, out, resume_path)


def _train(args: argparse.Namespace, out: Path, resume_path: Path | None) -> int:
    from flowkit.data import load_caption_data
    from flowkit.models import LNFMMConfig
    from flowkit.training import TrainSettings, load_checkpoint, train

    given_data = {k: getattr(args, k) for k in DATA_DEFAULTS}
    overrides = parse_overrides(_flatten(args.overrides), LNFMMConfig)
    if args.lr is not None:
        overrides["lr"] = float(args.lr)
    stored: dict[str, Any] = load_checkpoint(resume_path) if resume_path is not None else {}

    if stored:
        meta = dict(stored.get("meta", {}).get("data", {}))
        saved_training = stored.get("training", {})
        mismatches = []
        data_opts = {}
        for key, default in DATA_DEFAULTS.items():
            saved = meta.get(key, default)
            if given_data[key] is not None and given_data[key] != saved:
                mismatches.append(f"--{key.replace('_', '-')}: checkpoint {saved!r}, now {given_data[key]!r}")
            data_opts[key] = saved
        if mismatches:
            raise ValueError("--resume: the data differs from the checkpoint's:\n  - " + "\n  - ".join(mismatches))
        preset = args.preset or stored.get("meta", {}).get("preset", "small")
        if args.preset is None and not overrides:
            config = LNFMMConfig.from_dict(stored["config"])
        else:
            # Rebuilt from the options given; the trainer names every field that differs.
            config = getattr(LNFMMConfig, preset)(**overrides)
        batch_size = args.batch_size if args.batch_size is not None else saved_training.get("batch_size", _BATCH_DEFAULTS[preset])
        seed = args.seed if args.seed is not None else saved_training.get("seed", 0)
        fraction = args.labeled_fraction if args.labeled_fraction is not None else saved_training.get("labeled_fraction", 1.0)
        steps = args.steps if args.steps is not None else saved_training.get("steps", 1000)
    else:
        saved_training = {}
        data_opts = {k: (v if v is not None else DATA_DEFAULTS[k]) for k, v in given_data.items()}
        preset = args.preset or "small"
        config = getattr(LNFMMConfig, preset)(**overrides)
        batch_size = args.batch_size if args.batch_size is not None else _BATCH_DEFAULTS[preset]
        seed = args.seed if args.seed is not None else 0
        fraction = args.labeled_fraction if args.labeled_fraction is not None else 1.0
        steps = args.steps if args.steps is not None else 1000

    if data_opts["data"] == "coco" and data_opts["coco_root"] is None:
        raise ValueError("--data coco needs --coco-root PATH (a COCO-format folder)")
    if data_opts["data"] == "shapes" and data_opts["coco_root"] is not None:
        raise ValueError("--coco-root is for --data coco")
    data = load_caption_data(
        data_opts["data"],
        root=data_opts["coco_root"],
        features=data_opts["features"],
        max_len=data_opts["max_len"],
        vocab_threshold=data_opts["vocab_threshold"],
        sizes=data_opts["sizes"],
        seed=data_opts["data_seed"],
        split_scheme=data_opts["split_scheme"],
    )
    settings = TrainSettings(
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        labeled_fraction=fraction,
        progress=not args.no_progress,
        **_run_options(args, saved_training),
    )
    if resume_path is not None and out.resolve() != resume_path.parent.resolve():
        # Continuing into another folder: carry the log over so it stays one history.
        out.mkdir(parents=True, exist_ok=True)
        old_log = resume_path.parent / "log.csv"
        if old_log.is_file() and not (out / "log.csv").exists():
            shutil.copyfile(old_log, out / "log.csv")
    trainer = train(config, data, settings, out=out, resume=resume_path, meta={"data": data_opts, "preset": preset})
    if trainer.ctx.is_main:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in trainer.last_terms.items())
        print(f"saved {out / CHECKPOINT_NAME} at step {trainer.step}" + (f" ({terms})" if terms else ""))
    return 0
