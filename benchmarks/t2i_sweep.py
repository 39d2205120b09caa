#!/usr/bin/env python
r"""One text-to-image experiment on *validation* captions: the recipe's model with overrides.

Trains ``LNFMMConfig.text_to_image(**overrides)`` on the embedded shapes data (2,000 training
images, pixels, batch 32, cosine decay), judges ``--samples`` generated images for the first
caption of each of the 100 validation images every ``--eval-every`` steps (a learning curve),
and at the end at temperatures 0, 0.5 and 1. Appends one JSON line to ``OUT/results.jsonl``.
The tables of ``docs/lnfmm.md`` ("Text-to-image") come from this script; the test split is
only read by ``benchmarks/quality.py --task t2i-frontier``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/t2i_sweep.py --name N2 --seed 0 \
        --set '{"shared_norm": "batch-all", "image_noise_std": 1.0}'
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowkit.data import load_caption_data
from flowkit.data.judges import free_attribute_spread, get_attribute_classifier, image_caption_accuracy
from flowkit.evaluation import plot_image_grid, sample_images_for_captions
from flowkit.models import LNFMMConfig
from flowkit.training import TrainSettings, train


def judge_samples(model: Any, captions: list[str], vocab: Any, judge: Any, samples: int, temperature: float) -> dict[str, Any]:
    r"""Judged accuracy and mean free-attribute spread of ``samples`` images per caption."""
    images = sample_images_for_captions(model, captions, vocab, samples, temperature, seed=0)
    accuracy = image_caption_accuracy(images.flatten(0, 1), [c for c in captions for _ in range(samples)], judge)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a caption without a true image has no spread
        spreads = [free_attribute_spread(images[i], c, judge)["mean"] for i, c in enumerate(captions)]
    spreads = [s for s in spreads if not math.isnan(s)]
    return {"accuracy": accuracy, "spread": float(np.mean(spreads)) if spreads else None, "judged_captions": len(spreads), "images": images}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="the run's name (its folder under --out)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", default="{}", help="JSON overrides of LNFMMConfig.text_to_image()")
    p.add_argument("--eval-every", type=int, default=500, help="steps between validation points (0: none)")
    p.add_argument("--samples", type=int, default=16, help="images per caption")
    p.add_argument("--out", default="benchmarks/t2i_sweep_out")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out) / a.name
    data = load_caption_data("shapes", sizes={"train": 2000, "val": 100, "test": 10}, seed=0)
    overrides = json.loads(a.set)
    config = LNFMMConfig.text_to_image(**overrides)
    judge = get_attribute_classifier()
    captions = [data.references["val"][int(item["image_id"])][0] for item in data.val]

    def validate(model: Any) -> dict[str, float]:
        r = judge_samples(model, captions, data.vocab, judge, a.samples, 1.0)
        model.train()
        return {"accuracy_T1": r["accuracy"], "spread_T1": r["spread"] if r["spread"] is not None else float("nan")}

    start = time.time()
    settings = TrainSettings(steps=a.steps, batch_size=32, seed=a.seed, lr_schedule="cosine", validate_every=a.eval_every)
    trainer = train(config, data, settings, out=out / "run", validate=validate if a.eval_every else None)
    seconds = time.time() - start
    model = trainer.module.eval()
    result: dict[str, Any] = {"name": a.name, "seed": a.seed, "steps": a.steps, "set": overrides, "train_seconds": seconds}
    for temperature in (0.0, 0.5, 1.0):
        r = judge_samples(model, captions, data.vocab, judge, a.samples, temperature)
        result[f"T={temperature:g}"] = {k: v for k, v in r.items() if k != "images"}
        if temperature == 1.0:
            plot_image_grid(captions[:6], r["images"][:6], out / "grid.png", max_samples=8)
    print(json.dumps(result), flush=True)
    with open(Path(a.out) / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
