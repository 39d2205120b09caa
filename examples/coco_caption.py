#!/usr/bin/env python
r"""Diverse image captioning with LNFMM, end to end, offline, on a 2-core CPU in under 10 minutes.

What it does, with no arguments:

1. exports the embedded shapes dataset in COCO format (PNG images, ``captions_*.json``,
   ``dataset_coco.json``) to ``$FLOWKIT_CACHE/shapes_coco`` (default ``~/.cache/flowkit``);
2. loads it back through the COCO path (``load_caption_data("coco", ...)``, pycocotools);
3. trains ``LNFMMConfig.small()`` on the CPU with flowkit's training engine;
4. samples 100 captions per test image, re-ranks them by consensus and prints a few, then the
   paper's metric tables: oracle and consensus re-ranked BLEU-1..4 / METEOR / ROUGE-L / CIDEr
   (Tables 1, 2), diversity (Table 3), and the exact ground-truth accuracy and coverage;
5. writes the report (``report.md``, ``results.json``, ``captions.json``, ``captions.png``).

Defaults: 2,000 training images (10,000 pairs), 200 val / 200 test images, 1,500 steps of batch
32, evaluation on the first 100 test images with 100 samples each (the paper's protocol; use
``--test-images`` to evaluate more). With ``--coco-root PATH --features FILE`` it runs real
COCO with ``LNFMMConfig.paper()`` (the features encoder; a GPU is used when present).

Usage::

    python examples/coco_caption.py                       # the embedded data, ~6-7 minutes
    python examples/coco_caption.py --tiny                # a ~30 second smoke run
    python examples/coco_caption.py --coco-root data/coco --features data/coco/fc7.npz --steps 300000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import flowkit
from flowkit.data import load_caption_data
from flowkit.data.judges import cache_dir
from flowkit.data.shapes import DEFAULT_SIZES, export_coco
from flowkit.evaluation import evaluate_captioning, format_captioning_table, probe_image_codes, scenes_from_export, write_report
from flowkit.metrics import spice_available
from flowkit.models import LNFMMConfig
from flowkit.training import TrainSettings, train

TINY = {"sizes": {"train": 120, "val": 8, "test": 8}, "steps": 30, "test_images": 4, "num_samples": 10, "batch_size": 16, "pretrain_steps": 20}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train LNFMM for diverse captioning on the embedded shapes data (exported to COCO format) or real COCO, "
        "then print sampled captions and the paper's metric tables and write a report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--coco-root", metavar="PATH", default=None, help="real COCO-format folder (Karpathy split file dataset_coco.json); uses LNFMMConfig.paper()")
    p.add_argument("--features", metavar="FILE", default=None, help="pre-extracted image features keyed by image id (e.g. VGG-16 fc7), with --coco-root")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 1500 on the embedded data, 100000 on COCO)")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per step (default 32 embedded, 128 COCO)")
    p.add_argument("--out", default="runs/coco_caption", help="output folder: the run (checkpoint) in OUT/run, the report in OUT/report")
    p.add_argument("--num-samples", type=int, default=100, help="captions sampled per test image (the paper's protocol: 100)")
    p.add_argument("--test-images", type=int, default=100, help="test images evaluated (the first N of the test split)")
    p.add_argument("--train-images", type=int, default=DEFAULT_SIZES["train"], help="training images of the embedded data (5 captions each)")
    p.add_argument("--seed", type=int, default=0, help="seed of the training (initialization, noise, data order) and of the sampling")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated shapes data")
    p.add_argument("--export-root", default=None, help="where to export the shapes data (default $FLOWKIT_CACHE/shapes_coco or ~/.cache/flowkit/shapes_coco)")
    p.add_argument("--threads", type=int, default=1, help="torch threads; 1 is fastest on 2 shared cores, try 2 on an idle machine")
    p.add_argument("--show", type=int, default=3, help="test images whose captions are printed")
    p.add_argument("--tiny", action="store_true", help="a ~30 second smoke run: 120 training images, 30 steps, 4 test images x 10 samples")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p.parse_args(argv)


def export_shapes(args: argparse.Namespace, sizes: dict[str, int]) -> Path:
    r"""Exports the shapes data to COCO format once (idempotent) and returns the folder."""
    if args.export_root is not None:
        root = Path(args.export_root)
    elif sizes == DEFAULT_SIZES and args.data_seed == 0:
        root = cache_dir() / "shapes_coco"
    else:
        root = cache_dir() / f"shapes_coco_{sizes['train']}_{sizes['val']}_{sizes['test']}_seed{args.data_seed}"
    return export_coco(root, sizes=sizes, seed=args.data_seed, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(max(1, args.threads))
    warnings.filterwarnings("ignore", message=r"SPICE is left out")  # stated in the report instead
    progress = not args.no_progress
    real = args.coco_root is not None
    if args.features is not None and not real:
        raise SystemExit("--features needs --coco-root (the features of real COCO images)")

    # 1-2. data: export the shapes data to COCO format and read it back with the COCO loader
    if real:
        root = Path(args.coco_root)
        print(f"[data] real COCO at {root} (Karpathy split)" + (f", features {args.features}" if args.features else ""))
        data = load_caption_data("coco", root=root, features=args.features, split_scheme="karpathy", progress=progress)
        scenes = None
        config = LNFMMConfig.paper()
        steps, batch_size = args.steps or 100000, args.batch_size or 128
        data_meta: dict[str, Any] = {"data": "coco", "coco_root": str(root), "features": args.features, "split_scheme": "karpathy"}
    else:
        if args.tiny:
            sizes = dict(TINY["sizes"])
        else:
            sizes = {**DEFAULT_SIZES, "train": args.train_images}
        t0 = time.perf_counter()
        root = export_shapes(args, sizes)
        print(f"[data] shapes data in COCO format at {root} ({time.perf_counter() - t0:.1f}s)")
        # split_scheme="coco": the captions_<split>.json files are read with pycocotools
        data = load_caption_data("coco", root=root, split_scheme="coco", progress=progress)
        scenes = scenes_from_export(root)
        # small() pre-trains its image trunk first (about 30 s, then cached; docs/lnfmm.md)
        config = LNFMMConfig.small(image_encoder_init_steps=TINY["pretrain_steps"]) if args.tiny else LNFMMConfig.small()
        steps = args.steps or (TINY["steps"] if args.tiny else 1500)
        batch_size = args.batch_size or (TINY["batch_size"] if args.tiny else 32)
        data_meta = {"data": "coco", "coco_root": str(root), "features": None, "split_scheme": "coco"}
    n_train = len(set(data.train.image_ids))
    print(f"[data] {n_train} training images ({len(data.train)} pairs), {len(data.val)} val, {len(data.test)} test; vocabulary {len(data.vocab)} tokens")

    # 3. training with flowkit's engine (checkpoint, config, vocab and log in OUT/run)
    out = Path(args.out)
    run_dir = out / "run"
    settings = TrainSettings(steps=steps, batch_size=batch_size, seed=args.seed, progress=progress, log_every=10)
    t0 = time.perf_counter()
    trainer = train(config, data, settings, out=run_dir, meta={"data": data_meta, "preset": "paper" if real else "small"})
    train_s = time.perf_counter() - t0
    terms = ", ".join(f"{k}={v:.3g}" for k, v in trainer.last_terms.items())
    print(f"[train] {steps} steps of batch {batch_size} in {train_s:.0f}s; last loss terms: {terms}")
    model = trainer.module.cpu().eval()

    # 4. sampling, re-ranking and the metric tables
    num_samples = TINY["num_samples"] if args.tiny and args.num_samples == 100 else args.num_samples
    test_images = TINY["test_images"] if args.tiny and args.test_images == 100 else args.test_images
    t0 = time.perf_counter()
    results = evaluate_captioning(model, data, "test", num_samples=num_samples, limit=test_images, scenes=scenes, seed=args.seed, progress=progress)
    eval_s = time.perf_counter() - t0

    print()
    print(f"Diverse captions ({num_samples} samples per image; the best 5 after consensus re-ranking, and distinct samples):")
    for iid in list(results["ranked"])[: args.show]:
        samples = results["samples"][iid]
        print(f"\n  test image {iid}   reference: {results['references'][iid][0]!r}")
        for k, c in enumerate(results["ranked"][iid]):
            print(f"    {k + 1}. {c}")
        distinct = list(dict.fromkeys(samples))
        print(f"    ({len(distinct)} distinct of {len(samples)} samples; others: {'; '.join(distinct[:4])})")
    print()
    print(format_captioning_table(results))
    print()
    probe_line = None
    if scenes is not None:
        # Does the image code carry the image's content? (docs/lnfmm.md: at CPU budgets it does not)
        probes = probe_image_codes(model, data, num_train=2000, num_test=500, scenes=scenes)
        probe_line = ", ".join(f"{k} {v['accuracy']:.2f} ({v['chance']:.2f})" for k, v in probes.items())
        print(f"[probe] image shared code, linear-probe test accuracy (best constant guess): {probe_line}")
        print()

    # 5. the report
    total_s = time.perf_counter() - start
    meta = {
        "data": f"COCO at {root}" if real else f"embedded shapes data exported to COCO format at {root}, loaded with pycocotools",
        "model": "LNFMMConfig.paper()" if real else "LNFMMConfig.small()",
        "training": f"{steps} steps, batch {batch_size}, seed {args.seed}, {train_s:.0f}s",
        "evaluation": f"{results['num_images']} test images x {num_samples} samples, {eval_s:.0f}s",
        "checkpoint": str(run_dir),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} thread(s), flowkit {flowkit.__version__}",
        "wall time": f"{total_s:.0f}s",
        **({"image-code probes": f"linear-probe test accuracy (best constant guess): {probe_line}"} if probe_line else {}),
        "SPICE": "computed" if spice_available() else "not computed (its Stanford CoreNLP jars are absent; pycocoevalcap cannot fetch them offline)",
    }
    paths = write_report({"captioning": results, "meta": meta}, out / "report", title="LNFMM diverse captioning")
    print(f"[report] {paths['markdown']} (+ {', '.join(p.name for k, p in paths.items() if k != 'markdown')})")
    print(f"[done] total wall time {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
