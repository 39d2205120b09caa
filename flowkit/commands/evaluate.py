r"""``flowkit evaluate``: the paper's evaluation of a trained LNFMM, as a Markdown + JSON report
with figures.

Example (not run as a doctest: it needs a trained run, and the caption metrics' Java tools and
the text-to-image judge take minutes; ``tests/test_cli_eval.py`` runs it on a tiny run):

.. code-block:: python

    from flowkit.cli import main

    main(["train", "--data", "shapes", "--preset", "small", "--out", "runs/small"])
    main(["evaluate", "--checkpoint", "runs/small", "--limit", "50", "--out", "runs/small/report"])  # 0
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

from flowkit.commands import (
    add_checkpoint_argument,
    add_command_parser,
    add_decoding_arguments,
    add_device_argument,
    add_seed_argument,
    decoding_of,
    non_negative_int,
    positive_int,
)

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
Evaluate a trained LNFMM with the paper's protocol and write a report (report.md,
results.json, captions.json, captions.png, text_to_image.png):

  Table 1  oracle scores: per image and metric, the best of the sampled captions
           (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D via pycocoevalcap; SPICE where its jars exist)
  Table 2  consensus re-ranking (k nearest training images, top-m CIDEr-D sum), top-1 scored
  Table 3  diversity of the best 5 after re-ranking: Unique %, Novel, mBLEU-4, Div-1, Div-2
  Table 6  text-to-image: Inception score (shapes attribute classifier as the network), IvOM,
           LPIPS diversity (pixel diversity, labelled as such, when lpips cannot load)

On the embedded shapes data it adds exact judges: ground-truth caption accuracy and
coverage, and the classifier's accuracy and free-attribute spread of generated images (the
attribute classifier is trained once, about a minute, and cached in $FLOWKIT_CACHE or
~/.cache/flowkit).
The data is the one recorded in the checkpoint unless the data options say otherwise.
Everything runs offline.
"""

EPILOG = """\
examples:
  flowkit evaluate --checkpoint runs/small
  flowkit evaluate --checkpoint runs/small --limit 50 --num-samples 100 --out runs/small/report
  flowkit evaluate --checkpoint runs/coco --data coco --coco-root data/coco --features data/coco/fc7.npz --no-text-to-image
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    r"""Adds ``evaluate`` to the ``flowkit`` subparsers.

    Arguments:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.
    """
    from flowkit.commands.caption import add_data_arguments

    p = add_command_parser(subparsers, "evaluate", "the paper's evaluation (Tables 1, 2, 3, 6) as a report", DESCRIPTION, EPILOG)
    add_checkpoint_argument(p)
    p.add_argument("--split", choices=["val", "test"], default="test", help="the evaluated split (default test)")
    p.add_argument("--out", metavar="DIR", default=None, help="the report folder (default CHECKPOINT/report)")
    g = p.add_argument_group("captioning")
    g.add_argument(
        "--num-samples", type=positive_int, default=100, metavar="S", help="captions sampled per image (default 100, the paper's protocol)"
    )
    g.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N images of the split (default all)")
    g.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature of the text prior (default 1.0)")
    add_decoding_arguments(g)
    g.add_argument("--k", type=positive_int, default=60, help="neighbours of the consensus re-ranking (default 60, the paper's)")
    g.add_argument("--m", type=positive_int, default=125, help="consensus scores summed per candidate (default 125, the paper's)")
    g.add_argument(
        "--best-n", type=positive_int, default=5, metavar="N", help="captions per image kept for the diversity table (default 5)"
    )
    g.add_argument(
        "--rerank-features",
        choices=["auto", "shared", "raw"],
        default="auto",
        help="features of the re-ranking's k-NN: the model's image shared codes, the raw inputs, or auto (raw for feature data, shared for pixels)",
    )
    g.add_argument("--no-captioning", action="store_true", help="skip the captioning tables")
    g = p.add_argument_group("text-to-image")
    g.add_argument("--no-text-to-image", action="store_true", help="skip Table 6 (automatic for 'features' models)")
    g.add_argument(
        "--t2i-captions",
        type=positive_int,
        default=20,
        metavar="N",
        help="captions (the first caption of the first N images of the split) (default 20)",
    )
    g.add_argument("--t2i-samples", type=positive_int, default=16, metavar="S", help="images per caption, >= 2 (default 16)")
    g.add_argument("--ivom-restarts", type=non_negative_int, default=3, metavar="R", help="IvOM restarts, 0 skips IvOM (default 3)")
    g.add_argument("--ivom-steps", type=non_negative_int, default=100, metavar="K", help="IvOM Adam steps per restart (default 100)")
    g.add_argument(
        "--lpips",
        choices=["auto", "require", "off"],
        default="auto",
        help="LPIPS diversity: when it loads (auto), required, or off; pixel diversity is always reported",
    )
    add_seed_argument(p)
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_data_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    r"""Runs ``flowkit evaluate`` with parsed arguments; returns the exit status."""
    from flowkit.commands.caption import data_overrides
    from flowkit.evaluation import (
        evaluate_captioning,
        evaluate_text_to_image,
        format_captioning_table,
        format_text_to_image_table,
        load_run,
        run_facts,
        write_report,
    )
    from flowkit.io import run_folder
    from flowkit.metrics import spice_available

    start = time.perf_counter()
    progress = not args.no_progress
    if args.t2i_samples < 2 and not args.no_text_to_image:
        raise ValueError("--t2i-samples must be >= 2 (diversity compares samples of a caption)")
    model, data, ckpt = load_run(args.checkpoint, device=args.device, progress=progress, **data_overrides(args))
    results: dict[str, Any] = {}
    if not args.no_captioning:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"SPICE is left out")
            cap = evaluate_captioning(
                model,
                data,
                args.split,
                num_samples=args.num_samples,
                k=args.k,
                m=args.m,
                best_n=args.best_n,
                temperature=args.temperature,
                limit=args.limit,
                rerank_features=args.rerank_features,
                seed=args.seed,
                progress=progress,
                **decoding_of(args, ckpt),
            )
        if not spice_available():
            cap.spice_note = "SPICE is not reported: its Stanford CoreNLP jars are absent and pycocoevalcap cannot fetch them offline."
        results["captioning"] = cap
        print(format_captioning_table(cap))
        print()
    if not args.no_text_to_image:
        if model.config.pixels:
            t2i = evaluate_text_to_image(
                model,
                data,
                args.split,
                num_captions=args.t2i_captions,
                num_samples=args.t2i_samples,
                ivom_restarts=args.ivom_restarts,
                ivom_steps=args.ivom_steps,
                lpips=args.lpips,
                seed=args.seed,
                progress=progress,
            )
            results["text_to_image"] = t2i
            print(format_text_to_image_table(t2i))
            print()
        else:
            print("text-to-image skipped: the model works on image features, it does not generate pixels")
    if not results:
        raise ValueError("nothing to evaluate: both --no-captioning and --no-text-to-image were given")
    results["meta"] = run_facts(args.checkpoint, ckpt, args.device, time.perf_counter() - start)
    out = Path(args.out) if args.out else run_folder(args.checkpoint) / "report"
    paths = write_report(results, out)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
