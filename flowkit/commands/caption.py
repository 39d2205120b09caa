r"""``flowkit caption``: sample diverse captions for images with a trained LNFMM.

Example (a tiny run, trained for one step):
    >>> import tempfile
    >>> from flowkit.cli import main
    >>> run = tempfile.mkdtemp()
    >>> tiny = ["image_encoder_init=random", "freeze_image_trunk=false", "shared_dim=8", "fs_layers=1", "fv_layers=1", "ft_layers=1"]
    >>> main(["train", "--sizes", "train=2,val=1,test=1", "--steps", "1", "--batch-size", "4", "--no-progress", "--out", run, "--set", *tiny])  # doctest: +ELLIPSIS
    saved .../checkpoint.pt at step 1 (...)
    0
    >>> main(["caption", "--checkpoint", run, "--num-samples", "3", "--show", "1", "--no-progress", "--out", run + "/caps.json"])  # doctest: +ELLIPSIS
    image ... distinct of 3)  reference: ...
    wrote 1 images x 3 captions to .../caps.json
    0
    >>> import json
    >>> [len(caps) for caps in json.load(open(run + "/caps.json")).values()]
    [3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from flowkit.commands import (
    add_checkpoint_argument,
    add_command_parser,
    add_decoding_arguments,
    add_device_argument,
    add_seed_argument,
    decoding_of,
    positive_int,
)
from flowkit.io import atomic_write_text, check_output, checkpoint_path, run_folder

__all__ = ["add_parser", "run", "add_data_arguments", "data_overrides"]

DESCRIPTION = """\
Sample diverse captions for images with a trained LNFMM: z_s = f_s(mu(z_s^v)), z'_t ~ p(z'_t|z_s)
at the given temperature, then greedy or beam decoding. The images come from the data the
run was trained on (recorded in its checkpoint; the --data options override it), either a
whole split or the listed image ids. Prints the captions and writes them as JSON
{image_id: [caption, ...]}.
"""

EPILOG = """\
examples:
  flowkit caption --checkpoint runs/small --num-samples 100 --limit 10
  flowkit caption --checkpoint runs/small --images 20000000,20000001 --num-samples 5 --method beam
  flowkit caption --checkpoint runs/coco --coco-root data/coco --features data/coco/fc7.npz --out captions.json
"""


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated image ids, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("no image ids given")
    return ids


def _sizes(text: str) -> dict[str, int]:
    from flowkit.commands.train import _sizes as parse

    return parse(text)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    r"""The data options shared by ``caption`` and ``evaluate`` (they override the checkpoint's)."""
    g = p.add_argument_group("data (default: what the checkpoint records)")
    g.add_argument("--data", choices=["shapes", "coco"], default=None, help="the embedded shapes data or COCO-format files")
    g.add_argument(
        "--coco-root", metavar="PATH", default=None, help="COCO-format folder, for --data coco (e.g. when the run's folder moved)"
    )
    g.add_argument(
        "--features", metavar="FILE", default=None, help="pre-extracted image features keyed by image id, for a 'features' model"
    )
    g.add_argument("--split-scheme", choices=["karpathy", "coco", "ids", "mrnn"], default=None, help="how COCO images are split")
    g.add_argument(
        "--sizes",
        metavar="train=N,val=N,test=N",
        type=_sizes,
        default=None,
        help="images per split of the shapes data (the training split must match the run's, or the vocabulary differs)",
    )
    g.add_argument("--data-seed", metavar="S", type=int, default=None, help="seed of the generated shapes data")


def data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    r"""The data options given on the command line (None where not given)."""
    return {
        "data": args.data,
        "coco_root": args.coco_root,
        "features": args.features,
        "split_scheme": args.split_scheme,
        "sizes": args.sizes,
        "data_seed": args.data_seed,
    }


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    r"""Adds ``caption`` to the ``flowkit`` subparsers.

    Arguments:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.
    """
    p = add_command_parser(subparsers, "caption", "sample diverse captions for images", DESCRIPTION, EPILOG)
    add_checkpoint_argument(p)
    p.add_argument(
        "--images",
        metavar="ID,ID,...",
        type=_ids,
        default=None,
        help="caption these image ids (looked up in --split, else in test, val, train)",
    )
    p.add_argument("--split", choices=["val", "test", "train"], default=None, help="caption the images of this split (default test)")
    p.add_argument(
        "--num-samples", type=positive_int, default=100, metavar="S", help="captions sampled per image (default 100, the paper's protocol)"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="scales the prior's base samples; 0 gives one deterministic caption (default 1.0)",
    )
    add_decoding_arguments(p)
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N images (default: all of the split)")
    p.add_argument(
        "--show", type=int, default=5, metavar="K", help="captions printed per image (all go to --out; default 5, 0 prints none)"
    )
    p.add_argument(
        "--out", metavar="FILE", default=None, help="write {image_id: [captions]} as JSON here (default CHECKPOINT/captions_<split>.json)"
    )
    add_seed_argument(p)
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="B", help="images per sampling call (default 8)")
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_data_arguments(p)
    return p


def _output(args: argparse.Namespace) -> Path | None:
    r"""The ``--out`` file (None: the default, known once the split is), checked before any
    sampling: never a checkpoint, and a writable folder (the run's, by default)."""
    ckpt = checkpoint_path(args.checkpoint)
    if args.out:
        return check_output(args.out, "--out", protected=(ckpt,))
    check_output(run_folder(args.checkpoint) / "captions_test.json", "the default output (pass --out FILE elsewhere)", protected=(ckpt,))
    return None


def run(args: argparse.Namespace) -> int:
    r"""Runs ``flowkit caption`` with parsed arguments; returns the exit status."""
    from flowkit.evaluation import find_split, generate_captions, load_run, split_images

    out = _output(args)
    model, data, ckpt = load_run(args.checkpoint, device=args.device, **data_overrides(args))
    split = args.split or ("test" if args.images is None else find_split(data, args.images))
    dataset = split_images(data, split)
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} has no images")
    captions = generate_captions(
        model,
        dataset,
        data.vocab,
        num_samples=args.num_samples,
        temperature=args.temperature,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        limit=args.limit,
        image_ids=args.images,
        seed=args.seed,
        **decoding_of(args, ckpt),
    )
    if args.show > 0:
        refs = data.references.get(split, {})
        for iid, caps in captions.items():
            distinct = len(set(caps))
            print(f"image {iid} ({distinct} distinct of {len(caps)})" + (f"  reference: {refs[iid][0]}" if refs.get(iid) else ""))
            for c in caps[: args.show]:
                print(f"  {c}")
    out = out or run_folder(args.checkpoint) / f"captions_{split}.json"
    atomic_write_text(out, json.dumps({str(k): v for k, v in captions.items()}, indent=1) + "\n")
    print(f"wrote {len(captions)} images x {args.num_samples} captions to {out}")
    return 0
