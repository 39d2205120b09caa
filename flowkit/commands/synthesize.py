r"""``flowkit synthesize``: diverse images for a caption with a trained LNFMM (text-to-image).

Example (a tiny run, trained for one step):
    >>> import tempfile
    >>> from flowkit.cli import main
    >>> run = tempfile.mkdtemp()
    >>> tiny = ["image_encoder_init=random", "freeze_image_trunk=false", "shared_dim=8", "fs_layers=1", "fv_layers=1", "ft_layers=1"]
    >>> main(["train", "--sizes", "train=2,val=1,test=1", "--steps", "1", "--batch-size", "4", "--no-progress", "--out", run, "--set", *tiny])  # doctest: +ELLIPSIS
    saved .../checkpoint.pt at step 1 (...)
    0
    >>> main(["synthesize", "--checkpoint", run, "--caption", "a red circle", "--num-samples", "2", "--out", run + "/grid.png", "--save-tensor", run + "/images.pt"])  # doctest: +ELLIPSIS
    wrote 1 x 2 images to .../grid.png
    wrote the images tensor (1, 2, 3, 64, 64) to .../images.pt
    0
    >>> open(run + "/grid.png", "rb").read(4) == b"\x89PNG"
    True
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from flowkit.commands import (
    add_checkpoint_argument,
    add_command_parser,
    add_device_argument,
    add_seed_argument,
    positive_int,
)

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
Generate diverse images for one or more captions with a trained LNFMM:
z_s = f_s^-1(mu(z_s^t)) from the caption's shared code, z'_v ~ p(z'_v|z_s) at the given
temperature, then the image decoder. Saves a PNG grid with one row per caption (and, with
--save-tensor, the images as a .pt tensor of shape (captions, samples, 3, H, W) in [0, 1]).
Words outside the run's vocabulary become <unk> (a warning names them). Needs a model that
generates pixels, or one of the shapes trunk's reading (the text-to-image recipe), whose
samples the pre-trained cell renderer draws.
"""

EPILOG = """\
examples:
  flowkit synthesize --checkpoint runs/small --caption "a red circle at the top left"
  flowkit synthesize --checkpoint runs/small --caption "a blue square" --caption "two shapes" --num-samples 16 --out grid.png
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    r"""Adds ``synthesize`` to the ``flowkit`` subparsers.

    Arguments:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.
    """
    p = add_command_parser(subparsers, "synthesize", "generate diverse images for captions (text-to-image)", DESCRIPTION, EPILOG)
    add_checkpoint_argument(p)
    p.add_argument("--caption", metavar="TEXT", action="append", required=True, help="the caption (repeat for several; one grid row each)")
    p.add_argument("--num-samples", type=positive_int, default=8, metavar="S", help="images per caption (default 8)")
    p.add_argument(
        "--temperature", type=float, default=1.0, metavar="T", help="scales the prior's base samples; 0 gives the mode (default 1.0)"
    )
    p.add_argument("--out", metavar="FILE", default=None, help="the PNG grid (default CHECKPOINT/synthesized.png)")
    p.add_argument("--save-tensor", metavar="FILE", default=None, help="also save the images as a torch tensor file (.pt)")
    add_seed_argument(p)
    add_device_argument(p)
    return p


def run(args: argparse.Namespace) -> int:
    r"""Runs ``flowkit synthesize`` with parsed arguments; returns the exit status."""
    import sys

    import torch

    from flowkit.data import Vocabulary, tokenize
    from flowkit.evaluation import image_drawer, load_model, plot_image_grid, sample_images_for_captions
    from flowkit.io import atomic_write

    out, tensor_out = _outputs(args)
    model, ckpt = load_model(args.checkpoint, device=args.device)
    render = image_drawer(model)
    if ckpt.get("vocab") is None:
        raise ValueError(f"checkpoint '{args.checkpoint}' holds no vocabulary ('vocab'); it was not written by flowkit train")
    vocab = Vocabulary.from_dict(dict(ckpt["vocab"]))
    captions = [c.strip() for c in args.caption]
    if any(not c for c in captions):
        raise ValueError("--caption must not be empty")
    unknown = sorted({w for c in captions for w in tokenize(c) if w not in vocab})
    if unknown:
        print(f"warning: words outside the vocabulary become <unk>: {', '.join(unknown)}", file=sys.stderr)
    images = sample_images_for_captions(model, captions, vocab, args.num_samples, args.temperature, seed=args.seed, render=render)
    plot_image_grid(captions, images, out, max_samples=args.num_samples)
    print(f"wrote {len(captions)} x {args.num_samples} images to {out}")
    if tensor_out is not None:
        atomic_write(tensor_out, lambda f: torch.save(images, f))
        print(f"wrote the images tensor {tuple(images.shape)} to {tensor_out}")
    return 0


def _outputs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    r"""The PNG and tensor files, checked before any sampling: never the run's checkpoint, a
    folder gets ``synthesized.png`` inside it, a name without suffix gets ``.png``."""
    from flowkit.io import check_output, checkpoint_path, run_folder

    ckpt = checkpoint_path(args.checkpoint)
    out = Path(args.out) if args.out else run_folder(args.checkpoint) / "synthesized.png"
    if out.is_dir() or (args.out and args.out.endswith(("/", os.sep))):
        out = out / "synthesized.png"
    elif not out.suffix:
        out = out.with_suffix(".png")
    check_output(out, "--out", protected=(ckpt,))
    tensor_out = check_output(args.save_tensor, "--save-tensor", protected=(ckpt,)) if args.save_tensor else None
    if tensor_out is not None and tensor_out.resolve() == out.resolve():
        raise ValueError(f"--save-tensor and --out name the same file '{out}'; pass two file names")
    return out, tensor_out
