#!/usr/bin/env python
r"""Text-to-image with LNFMM: diverse images for a few captions, saved as a PNG grid.

The caption fixes some attributes ("a red circle" says nothing of size or position); LNFMM's
image prior :math:`p(z'_v \mid z_s)` fills in the rest, so samples of one caption differ where
the caption leaves them free. Trains ``LNFMMConfig.small()`` on the embedded shapes data (or
loads a run with ``--checkpoint``), draws images for each caption, judges them with the
attribute classifier (accuracy against the caption, spread of the free attributes) and saves
``OUT/text_to_image.png``.

Usage::

    python examples/coco_text_to_image.py                           # train ~3 minutes, then draw
    python examples/coco_text_to_image.py --checkpoint runs/coco_caption/run
    python examples/coco_text_to_image.py --caption "a large green star" --caption "a circle above a square"
    python examples/coco_text_to_image.py --tiny                    # a smoke run of seconds
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

from flowkit.data import load_caption_data
from flowkit.data.judges import ClassifierConfig, free_attribute_spread, get_attribute_classifier, image_caption_accuracy
from flowkit.evaluation import load_model, plot_image_grid, sample_images_for_captions
from flowkit.models import LNFMMConfig
from flowkit.training import TrainSettings, train

CAPTIONS = ["a red circle", "a large blue square", "a small yellow star in the bottom row", "a green triangle to the left of a purple circle"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Diverse text-to-image samples from LNFMM, as a PNG grid.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="a trained run folder (e.g. from examples/coco_caption.py or flowkit train); default: train one")
    p.add_argument("--caption", action="append", default=None, help="a caption (repeatable); default four shapes captions")
    p.add_argument("--num-samples", type=int, default=8, help="images per caption")
    p.add_argument("--temperature", type=float, default=1.0, help="scales the image prior's base samples")
    p.add_argument("--steps", type=int, default=1000, help="training steps when no --checkpoint is given")
    p.add_argument("--train-images", type=int, default=2000, help="training images of the shapes data")
    p.add_argument("--seed", type=int, default=0, help="seed of the training and of the sampling")
    p.add_argument("--out", default="runs/text_to_image", help="output folder (the run in OUT/run, the grid in OUT/text_to_image.png)")
    p.add_argument("--threads", type=int, default=1, help="torch threads; 1 is fastest on 2 shared cores")
    p.add_argument("--tiny", action="store_true", help="a smoke run: 120 training images, 20 steps, a quickly trained judge")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    progress = not args.no_progress
    start = time.perf_counter()
    out = Path(args.out)
    if args.checkpoint is not None:
        model, ckpt = load_model(args.checkpoint)
        from flowkit.data import Vocabulary

        vocab = Vocabulary.from_dict(dict(ckpt["vocab"]))
        print(f"[model] loaded {args.checkpoint} (step {ckpt['step']})")
    else:
        sizes = {"train": 120, "val": 4, "test": 4} if args.tiny else {"train": args.train_images, "val": 50, "test": 50}
        steps = 20 if args.tiny else args.steps
        data = load_caption_data("shapes", sizes=sizes, seed=0, progress=progress)
        meta = {"data": {"data": "shapes", "sizes": sizes, "data_seed": 0}, "preset": "small"}
        config = LNFMMConfig.small(image_encoder_init_steps=20) if args.tiny else LNFMMConfig.small()
        trainer = train(config, data, TrainSettings(steps=steps, batch_size=16 if args.tiny else 32, seed=args.seed, progress=progress), out=out / "run", meta=meta)
        model, vocab = trainer.module.cpu().eval(), data.vocab
        print(f"[train] {steps} steps in {time.perf_counter() - start:.0f}s -> {out / 'run'}")
    if not model.config.pixels:
        raise SystemExit("this model works on image features and cannot draw images")

    captions = args.caption or CAPTIONS
    images = sample_images_for_captions(model, captions, vocab, args.num_samples, args.temperature, seed=args.seed, progress=progress)
    path = plot_image_grid(captions, images, out / "text_to_image.png", max_samples=args.num_samples, title=f"{args.num_samples} samples per caption")

    # the judge: a small classifier reading the scene off an image (trained once, cached)
    judge_cfg = ClassifierConfig(train_size=256, test_size=64, epochs=1) if args.tiny else None
    judge = get_attribute_classifier(judge_cfg, progress=progress)
    print(f"\n{'caption':<52} {'accuracy':>8} {'spread':>7}  (classifier accuracy against the caption; entropy of free attributes, 0..1)")
    for c, imgs in zip(captions, images):
        try:
            acc = image_caption_accuracy(imgs, c, judge)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                spread = free_attribute_spread(imgs, c, judge)["mean"]
            shown = "n/a" if spread != spread else f"{spread:.2f}"  # NaN: no image matched the caption
            print(f"{c:<52} {acc:>8.2f} {shown:>7}")
        except ValueError as e:  # not a caption of the shapes grammar
            print(f"{c:<52} {'n/a':>8} {'n/a':>7}  ({e})")
    print(f"\n[done] {len(captions)} captions x {args.num_samples} images -> {path} ({time.perf_counter() - start:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
