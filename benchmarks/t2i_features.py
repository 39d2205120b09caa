#!/usr/bin/env python
r"""Text-to-image through features, on *validation* captions: a renderer and LNFMM in feature space.

The experiment of ``docs/lnfmm.md`` ("A two-stage image side through features"):

1. a renderer, ``Generator64`` from standardized shapes-trunk features to pixels, trained on
   images of another data seed (the trunk's, 7) with L1 plus the trunk's features of its output
   (a perceptual term); judged on the *real* features of 100 validation images of data seed 0
   every 500 steps (its ceiling);
2. with ``--lnfmm``: LNFMM trained on the main job's features to decode features from the
   caption's code (``captioning_recipe()`` plus the overrides below and ``--set``), its features
   sampled for the 100 validation captions x 8, rendered, and judged; also the image's own code
   decoded and rendered (the feature decoder's limit);
3. with ``--second-stage STEPS``: a second renderer fitted to what LNFMM decodes (its own-code
   features of the training images, paired with their pixels), judged the same way.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/t2i_features.py --renderer-steps 1500 --out runs/t2i_features
    OMP_NUM_THREADS=1 python benchmarks/t2i_features.py --renderer-steps 1500 --out runs/t2i_features --lnfmm \
        --set '{"loss": {"cross_v": 0.2}}'
    OMP_NUM_THREADS=1 python benchmarks/t2i_features.py --renderer runs/t2i_features/renderer.pt --lnfmm --second-stage 1500 \
        --set '{"loss": {"cross_v": 1.0, "rec_v": 1.0}, "posterior": {"image_noise_std": 0.3}}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flowkit.data import load_caption_data
from flowkit.data.classifier import cell_crops
from flowkit.data.coco import load_image, pil_to_tensor, read_splits
from flowkit.data.features import SHAPES_TRUNK_SEED, load_shapes_coco, shapes_trunk_features
from flowkit.data.judges import get_attribute_classifier, image_caption_accuracy
from flowkit.data.shapes import DEFAULT_SIZES
from flowkit.evaluation import sample_images_for_captions
from flowkit.models.lnfmm.decoders import Generator64
from flowkit.models.lnfmm.recipes import captioning_recipe
from flowkit.training import TrainSettings, train

# LNFMM in feature space: decode features from the caption's code, z'_v standardized (the
# pixel text-to-image recipe's lessons)
FEATURE_T2I = {
    "loss": {"cross_v": 0.05, "rec_v": 0.0},
    "posterior": {"shared_norm": "batch-all", "image_noise_std": 1.0},
    "image_specific_dim": 16,
    "flows": {"fv_layers": 8, "fv_hidden": 128},
}


def fit_renderer(inputs: torch.Tensor, images: torch.Tensor, feats: torch.Tensor, steps: int, channels: int, report: Any) -> dict[str, Any]:
    r"""A ``Generator64`` from standardized ``inputs`` (N, 576) to ``images``: L1 (x0.05) plus the
    frozen trunk's features of its output against ``feats``, the images' own (a perceptual
    term). ``report(step, renderer)`` runs every 500 steps and at the end."""
    body = shapes_trunk_features().body  # frozen
    mu, sd, scale = inputs.mean(0), inputs.std(0) + 1e-3, feats.std(0) + 1e-3
    g = Generator64(576, 576, channels=channels)
    opt = torch.optim.Adam(g.parameters(), 2e-3)
    renderer = {"g": g, "mu": mu, "sd": sd, "channels": channels}
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(images), (32,))
        y = g((inputs[idx] - mu) / sd)
        perceptual = ((body(cell_crops(y).flatten(0, 1)).reshape(32, -1) - feats[idx]) / scale).pow(2).sum(1).mean() / 576 * 100
        loss = F.l1_loss(y, images[idx], reduction="sum") / 32 * 0.05 + perceptual
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == steps:
            g.eval()
            with torch.no_grad():
                report(step, renderer)
            g.train()
    g.eval()
    return renderer


def train_renderer(steps: int, channels: int, out: Path, judge: Any, val: tuple[torch.Tensor, list[str]]) -> dict[str, Any]:
    r"""Trains the renderer on data seed 7; judges renders of the validation images' real features."""
    extract = shapes_trunk_features()
    data = load_caption_data("shapes", sizes={"train": 3000, "val": 10, "test": 10}, seed=SHAPES_TRUNK_SEED)
    images = torch.stack([data.train.images(int(i)) for i in dict.fromkeys(data.train.image_ids)]).float()
    feats = torch.cat([extract(images[i : i + 256]) for i in range(0, len(images), 256)])
    real, curve, start = extract(val[0]), [], time.time()

    def report(step: int, r: dict[str, Any]) -> None:
        curve.append({"step": step, "judged_real_features": image_caption_accuracy(r["g"]((real - r["mu"]) / r["sd"]), val[1], judge)})
        print(f"renderer step {step}: {curve[-1]['judged_real_features']:.3f} ({time.time() - start:.0f}s)", flush=True)

    renderer = fit_renderer(feats, images, feats, steps, channels, report)
    torch.save({k: (v.state_dict() if k == "g" else v) for k, v in renderer.items()}, out / "renderer.pt")
    return {"renderer_curve": curve, **renderer}


