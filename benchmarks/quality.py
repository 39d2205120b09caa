#!/usr/bin/env python
r"""Caption and image quality of LNFMM and its ablations on the embedded shapes data.

Variants (each trained with the same data, steps and seeds, from ``LNFMMConfig.small()``):

* ``lnfmm``: LNFMM (flow priors, flow alignment f_s);
* ``cvae``: the CVAE baseline, Gaussian conditional priors (``prior="gaussian"``);
* ``mse``: LNFMM-MSE, shared codes aligned by MSE without f_s (``alignment="mse"``);
* ``txt``: LNFMM-TXT, no image-specific code (``image_specific_dim=0``);
* ``pre`` / ``pre-noisy``: LNFMM with the conv encoder's trunk pre-trained on shapes
  attributes and frozen (``image_encoder_init="shapes-attributes"``), the second also with
  ``text_noise_std=0.5`` (not in the default run: ``--variants lnfmm pre pre-noisy``).

Metrics: the paper's oracle and consensus re-ranked scores (Tables 1, 2), diversity of the
best 5 (Table 3), the exact ground-truth caption accuracy and coverage, and text-to-image
classifier accuracy, free-attribute spread, Inception score (attribute classifier) and IvOM.
Reported as mean ± std over seeds in Markdown (``OUT/quality.md``) and JSON (``OUT/quality.json``).

``--task t2i-frontier``: the text-to-image recipe and the deterministic caption -> image
decoder (the recipe without z'_v), same data (the trunk's reading of the export's images,
drawn by the pre-trained cell renderer), budget and seeds; ``t2i-pixels`` (on request: the
end-to-end pixel recipe). The attribute classifier's accuracy against the free-attribute
spread of ``--t2i-captions`` test captions x ``--t2i-samples`` images at the same temperatures.

``--task frontier`` (the paper's claim made exact): LNFMM's captioning recipe, the supervised
captioner without a latent and the CVAE (Gaussian prior, free bits), each trained on the same
shapes-trunk features with the same budget and seeds, sampled at the temperatures
{0, 0.25, 0.5, 0.75, 1} (the captioner: word temperatures and beams 2, 5); ground-truth
accuracy against coverage on test images, drawn in one PNG with the spread over seeds, and the
coverage ratio at equal accuracy.

Usage::

    python benchmarks/quality.py --task frontier --seeds 0 1      # the frontier (docs/img/frontier_captioning.png)
    python benchmarks/quality.py --task t2i-frontier --seeds 0 1 --t2i-captions 100   # docs/img/frontier_text_to_image.png
    python benchmarks/quality.py                                  # full: 2 seeds x 1500 steps (about an hour on 2 cores)
    python benchmarks/quality.py --steps 200 --seeds 0 --train-images 500 --test-images 20   # reduced
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowkit.data import load_caption_data
from flowkit.data.features import load_shapes_coco
from flowkit.data.judges import get_attribute_classifier
from flowkit.evaluation import (
    evaluate_captioning,
    evaluate_text_to_image,
    image_drawer,
    probe_image_codes,
    scenes_from_export,
    to_jsonable,
)
from flowkit.evaluation.frontier import FrontierPoint, caption_frontier, captioner_settings, image_frontier, lnfmm_settings, plot_frontier
from flowkit.models import LNFMMConfig
from flowkit.models.lnfmm.recipes import RECIPES
from flowkit.training import TrainSettings, train

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "lnfmm": ("LNFMM", {}),
    "cvae": ("CVAE baseline (Gaussian prior)", {"prior": "gaussian"}),
    "mse": ("LNFMM-MSE (no f_s)", {"alignment": "mse"}),
    "txt": ("LNFMM-TXT (no z'_v)", {"image_specific_dim": 0}),
    # the pre-trained conv encoder (docs/lnfmm.md): trunk pre-trained on shapes attributes, frozen
    "pre": ("LNFMM, pre-trained frozen encoder trunk", {"image_encoder_init": "shapes-attributes", "freeze_image_trunk": True}),
    "pre-noisy": (
        "LNFMM, pre-trained frozen trunk, text_noise_std 0.5",
        {"image_encoder_init": "shapes-attributes", "freeze_image_trunk": True, "text_noise_std": 0.5},
    ),
}

#: (column title, path in the results, digits)
CAPTION_COLUMNS = [
    ("oracle B-4", ("captioning", "oracle", "Bleu_4"), 3),
    ("oracle M", ("captioning", "oracle", "METEOR"), 3),
    ("oracle R", ("captioning", "oracle", "ROUGE_L"), 3),
    ("oracle C", ("captioning", "oracle", "CIDEr"), 3),
    ("cons. B-4", ("captioning", "consensus", "Bleu_4"), 3),
    ("cons. M", ("captioning", "consensus", "METEOR"), 3),
    ("cons. R", ("captioning", "consensus", "ROUGE_L"), 3),
    ("cons. C", ("captioning", "consensus", "CIDEr"), 3),
]
DIVERSITY_COLUMNS = [
    ("Unique %", ("captioning", "diversity", "unique"), 1),
    ("Novel", ("captioning", "diversity", "novel"), 0),
    ("mBLEU-4", ("captioning", "diversity", "mbleu4"), 3),
    ("Div-1", ("captioning", "diversity", "div1"), 3),
    ("Div-2", ("captioning", "diversity", "div2"), 3),
    ("GT accuracy", ("captioning", "ground_truth", "accuracy"), 3),
    ("GT coverage", ("captioning", "ground_truth", "coverage"), 4),
]
PROBE_COLUMNS = [(f"probe {a}", ("probe", a, "accuracy"), 2) for a in ("count", "shape", "color", "size", "row", "col")]
IMAGE_COLUMNS = [
    ("T2I accuracy", ("text_to_image", "caption_accuracy"), 3),
    ("free-attr. spread", ("text_to_image", "free_attribute_spread"), 3),
    ("IS (attr. clf.)", ("text_to_image", "inception_score"), 2),
    ("IvOM", ("text_to_image", "ivom"), 4),
    ("pixel div.", ("text_to_image", "pixel_diversity"), 3),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="LNFMM vs CVAE, LNFMM-MSE and LNFMM-TXT on the embedded shapes data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--task",
        choices=["frontier", "t2i-frontier", "ablations"],
        default="ablations",
        help="the accuracy-coverage frontier of LNFMM and its baselines, the text-to-image accuracy-spread frontier, or the pixel ablation table",
    )
    p.add_argument(
        "--models", nargs="+", choices=list(FRONTIER_MODELS), default=None, help="frontier: models to compare (default: all of the task)"
    )
    p.add_argument(
        "--figure", default=None, help="frontier: the PNG (default docs/img/frontier_captioning.png or docs/img/frontier_text_to_image.png)"
    )
    p.add_argument(
        "--combine",
        nargs="+",
        metavar="DIR[:MODEL]",
        default=None,
        help="frontier: merge the frontier.json of earlier runs (e.g. one per seed) instead of training; DIR:MODEL takes only that model of DIR",
    )
    p.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=["lnfmm", "cvae", "mse", "txt"], help="ablations: models to compare"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="training steps per model (default: 1500 for ablations, the recipe's for the frontier)"
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="t2i-frontier: evaluate a model whose run folder already holds its final checkpoint instead of training it again "
        "(the engine's resume check refuses one of another config or budget)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (each variant is trained once per seed)")
    p.add_argument("--train-images", type=int, default=2000, help="training images (5 captions each)")
    p.add_argument("--test-images", type=int, default=100, help="test images evaluated")
    p.add_argument("--num-samples", type=int, default=100, help="captions sampled per test image")
    p.add_argument(
        "--t2i-captions", type=int, default=20, help="captions of the text-to-image evaluation (t2i-frontier: test captions judged)"
    )
    p.add_argument("--t2i-samples", type=int, default=16, help="images per caption")
    p.add_argument("--ivom-steps", type=int, default=50, help="IvOM Adam steps per restart")
    p.add_argument("--ivom-restarts", type=int, default=2, help="IvOM restarts")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated data")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default="benchmarks/quality_out", help="output folder (quality.md, quality.json, one run folder per model)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)
    t2i = args.task == "t2i-frontier"
    models = [k for k in FRONTIER_MODELS if (k in T2I_RECIPES) == t2i]
    args.models = args.models or [m for m in models if m != "t2i-pixels"]  # the pixel recipe on request
    if not set(args.models) <= set(models):
        p.error(f"--models of --task {args.task}: choose from {models}")
    args.figure = args.figure or f"docs/img/frontier_{'text_to_image' if t2i else 'captioning'}.png"
    return args


def _get(d: dict[str, Any], path: tuple[str, ...]) -> float:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return float("nan")
        d = d[k]
    return float(d) if d is not None else float("nan")


def _cell(values: list[float], digits: int) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"


def table(runs: dict[str, list[dict[str, Any]]], columns: list[tuple[str, tuple[str, ...], int]]) -> str:
    r"""A Markdown table: one row per variant, mean ± std over seeds per column."""
    lines = ["| model | " + " | ".join(c for c, _, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for key, results in runs.items():
        cells = [_cell([_get(r, path) for r in results], digits) for _, path, digits in columns]
        lines.append(f"| {VARIANTS[key][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


FRONTIER_MODELS = {
    "lnfmm": "LNFMM (captioning recipe)",
    "captioner": "supervised captioner (no latent)",
    "cvae": "CVAE (Gaussian prior, free bits)",
    "t2i": "LNFMM (text-to-image recipe)",
    "t2i-deterministic": "deterministic caption -> image (no z'_v)",
    "t2i-pixels": "LNFMM end to end on pixels",
}
T2I_RECIPES = {"t2i": "text_to_image", "t2i-deterministic": "text_to_image_deterministic", "t2i-pixels": "text_to_image_pixels"}


def frontier_data(args: argparse.Namespace, progress: bool) -> tuple[Any, dict[int, Any]]:
    r"""The main job's data route: the shapes export, shapes-trunk features, the COCO loader."""
    sizes = {"train": args.train_images, "val": 200, "test": 200}
    data, root, _ = load_shapes_coco("features", sizes, args.data_seed, progress=progress)
    scenes = scenes_from_export(root)
    assert scenes is not None
    return data, scenes


