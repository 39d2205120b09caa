#!/usr/bin/env python
r"""Diverse image captioning with LNFMM, end to end, offline, on a 2-core CPU in under 10 minutes.

What it does, with no arguments (the paper's route: image features extracted once):

1. exports the embedded shapes dataset in COCO format (PNG images, ``captions_*.json``,
   ``dataset_coco.json``) to ``$FLOWKIT_CACHE/shapes_coco`` (default ``~/.cache/flowkit``);
2. extracts image features once with the pre-trained shapes trunk (the analogue of VGG-16
   fc7, trained on images of another data seed; ``flowkit.data.features``) into
   ``features/*.npz`` of that folder, keyed by image id;
3. loads both back through the COCO path (``load_caption_data("coco", features=...)``);
4. trains the captioning recipe (``flowkit.models.lnfmm.recipes.captioning_recipe``) with
   flowkit's training engine, writing a validation learning curve (``run/validation.csv``);
5. samples 100 captions per test image, re-ranks them by consensus and prints a few, then the
   paper's metric tables: oracle and consensus re-ranked BLEU-1..4 / METEOR / ROUGE-L / CIDEr
   (Tables 1, 2), diversity (Table 3), the exact ground-truth accuracy and coverage, linear
   probes of the features and codes, and the accuracy-coverage frontier over temperatures;
6. writes the report (``report.md``, ``results.json``, ``captions.json``, ``captions.png``,
   ``frontier.png``).

Defaults: 2,000 training images (10,000 pairs), 200 val / 200 test images, the recipe's budget,
evaluation on the first 100 test images with 100 samples each (the paper's protocol; use
``--test-images`` to evaluate more). ``--pixels`` trains ``LNFMMConfig.small()`` end to end on
pixels instead. With ``--coco-root PATH --features FILE`` it runs real COCO with
``LNFMMConfig.paper()`` (the features encoder; a GPU is used when present).

Usage::

    python examples/coco_caption.py                       # the embedded data, under 10 minutes
    python examples/coco_caption.py --tiny                # a ~30 second smoke run
    python examples/coco_caption.py --pixels              # end-to-end pixel training (small())
    python examples/coco_caption.py --coco-root data/coco --features data/coco/fc7.npz --steps 300000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import flowkit
from flowkit.data import load_caption_data
from flowkit.data.coco import load_image, pil_to_tensor, read_splits
from flowkit.data.features import extract_features, shapes_trunk_features
from flowkit.data.shapes import DEFAULT_SIZES, export_coco, shapes_export_root
from flowkit.evaluation import (
    evaluate_captioning,
    format_captioning_table,
    probe_image_codes,
    probe_text_codes,
    scenes_from_export,
    write_report,
)
from flowkit.evaluation.diagnostics import caption_validator
from flowkit.evaluation.frontier import caption_frontier, lnfmm_settings, plot_frontier
from flowkit.evaluation.probes import probe_scene_attributes
from flowkit.metrics import spice_available
from flowkit.models import LNFMMConfig
from flowkit.models.lnfmm.recipes import captioning_recipe, choose_decoding
from flowkit.training import TrainSettings, train

TINY = {
    "sizes": {"train": 120, "val": 8, "test": 8},
    "steps": 30,
    "test_images": 4,
    "num_samples": 10,
    "batch_size": 16,
    "pretrain_steps": 20,
    "trunk_images": 200,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train LNFMM for diverse captioning on the embedded shapes data (exported to COCO format) or real COCO, "
        "then print sampled captions and the paper's metric tables and write a report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--coco-root",
        metavar="PATH",
        default=None,
        help="real COCO-format folder (Karpathy split file dataset_coco.json); uses LNFMMConfig.paper()",
    )
    p.add_argument(
        "--features",
        metavar="FILE",
        default=None,
        help="pre-extracted image features keyed by image id (e.g. VGG-16 fc7), with --coco-root",
    )
    p.add_argument(
        "--pixels",
        action="store_true",
        help="embedded data: train LNFMMConfig.small() end to end on pixels instead of the captioning recipe on features",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps (default: the captioning recipe's budget; 1500 with --pixels; 100000 on COCO)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="pairs per step (default: the recipe's; 128 on COCO)")
    p.add_argument("--out", default="runs/coco_caption", help="output folder: the run (checkpoint) in OUT/run, the report in OUT/report")
    p.add_argument("--num-samples", type=int, default=100, help="captions sampled per test image (the paper's protocol: 100)")
    p.add_argument(
        "--method",
        choices=["greedy", "beam"],
        default=None,
        help="decoding of each sampled latent (default: the captioning recipe's beam search; greedy with --pixels or --coco-root)",
    )
    p.add_argument("--beam-width", type=int, default=None, help="beam width of --method beam (default: the recipe's 5; else 2)")
    p.add_argument("--test-images", type=int, default=100, help="test images evaluated (the first N of the test split)")
    p.add_argument(
        "--train-images", type=int, default=DEFAULT_SIZES["train"], help="training images of the embedded data (5 captions each)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the training (initialization, noise, data order) and of the sampling")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated shapes data")
    p.add_argument(
        "--export-root",
        default=None,
        help="where to export the shapes data (default $FLOWKIT_CACHE/shapes_coco or ~/.cache/flowkit/shapes_coco)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads; 1 is fastest on 2 shared cores, try 2 on an idle machine")
    p.add_argument("--show", type=int, default=3, help="test images whose captions are printed")
    p.add_argument("--no-frontier", action="store_true", help="skip the accuracy-coverage sweep over temperatures")
    p.add_argument("--tiny", action="store_true", help="a ~30 second smoke run: 120 training images, 30 steps, 4 test images x 10 samples")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p.parse_args(argv)


def export_shapes(args: argparse.Namespace, sizes: dict[str, int]) -> Path:
    r"""Exports the shapes data to COCO format once (idempotent) and returns the folder."""
    root = Path(args.export_root) if args.export_root is not None else shapes_export_root(sizes, args.data_seed)
    return export_coco(root, sizes=sizes, seed=args.data_seed, progress=not args.no_progress)


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    r"""Data, config and budget of the chosen route (real COCO, embedded features, embedded pixels)."""
    progress = not args.no_progress
    if args.coco_root is not None:
        root = Path(args.coco_root)
        print(f"[data] real COCO at {root} (Karpathy split)" + (f", features {args.features}" if args.features else ""))
        data = load_caption_data("coco", root=root, features=args.features, split_scheme="karpathy", progress=progress)
        meta = {"data": "coco", "coco_root": str(root), "features": args.features, "split_scheme": "karpathy"}
        return dict(
            data=data,
            root=root,
            scenes=None,
            config=LNFMMConfig.paper(),
            preset="paper",
            steps=args.steps or 100000,
            batch_size=args.batch_size or 128,
            meta=meta,
            validate_every=0,
            lr_schedule="constant",
            decoding=choose_decoding({"method": "greedy"}, args.method, args.beam_width),
        )
    sizes = dict(TINY["sizes"]) if args.tiny else {**DEFAULT_SIZES, "train": args.train_images}
    t0 = time.perf_counter()
    root = export_shapes(args, sizes)
    print(f"[data] shapes data in COCO format at {root} ({time.perf_counter() - t0:.1f}s)")
    scenes = scenes_from_export(root)
    if args.pixels:
        # small() pre-trains its image trunk first (about 30 s, then cached; docs/lnfmm.md)
        config = LNFMMConfig.small(image_encoder_init_steps=TINY["pretrain_steps"]) if args.tiny else LNFMMConfig.small()
        data = load_caption_data("coco", root=root, split_scheme="coco", progress=progress)
        meta = {"data": "coco", "coco_root": str(root), "features": None, "split_scheme": "coco"}
        steps, batch_size, every, preset, schedule = 1500, 32, 500, "small", "constant"
        decoding = {"method": "greedy"}
    else:
        t0 = time.perf_counter()
        trunk = shapes_trunk_features(train_size=TINY["trunk_images"] if args.tiny else 3000, progress=progress)
        features = extract_features(root, trunk, name="shapes_trunk", progress=progress)
        print(f"[data] shapes-trunk features (576 per image, cached) at {features} ({time.perf_counter() - t0:.1f}s)")
        data = load_caption_data("coco", root=root, features=features, split_scheme="coco", progress=progress)
        recipe = captioning_recipe()
        meta = {"data": "coco", "coco_root": str(root), "features": str(features), "split_scheme": "coco"}
        config, steps, batch_size, every, preset = recipe.config, recipe.steps, recipe.batch_size, recipe.validate_every, "captioning"
        schedule, decoding = recipe.lr_schedule, recipe.decoding
    if args.tiny:
        steps, batch_size, every = TINY["steps"], TINY["batch_size"], 10
    return dict(
        data=data,
        root=root,
        scenes=scenes,
        config=config,
        preset=preset,
        steps=args.steps or steps,
        batch_size=args.batch_size or batch_size,
        meta=meta,
        validate_every=every,
        lr_schedule=schedule,
        decoding=choose_decoding(decoding, args.method, args.beam_width),
    )


def pixels_of(root: Path) -> Callable[[int], torch.Tensor]:
    r"""The PNG image of a test id (for the caption sheet of a features run)."""
    paths = {r.image_id: r.path for r in read_splits(root, "coco")["test"]}
    return lambda i: pil_to_tensor(load_image(paths[i]))


def probes(model: torch.nn.Module, data: Any, scenes: dict[int, Any]) -> dict[str, dict[str, Any]]:
    r"""Linear probes of the image input (features), its shared code, that code in text space,
    and the captions' shared code (each attribute on the captions that state it)."""
    out = {
        "code": probe_image_codes(model, data, scenes=scenes),
        "code_text_space": probe_image_codes(model, data, scenes=scenes, code=lambda m, x: m.encode_images(x)["shared_text"]),
        "caption_code": probe_text_codes(model, data),
    }
    if data.image_kind == "features":
        tr = list(dict.fromkeys(data.train.image_ids))[:2000]
        te = list(dict.fromkeys(data.test.image_ids))[:500]
        feats = lambda ids, d: torch.stack([d.images(i) for i in ids])  # noqa: E731
        out["features"] = probe_scene_attributes(
            feats(tr, data.train), [scenes[i] for i in tr], feats(te, data.test), [scenes[i] for i in te]
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(max(1, args.threads))
    warnings.filterwarnings("ignore", message=r"SPICE is left out")  # stated in the report instead
    progress = not args.no_progress
    if args.features is not None and args.coco_root is None:
        raise SystemExit("--features needs --coco-root (the features of real COCO images); the embedded data extracts its own")
    run = prepare(args)
    data, scenes, steps, batch_size = run["data"], run["scenes"], run["steps"], run["batch_size"]
    n_train = len(set(data.train.image_ids))
    print(
        f"[data] {n_train} training images ({len(data.train)} pairs), {len(data.val)} val, {len(data.test)} test; vocabulary {len(data.vocab)} tokens"
    )

    # training with flowkit's engine (checkpoint, config, vocab, log and learning curve in OUT/run)
    out = Path(args.out)
    run_dir = out / "run"
    validate = caption_validator(data, scenes) if scenes is not None and run["validate_every"] else None
    settings = TrainSettings(
        steps=steps,
        batch_size=batch_size,
        seed=args.seed,
        progress=progress,
        log_every=10,
        validate_every=run["validate_every"] if validate else 0,
        lr_schedule=run["lr_schedule"],
    )
    t0 = time.perf_counter()
    trainer = train(run["config"], data, settings, out=run_dir, meta={"data": run["meta"], "preset": run["preset"]}, validate=validate)
    train_s = time.perf_counter() - t0
    terms = ", ".join(f"{k}={v:.3g}" for k, v in trainer.last_terms.items())
    print(f"[train] {steps} steps of batch {batch_size} in {train_s:.0f}s; last loss terms: {terms}")
    model = trainer.module.cpu().eval()

    # sampling, re-ranking and the metric tables
    num_samples = TINY["num_samples"] if args.tiny and args.num_samples == 100 else args.num_samples
    test_images = TINY["test_images"] if args.tiny and args.test_images == 100 else args.test_images
    t0 = time.perf_counter()
    decoding = run["decoding"]
    results = evaluate_captioning(
        model, data, "test", num_samples=num_samples, limit=test_images, scenes=scenes, seed=args.seed, progress=progress, **decoding
    )
    eval_s = time.perf_counter() - t0
    if data.image_kind == "features" and scenes is not None:  # the caption sheet shows the export's PNGs
        results.samples.pixels = pixels_of(run["root"])

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
    extra: dict[str, Any] = {}
    if scenes is not None:
        extra["probes"] = probes(model, data, scenes)
        for name, table in extra["probes"].items():
            line = ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in table.items())
            print(f"[probe] {name}: linear-probe test accuracy {line}")
        if not args.no_frontier:
            points = caption_frontier(
                model, data, lnfmm_settings(**decoding), scenes, num_samples=num_samples, limit=test_images, seed=args.seed
            )
            extra["frontier"] = [p.to_json() for p in points]
            ref = results.get("ground_truth", {}).get("reference_coverage")
            png = plot_frontier(
                {"LNFMM (captioning recipe)" if not args.pixels else "LNFMM small() (pixels)": [points]},
                out / "report" / "frontier.png",
                reference_coverage=ref,
            )
            print(
                "[frontier] " + "; ".join(f"{p.label}: accuracy {p.accuracy:.3f}, coverage {p.coverage:.4f}" for p in points) + f" -> {png}"
            )
        print()

    # the report
    total_s = time.perf_counter() - start
    model_name = {
        "paper": "LNFMMConfig.paper()",
        "small": "LNFMMConfig.small() on pixels",
        "captioning": "captioning recipe (LNFMMConfig.captioning() on shapes-trunk features)",
    }[run["preset"]]
    meta = {
        "data": f"COCO at {run['root']}"
        if args.coco_root
        else f"embedded shapes data exported to COCO format at {run['root']}, loaded with pycocotools",
        "model": model_name,
        "training": f"{steps} steps, batch {batch_size}, {run['lr_schedule']} learning rate, seed {args.seed}, {train_s:.0f}s",
        "evaluation": f"{results['num_images']} test images x {num_samples} samples, "
        + ("beam-{beam_width}".format(**decoding) if decoding["method"] == "beam" else decoding["method"])
        + f" decoding of each latent, {eval_s:.0f}s",
        "checkpoint": str(run_dir),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} thread(s), flowkit {flowkit.__version__}",
        "wall time": f"{total_s:.0f}s",
        "SPICE": "computed"
        if spice_available()
        else "not computed (its Stanford CoreNLP jars are absent; pycocoevalcap cannot fetch them offline)",
    }
    paths = write_report({"captioning": results, **extra, "meta": meta}, out / "report", title="LNFMM diverse captioning")
    print(f"[report] {paths['markdown']} (+ {', '.join(p.name for k, p in paths.items() if k != 'markdown')})")
    print(f"[done] total wall time {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
