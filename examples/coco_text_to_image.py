#!/usr/bin/env python
r"""Text-to-image with LNFMM: diverse images for captions, judged, and saved as a PNG grid.

The caption fixes some attributes ("a red circle" says nothing of size or position); LNFMM's
image prior :math:`p(z'_v \mid z_s)` fills in the rest, so samples of one caption differ where
the caption leaves them free.

What it does, with no arguments:

1. exports the embedded shapes dataset in COCO format to ``$FLOWKIT_CACHE/shapes_coco`` (the
   main job's folder; done once) and loads it back through the COCO path with the pre-trained
   shapes trunk's *reading* of each image (per grid cell: empty or which shape, colour and
   size; 117 numbers, extracted once), the analogue of VGG-16's class scores;
2. trains the text-to-image recipe (``flowkit.models.lnfmm.recipes.text_to_image_recipe``:
   LNFMM decodes the reading from the caption's shared code and a sample of the image prior;
   ``docs/lnfmm.md``), and gets the cell renderer that draws readings as pixels (pre-trained
   on another data seed and cached, like the trunk: ``flowkit.data.renderer``);
3. draws ``--num-samples`` images for the first caption of each of ``--test-images`` test
   images and judges them with the attribute classifier (a network the model never saw):
   the fraction of images true of their caption, and the spread of the attributes each
   caption leaves free (normalized entropy, 0..1), at temperatures 0, 0.5 and 1;
4. writes ``OUT/results.json`` (``text_to_image.accuracy`` and
   ``text_to_image.free_attribute_spread`` at temperature 1, the frontier over temperatures)
   and ``OUT/text_to_image.png`` (samples for four display captions and a few test captions).

Usage::

    python examples/coco_text_to_image.py                           # train, then draw (under 10 minutes)
    python examples/coco_text_to_image.py --checkpoint runs/text_to_image/run
    python examples/coco_text_to_image.py --caption "a large green star" --caption "a circle above a square"
    python examples/coco_text_to_image.py --tiny                    # a smoke run of seconds
    python examples/coco_text_to_image.py --pixels                  # the end-to-end pixel recipe (0.26)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from flowkit.data import CaptionData, Vocabulary
from flowkit.data.features import load_shapes_coco
from flowkit.data.judges import ClassifierConfig, free_attribute_spread, get_attribute_classifier, image_caption_accuracy
from flowkit.data.renderer import RendererConfig, get_cell_renderer
from flowkit.data.shapes import DEFAULT_SIZES
from flowkit.evaluation import image_drawer, load_model, plot_image_grid, sample_images_for_captions
from flowkit.evaluation.frontier import image_frontier
from flowkit.io import atomic_write_json
from flowkit.models.lnfmm.recipes import Recipe, text_to_image_pixels_recipe, text_to_image_recipe
from flowkit.training import TrainSettings, train

CAPTIONS = [
    "a red circle",
    "a large blue square",
    "a small yellow star in the bottom row",
    "a green triangle to the left of a purple circle",
]
TEMPERATURES = (0.0, 0.5, 1.0)  # the last is the reported one
TINY = {"sizes": {"train": 120, "val": 8, "test": 8}, "steps": 20, "batch_size": 16, "test_images": 4, "trunk_images": 200}
TINY_RENDERER = RendererConfig(steps=20, batch_size=8, width=4, train_size=64, trunk_train_size=200)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Diverse text-to-image samples from LNFMM, judged, as a PNG grid.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", default=None, help="a trained text-to-image run folder; default: train one")
    p.add_argument("--caption", action="append", default=None, help="a display caption (repeatable); default four shapes captions")
    p.add_argument("--num-samples", type=int, default=16, help="images per caption")
    p.add_argument("--test-images", type=int, default=100, help="test captions judged (the first caption of each test image)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's budget)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the embedded dataset")
    p.add_argument("--seed", type=int, default=0, help="seed of the training and of the sampling")
    p.add_argument("--out", default="runs/text_to_image", help="output folder (the run in OUT/run, results.json and the grid in OUT)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the job runs alone on 2 cores)")
    p.add_argument(
        "--tiny", action="store_true", help="a smoke run: 120 training images, 20 steps, 4 test captions, a quickly trained judge"
    )
    p.add_argument("--pixels", action="store_true", help="train the end-to-end pixel recipe instead (text_to_image_pixels_recipe)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p.parse_args(argv)


def load_data(args: argparse.Namespace, recipe: Recipe) -> CaptionData:
    r"""The embedded data through the COCO export (shared with the main job), as the recipe reads it."""
    sizes = dict(TINY["sizes"]) if args.tiny else dict(DEFAULT_SIZES)
    trunk_images = TINY["trunk_images"] if args.tiny else 3000
    return load_shapes_coco(recipe.image_input, sizes, args.data_seed, trunk_images, progress=not args.no_progress).data


def train_model(args: argparse.Namespace, recipe: Recipe, data: CaptionData, out: Path) -> torch.nn.Module:
    settings = recipe.settings()
    if args.tiny:
        settings.update(steps=TINY["steps"], batch_size=TINY["batch_size"])
    if args.steps is not None:
        settings["steps"] = args.steps
    settings.update(validate_every=0, seed=args.seed, progress=not args.no_progress)
    meta = {"data": "coco", "data_seed": args.data_seed, "preset": recipe.name}
    config = recipe.config.replace(image_encoder_init_steps=20) if args.tiny and args.pixels else recipe.config
    trainer = train(config, data, TrainSettings(**settings), out=out / "run", meta=meta)
    return trainer.module.cpu().eval()


def judge_captions(
    model: torch.nn.Module, captions: list[str], vocab: Vocabulary, judge: Any, args: argparse.Namespace, render: Any
) -> dict[str, Any]:
    r"""Accuracy and free-attribute spread of generated images at each temperature."""
    points = image_frontier(
        model, captions, vocab, TEMPERATURES, args.num_samples, judge, seed=args.seed, progress=not args.no_progress, render=render
    )
    for p in points:
        print(
            f"[judge] {p.label:<6} accuracy {p.accuracy:.3f}  free-attribute spread {p.coverage:.3f} ({p.distinct:.0f}/{len(captions)} captions with a true image)"
        )
    frontier = [
        {
            "temperature": t,
            "accuracy": p.accuracy,
            "free_attribute_spread": _finite(p.coverage),
            "captions_with_a_true_image": int(p.distinct),
        }
        for t, p in zip(TEMPERATURES, points)
    ]
    return {"accuracy": points[-1].accuracy, "free_attribute_spread": _finite(points[-1].coverage), "frontier": frontier}


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x  # JSON has no NaN


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    start = time.perf_counter()
    out = Path(args.out)
    recipe = text_to_image_pixels_recipe() if args.pixels else text_to_image_recipe()
    if args.checkpoint is not None:
        model, ckpt = load_model(args.checkpoint)
        vocab = Vocabulary.from_dict(dict(ckpt["vocab"]))
        if model.config.pixels != (recipe.image_input == "pixels"):
            recipe = text_to_image_recipe() if args.pixels else text_to_image_pixels_recipe()  # read the data as the model does
        print(f"[model] loaded {args.checkpoint} (step {ckpt['step']})")
        data = load_data(args, recipe)
    else:
        data = load_data(args, recipe)
        model, vocab = train_model(args, recipe, data, out), data.vocab
        print(f"[train] done in {time.perf_counter() - start:.0f}s -> {out / 'run'}")
    try:
        tiny = get_cell_renderer(TINY_RENDERER) if args.tiny and not model.config.pixels else None
        render = image_drawer(model, tiny, progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"{e} (no --checkpoint trains it)") from None

    judge = get_attribute_classifier(
        ClassifierConfig(train_size=256, test_size=64, epochs=1) if args.tiny else None, progress=not args.no_progress
    )
    n = min(TINY["test_images"] if args.tiny else args.test_images, len(data.test))
    test_captions = [data.references["test"][int(data.test[i]["image_id"])][0] for i in range(n)]
    results = judge_captions(model, test_captions, vocab, judge, args, render)

    display = (args.caption or CAPTIONS) + test_captions[:4]
    images = sample_images_for_captions(model, display, vocab, args.num_samples, 1.0, seed=args.seed, render=render)
    grid = plot_image_grid(
        display, images, out / "text_to_image.png", max_samples=min(8, args.num_samples), title="samples at temperature 1"
    )
    print(f"\n{'caption':<52} {'accuracy':>8} {'spread':>7}")
    for c, imgs in zip(display, images):
        try:
            acc, spread = image_caption_accuracy(imgs, c, judge), free_attribute_spread(imgs, c, judge)["mean"]
            print(f"{c:<52} {acc:>8.2f} {'n/a' if math.isnan(spread) else f'{spread:.2f}':>7}")
        except ValueError as e:  # not a caption of the shapes grammar
            print(f"{c:<52} {'n/a':>8} {'n/a':>7}  ({e})")

    record = {
        "text_to_image": {
            **results,
            "test_captions": n,
            "samples_per_caption": args.num_samples,
            "judge": "shapes attribute classifier (seed 7919)",
            "recipe": recipe.name,
            "drawn_by": "the model's image decoder" if render is None else "the pre-trained cell renderer (flowkit.data.renderer)",
        },
        "seconds": time.perf_counter() - start,
        "grid": str(grid),
    }
    atomic_write_json(out / "results.json", record)
    spread = results["free_attribute_spread"]
    print(
        f"\n[done] accuracy {results['accuracy']:.3f}, free-attribute spread {'n/a' if spread is None else f'{spread:.3f}'} at T=1 "
        f"-> {out / 'results.json'}, {grid} ({time.perf_counter() - start:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