def coverage_at(points: list[FrontierPoint], accuracy: float) -> float:
    r"""The best coverage a model reaches at a given accuracy: linear along its Pareto front
    (the settings no other setting beats on both axes); its largest coverage below the front's
    accuracies; NaN above them (that accuracy is out of its reach)."""
    pts = [(p.accuracy, p.coverage) for p in points]
    front = sorted(p for p in pts if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in pts))
    if accuracy > front[-1][0]:
        return float("nan")
    if accuracy <= front[0][0]:
        return front[0][1]
    for (a0, c0), (a1, c1) in zip(front, front[1:]):
        if a0 <= accuracy <= a1:
            return c0 + (c1 - c0) * (accuracy - a0) / (a1 - a0)
    return float("nan")


def frontier_table(curves: dict[str, list[list[FrontierPoint]]], images: bool = False) -> str:
    head = (
        "| model | setting | judged accuracy | free-attribute spread | captions with a true image |"
        if images
        else "| model | setting | accuracy | coverage | distinct of the samples |"
    )
    lines = [head, "|---|---|---|---|---|"]
    for name, runs in curves.items():
        for k, p in enumerate(runs[0]):
            at_k = [r[k] for r in runs]
            accuracy, coverage, distinct = (
                _cell([getattr(q, a) for q in at_k], d) for a, d in (("accuracy", 3), ("coverage", 4), ("distinct", 3))
            )
            lines.append(f"| {FRONTIER_MODELS[name]} | {p.label} | {accuracy} | {coverage} | {distinct} |")
    return "\n".join(lines)