def load_renderer(path: Path) -> dict[str, Any]:
    r"""A renderer saved by :func:`train_renderer`."""
    state = torch.load(path, weights_only=True)
    g = Generator64(576, 576, channels=state["channels"])
    g.load_state_dict(state["g"])
    return {"g": g.eval(), "mu": state["mu"], "sd": state["sd"], "channels": state["channels"]}


def judge_renders(model: Any, renderer: dict[str, Any], data: Any, judge: Any) -> dict[str, float]:
    r"""Judged accuracy of rendered features for the first 100 validation captions: decoded from
    the image's own code (the feature decoder's limit), and sampled from the prior at T = 0, 0.5, 1."""
    ids = list(dict.fromkeys(int(it["image_id"]) for it in data.val))[:100]
    captions = [data.references["val"][i][0] for i in ids]

    def render(features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return renderer["g"]((features - renderer["mu"]) / renderer["sd"])

    first = {int(it["image_id"]): it["image"] for it in reversed(list(data.val))}
    with torch.no_grad():
        own = model.encode_images(torch.stack([first[i] for i in ids]).float())
        result = {"own_code": image_caption_accuracy(render(model.decode_images(own["shared"], own["specific"])), captions, judge)}
    for temperature in (0.0, 0.5, 1.0):
        features = sample_images_for_captions(model, captions, data.vocab, 8, temperature, seed=0).flatten(0, 1)
        result[f"T={temperature:g}"] = image_caption_accuracy(render(features), [c for c in captions for _ in range(8)], judge)
    return result


def second_stage(model: Any, data: Any, root: Path, steps: int, channels: int) -> dict[str, Any]:
    r"""A renderer fitted to what LNFMM decodes: its own-code features of the training images,
    paired with their pixels (read from the export)."""
    paths = {r.image_id: r.path for r in read_splits(root, "coco")["train"]}
    first = {int(it["image_id"]): it["image"] for it in reversed(list(data.train))}
    ids = list(first)
    pixels = torch.stack([pil_to_tensor(load_image(paths[i])) for i in ids]).float()
    real = torch.stack([first[i] for i in ids]).float()
    with torch.no_grad():
        code = model.encode_images(real)
        decoded = model.decode_images(code["shared"], code["specific"])
    return fit_renderer(decoded, pixels, real, steps, channels, lambda step, r: print(f"second stage step {step}", flush=True))


def lnfmm_in_features(
    overrides: dict[str, Any], seed: int, steps: int, out: Path, renderer: dict[str, Any], judge: Any, second_steps: int = 0
) -> dict[str, Any]:
    r"""Trains LNFMM on the main job's features to decode features from captions; judges rendered
    samples, and with ``second_steps`` also through a renderer fitted to LNFMM's decoded features."""
    data, root, _ = load_shapes_coco("features", DEFAULT_SIZES, seed=0)
    recipe = captioning_recipe()
    config = recipe.config.replace(**FEATURE_T2I).replace(**overrides)
    settings = TrainSettings(**{**recipe.settings(), "validate_every": 0, "steps": steps or recipe.steps}, seed=seed, progress=False)
    model = train(config, data, settings, out=out / f"lnfmm_seed{seed}").module.eval()
    result: dict[str, Any] = judge_renders(model, renderer, data, judge)
    if second_steps:
        result["second_stage"] = judge_renders(model, second_stage(model, data, root, second_steps, renderer["channels"]), data, judge)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--renderer-steps", type=int, default=1500)
    p.add_argument("--renderer", default=None, help="a renderer.pt saved by an earlier run (skips its training)")
    p.add_argument("--channels", type=int, default=16, help="the renderer's base width")
    p.add_argument("--lnfmm", action="store_true", help="also train LNFMM in feature space and judge its rendered samples")
    p.add_argument("--set", default="{}", help="JSON overrides of the feature-space LNFMM config")
    p.add_argument("--lnfmm-steps", type=int, default=0, help="LNFMM's training steps (default: the captioning recipe's)")
    p.add_argument(
        "--second-stage", type=int, default=0, metavar="STEPS", help="with --lnfmm: also fit a renderer to LNFMM's decoded features"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/t2i_features_out")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    val_data = load_caption_data("shapes", sizes={"train": 10, "val": 100, "test": 10}, seed=0)
    val = (
        torch.stack([it["image"] for it in val_data.val]).float(),
        [val_data.references["val"][int(it["image_id"])][0] for it in val_data.val],
    )
    judge = get_attribute_classifier()
    if a.renderer is None:
        renderer = train_renderer(a.renderer_steps, a.channels, out, judge, val)
        result: dict[str, Any] = {"renderer_steps": a.renderer_steps, "renderer_curve": renderer["renderer_curve"], "seed": a.seed}
    else:
        renderer = load_renderer(Path(a.renderer))
        result = {"renderer": a.renderer, "seed": a.seed}
    if a.lnfmm:
        result.update(
            set=json.loads(a.set), **lnfmm_in_features(json.loads(a.set), a.seed, a.lnfmm_steps, out, renderer, judge, a.second_stage)
        )
    print(json.dumps(result), flush=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
