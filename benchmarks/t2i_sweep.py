#!/usr/bin/env python
r"""One text-to-image experiment on *validation* captions: a recipe's model with overrides.

Trains ``RECIPES[--recipe](**overrides)`` on the embedded shapes data (2,000 training images,
read as the recipe reads them: the trunk's reading, or pixels; batch 32, cosine decay), judges
``--samples`` generated images for the first caption of each of the first 100 validation
images every ``--eval-every`` steps (a learning curve), and at the end at temperatures 0, 0.5,
0.75 and 1. For the reading recipe the images are drawn by the pre-trained cell renderer
(:func:`flowkit.data.renderer.render_readings`), and the decoded readings are also judged
directly (``decoded``: the scene they spell, before any drawing). Appends one JSON line to
``OUT/results.jsonl``. The tables of ``docs/lnfmm.md`` ("Text-to-image") come from this script;
the test split is only read by ``benchmarks/quality.py --task t2i-frontier``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/t2i_sweep.py --name h --seed 0 --set '{"loss": {"kl_v": 5.0}}'
    OMP_NUM_THREADS=1 python benchmarks/t2i_sweep.py --name h_old_renderer --checkpoint OUT/h/run --renderer-shift 0
    OMP_NUM_THREADS=1 python benchmarks/t2i_sweep.py --recipe text_to_image_pixels --name N2 --seed 0 \
        --set '{"shared_norm": "batch-all", "image_noise_std": 1.0}'
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch

from flowkit.data.features import load_shapes_coco
from flowkit.data.judges import get_attribute_classifier
from flowkit.data.renderer import ReadingReader, RendererConfig, get_cell_renderer, render_readings
from flowkit.evaluation import load_model, plot_image_grid, sample_images_for_captions
from flowkit.evaluation.text_to_image import judge_generated_images
from flowkit.models.lnfmm.recipes import RECIPES
from flowkit.training import TrainSettings, train

TEMPERATURES = (0.0, 0.5, 0.75, 1.0)


def judge_samples(samples: torch.Tensor, captions: list[str], judge: Any) -> dict[str, Any]:
    r"""Judged accuracy and mean free-attribute spread of ``samples`` ``(captions, S, ...)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a caption without a true image has no spread
        r = judge_generated_images(samples, captions, judge)
    spread = r["free_attribute_spread"]
    return {"accuracy": r["accuracy"], "spread": None if math.isnan(spread) else spread, "judged_captions": r["captions_with_a_true_image"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="text_to_image", choices=["text_to_image", "text_to_image_pixels"])
    p.add_argument("--name", required=True, help="the run's name (its folder under --out)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", default="{}", help="JSON overrides of the recipe's config")
    p.add_argument("--eval-every", type=int, default=500, help="steps between validation points (0: none)")
    p.add_argument("--samples", type=int, default=16, help="images per caption")
    p.add_argument("--out", default="benchmarks/t2i_sweep_out")
    p.add_argument("--checkpoint", default=None, help="judge this saved run (a run folder) instead of training one")
    p.add_argument(
        "--renderer-shift", type=int, default=RendererConfig().shift, help="the renderer's offsets (0: the seventh session's renderer)"
    )
    a = p.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out) / a.name
    overrides = json.loads(a.set)
    recipe = RECIPES[a.recipe](**overrides)
    data = load_shapes_coco(recipe.image_input, {"train": 2000, "val": 200, "test": 200}, seed=0).data
    judge = get_attribute_classifier()
    reading = recipe.image_input == "reading"
    render = partial(render_readings, renderer=get_cell_renderer(RendererConfig(shift=a.renderer_shift))) if reading else None
    ids = list(dict.fromkeys(int(item["image_id"]) for item in data.val))[:100]
    captions = [data.references["val"][i][0] for i in ids]

    def draw(model: Any, temperature: float) -> torch.Tensor:
        return sample_images_for_captions(model, captions, data.vocab, a.samples, temperature, seed=0)

    def validate(model: Any) -> dict[str, float]:
        samples = draw(model, 1.0)
        r = judge_samples(samples if render is None else render(samples), captions, judge)
        model.train()
        return {"accuracy_T1": r["accuracy"], "spread_T1": r["spread"] if r["spread"] is not None else float("nan")}

    start = time.time()
    settings = TrainSettings(**{**recipe.settings(), "steps": a.steps or recipe.steps, "validate_every": a.eval_every}, seed=a.seed)
    if a.checkpoint:
        model = load_model(a.checkpoint)[0].eval()
    else:
        model = train(recipe.config, data, settings, out=out / "run", validate=validate if a.eval_every else None).module.eval()
    result: dict[str, Any] = {"name": a.name, "recipe": a.recipe, "seed": a.seed, "steps": settings.steps, "set": overrides}
    result.update(checkpoint=a.checkpoint, renderer_shift=a.renderer_shift)
    result["train_seconds"] = time.time() - start
    for temperature in TEMPERATURES:
        samples = draw(model, temperature)
        images = samples if render is None else render(samples)
        result[f"T={temperature:g}"] = judge_samples(images, captions, judge)
        if reading:
            result[f"T={temperature:g}"]["decoded"] = judge_samples(samples, captions, ReadingReader())
        if temperature == 1.0:
            plot_image_grid(captions[:6], images[:6], out / "grid.png", max_samples=8)
    print(json.dumps(result), flush=True)
    with open(Path(a.out) / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