def equal_accuracy_ratios(curves: dict[str, list[list[FrontierPoint]]]) -> list[str]:
    r"""LNFMM's coverage at T=1 over each baseline's coverage at the same accuracy, per seed."""
    lines = []
    for base in ("captioner", "cvae"):
        if base not in curves or "lnfmm" not in curves:
            continue
        ratios = []
        for lnfmm, other in zip(curves["lnfmm"], curves[base]):
            top = lnfmm[-1]
            theirs = coverage_at(other, top.accuracy)
            ratios.append(top.coverage / theirs if theirs > 0 else float("nan"))
        lines.append(
            f"LNFMM at T=1 vs {FRONTIER_MODELS[base]} at equal accuracy: coverage ratio {', '.join(f'{r:.2f}' for r in ratios)} (per seed; nan: that accuracy is outside its curve)"
        )
    return lines


def train_frontier(args: argparse.Namespace, progress: bool) -> dict[str, list[list[FrontierPoint]]]:
    r"""Trains each model once per seed on the same data and budget; returns its frontier points."""
    data, scenes = frontier_data(args, progress)
    curves: dict[str, list[list[FrontierPoint]]] = {}
    for name in args.models:
        recipe = RECIPES["captioning" if name == "lnfmm" else name]()
        # latent models decode each latent as their recipe says (captioning: beams of 5)
        settings_list = captioner_settings() if name == "captioner" else lnfmm_settings(**recipe.decoding)
        curves[name] = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            steps = args.steps or recipe.steps
            budget = {**recipe.settings(), "steps": steps, "validate_every": 0}
            settings = TrainSettings(**budget, seed=seed, progress=progress, log_every=50)
            trainer = train(recipe.config, data, settings, out=Path(args.out) / f"{name}_seed{seed}", meta={"preset": recipe.name})
            model = trainer.module.cpu().eval()
            points = caption_frontier(model, data, settings_list, scenes, num_samples=args.num_samples, limit=args.test_images, seed=seed)
            curves[name].append(points)
            print(
                f"== {FRONTIER_MODELS[name]}, seed {seed}, {steps} steps ({time.perf_counter() - t0:.0f}s): "
                + "; ".join(f"{p.label} {p.accuracy:.3f}/{p.coverage:.4f}" for p in points),
                flush=True,
            )
    return curves


def train_image_frontier(args: argparse.Namespace, progress: bool) -> dict[str, list[list[FrontierPoint]]]:
    r"""Text-to-image: each recipe once per seed on the export, as the recipe reads it; judged test captions."""
    sizes = {"train": args.train_images, "val": 200, "test": 200}
    judge = get_attribute_classifier(progress=progress)
    curves: dict[str, list[list[FrontierPoint]]] = {}
    for name in args.models:
        recipe = RECIPES[T2I_RECIPES[name]]()
        data = load_shapes_coco(recipe.image_input, sizes, args.data_seed, progress=progress).data
        n = min(args.t2i_captions, len(data.test))
        captions = [data.references["test"][int(data.test[i]["image_id"])][0] for i in range(n)]
        curves[name] = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            budget = {**recipe.settings(), "steps": args.steps or recipe.steps, "validate_every": 0}
            run = Path(args.out) / f"{name}_seed{seed}"
            trainer = train(
                recipe.config,
                data,
                TrainSettings(**budget, seed=seed, progress=progress, log_every=50),
                out=run,
                resume=run if args.reuse and (run / "checkpoint.pt").exists() else None,
                meta={"preset": recipe.name},
            )
            model = trainer.module.cpu().eval()
            render = image_drawer(model, progress=progress)
            points = image_frontier(model, captions, data.vocab, num_samples=args.t2i_samples, judge=judge, seed=seed, render=render)
            curves[name].append(points)
            print(
                f"== {FRONTIER_MODELS[name]}, seed {seed} ({time.perf_counter() - t0:.0f}s): "
                + "; ".join(f"{p.label} {p.accuracy:.3f}/{p.coverage:.3f}" for p in points),
                flush=True,
            )
    return curves


def load_frontiers(entries: list[str]) -> dict[str, list[list[FrontierPoint]]]:
    r"""Merges the ``frontier.json`` of runs made separately (e.g. one process per seed); an
    entry ``DIR:MODEL`` takes only that model's curves from ``DIR`` (e.g. a baseline that a
    later run did not re-train)."""
    curves: dict[str, list[list[FrontierPoint]]] = {}
    for entry in entries:
        folder, _, only = entry.rpartition(":") if entry.rpartition(":")[2] in FRONTIER_MODELS else (entry, "", "")
        for name, runs in json.loads((Path(folder) / "frontier.json").read_text()).items():
            if not only or name == only:
                curves.setdefault(name, []).extend([[FrontierPoint(**p) for p in run] for run in runs])
    return curves


def run_frontier(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    start = time.perf_counter()
    out = Path(args.out)
    images = args.task == "t2i-frontier"
    curves = load_frontiers(args.combine) if args.combine else (train_image_frontier if images else train_frontier)(args, progress)
    seeds = len(next(iter(curves.values())))
    if images:
        png = plot_frontier(
            {FRONTIER_MODELS[k]: v for k, v in curves.items()},
            Path(args.figure),
            xlabel="free-attribute spread (0..1)",
            ylabel="images judged true of their caption",
            title=f"text-to-image, {args.t2i_captions} test captions x {args.t2i_samples} images, {seeds} seeds",
        )
    else:
        png = plot_frontier(
            {FRONTIER_MODELS[k]: v for k, v in curves.items()},
            Path(args.figure),
            title=f"shapes data, {args.test_images} test images x {args.num_samples} samples, {seeds} seeds",
        )
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} thread(s)"
    )
    md = "\n".join(
        [
            f"Command: `python benchmarks/quality.py {' '.join(sys.argv[1:])}`  ",
            f"Machine: {machine}; {time.perf_counter() - start:.0f}s. Budget per model and seed: {args.steps or 'the recipe'} steps.  ",
            "",
            frontier_table(curves, images),
            "",
            *equal_accuracy_ratios(curves),
            "",
            f"![frontier]({png})",
        ]
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.md").write_text(md + "\n")
    (out / "frontier.json").write_text(json.dumps({k: [[p.to_json() for p in r] for r in v] for k, v in curves.items()}, indent=1) + "\n")
    print("\n" + md)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    if args.task in ("frontier", "t2i-frontier"):
        return run_frontier(args)
    warnings.filterwarnings("ignore", message=r"SPICE is left out")
    progress = not args.no_progress
    start = time.perf_counter()
    out = Path(args.out)
    sizes = {"train": args.train_images, "val": 20, "test": max(args.test_images, args.t2i_captions)}
    data = load_caption_data("shapes", sizes=sizes, seed=args.data_seed)
    judge = get_attribute_classifier(progress=progress)  # trained once (about a minute), then cached
    runs: dict[str, list[dict[str, Any]]] = {}
    for key in args.variants:
        name, overrides = VARIANTS[key]
        runs[key] = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            print(f"\n== {name}, seed {seed}: {args.steps or 1500} steps", flush=True)
            meta = {"data": {"data": "shapes", "sizes": sizes, "data_seed": args.data_seed}, "preset": "small"}
            trainer = train(
                LNFMMConfig.small(**overrides),
                data,
                TrainSettings(steps=args.steps or 1500, batch_size=args.batch_size, seed=seed, progress=progress),
                out=out / f"{key}_seed{seed}",
                meta=meta,
            )
            model = trainer.module.cpu().eval()
            train_s = time.perf_counter() - t0
            cap = evaluate_captioning(
                model, data, num_samples=args.num_samples, limit=args.test_images, seed=seed, progress=progress, figure_images=0
            ).to_json()
            t2i = evaluate_text_to_image(
                model,
                data,
                num_captions=args.t2i_captions,
                num_samples=args.t2i_samples,
                classifier=judge,
                ivom_steps=args.ivom_steps,
                ivom_restarts=args.ivom_restarts,
                seed=seed,
                progress=progress,
                figure_captions=0,
            ).to_json()
            for part in (cap, t2i):
                for k in ("samples", "ranked", "references", "free_attribute_spread_per_caption"):
                    part.pop(k, None)
            probe = probe_image_codes(model, data, num_train=args.train_images, num_test=args.test_images)
            runs[key].append(
                {
                    "seed": seed,
                    "train_seconds": train_s,
                    "seconds": time.perf_counter() - t0,
                    "captioning": cap,
                    "text_to_image": t2i,
                    "probe": probe,
                }
            )
            print(
                f"   oracle C {cap['oracle']['CIDEr']:.3f}, consensus C {cap['consensus']['CIDEr']:.3f}, unique {cap['diversity']['unique']:.1f}%, "
                f"GT accuracy {cap['ground_truth']['accuracy']:.3f}, T2I accuracy {t2i.get('caption_accuracy', float('nan')):.3f} ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )

    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} thread(s)"
    )
    command = "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = [
        f"Command: `{command}`  ",
        f"Machine: {machine}; total {time.perf_counter() - start:.0f}s.  ",
        f"Data: shapes, {args.train_images} training images (5 captions each), seed {args.data_seed}. Each model: "
        f"`LNFMMConfig.small()` + its ablation, {args.steps or 1500} steps of batch {args.batch_size}, seeds {args.seeds} (mean ± std over seeds).  ",
        f"Captioning: {args.test_images} test images x {args.num_samples} samples; consensus re-ranking k=60, m=125 on the model's image shared codes; "
        f"diversity on the best 5. Text-to-image: {args.t2i_captions} captions x {args.t2i_samples} images; IS with the shapes attribute classifier "
        f"(judge test scene accuracy {judge.metrics.get('scene', float('nan')):.3f}); IvOM {args.ivom_restarts} restarts x {args.ivom_steps} steps.",
    ]
    md = "\n".join(
        header
        + ["", "Accuracy (Tables 1, 2: oracle over all samples, consensus re-ranked top-1):", "", table(runs, CAPTION_COLUMNS)]
        + ["", "Diversity of the best 5 (Table 3) and exact ground truth over all samples:", "", table(runs, DIVERSITY_COLUMNS)]
        + [
            "",
            "Linear probes of the image shared code (test accuracy; `flowkit.evaluation.probe_image_codes`):",
            "",
            table(runs, PROBE_COLUMNS),
        ]
        + [
            "",
            "Text-to-image (Table 6 and classifier judges; pixel diversity is RMS pixel distance, not LPIPS):",
            "",
            table(runs, IMAGE_COLUMNS),
        ]
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(md + "\n")
    (out / "quality.json").write_text(json.dumps(to_jsonable({"args": vars(args), "machine": machine, "runs": runs}), indent=1) + "\n")
    print("\n" + md)
    print(f"\nwrote {out / 'quality.md'} and {out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
