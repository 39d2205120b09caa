#!/usr/bin/env python
r"""A prior of your own inside LNFMM: replace the text prior :math:`f_t` by a composed flow.

LNFMM's priors are plain attributes: ``model.f_t`` is a :class:`flowkit.Flow` over
:math:`z'_t` with the shared code :math:`z_s` as context (``log_prob(z, context)``,
``sample(num_samples, context, temperature)``). Anything with that interface can take its
place. Here :math:`f_t` becomes a mix of libraries, conditioned on :math:`z_s`:

    flowkit ConditionalActNorm -> nflows rational-quadratic spline coupling (via
    flowkit.interop.nflows.from_nflows) -> flowkit Switch, repeated; base N(0, 0.25^2)

then the model trains briefly with flowkit's training engine and samples captions.

Note: a run saved this way is reloaded by building the same model (this script's
``build_prior``) before ``load_state_dict``; ``flowkit caption`` rebuilds from the config alone
and would not know the custom prior.

Usage::

    python examples/custom_prior.py            # about a minute and a half
    python examples/custom_prior.py --tiny     # a smoke run of seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

import flowkit
from flowkit.data import load_caption_data
from flowkit.evaluation import generate_captions
from flowkit.models import LNFMM, LNFMMConfig
from flowkit.models.lnfmm import LNFMMStep, adapt_config
from flowkit.models.lnfmm.pretraining import initialize_image_encoder
from flowkit.training import Trainer, TrainSettings, seed_everything


def build_prior(features: int, context_features: int, layers: int = 3, hidden: int = 64, bins: int = 8) -> flowkit.Flow:
    r"""A conditional spline prior p(z' | z_s): flowkit and nflows layers in one flowkit Flow."""
    from nflows.transforms import PiecewiseRationalQuadraticCouplingTransform

    from flowkit.interop.nflows import from_nflows

    steps: list[nn.Module] = []
    for k in range(layers):
        mask = (torch.arange(features) % 2 == k % 2).float() * 2 - 1  # nflows: +1 transformed, -1 identity
        spline = PiecewiseRationalQuadraticCouplingTransform(
            mask,
            transform_net_create_fn=ResidualNetFactory(hidden, context_features),
            num_bins=bins,
            tails="linear",
            tail_bound=3.0,
        )
        steps.append(flowkit.ConditionalActNorm(features, context_features, hidden_features=hidden))
        steps.append(from_nflows(spline, features=features, context_features=context_features))
        steps.append(flowkit.Switch(features))
    return flowkit.Flow(flowkit.Sequential(*steps), flowkit.StandardNormal(features, std=0.25))


class ResidualNetFactory:
    r"""Builds the spline's conditioner nets (a class, not a lambda: modules stay picklable)."""

    def __init__(self, hidden: int, context_features: int) -> None:
        self.hidden, self.context_features = hidden, context_features

    def __call__(self, in_features: int, out_features: int) -> nn.Module:
        from nflows.nn.nets import ResidualNet

        return ResidualNet(in_features, out_features, self.hidden, context_features=self.context_features, num_blocks=2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="LNFMM with a user-composed text prior (nflows spline couplings inside a flowkit Flow).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--steps", type=int, default=400, help="training steps")
    p.add_argument("--train-images", type=int, default=1000, help="training images of the shapes data")
    p.add_argument("--num-samples", type=int, default=8, help="captions sampled per test image")
    p.add_argument("--seed", type=int, default=0, help="seed of the training and the sampling")
    p.add_argument("--out", default="runs/custom_prior", help="run folder (checkpoint.pt, log.csv)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--tiny", action="store_true", help="a smoke run: 100 training images, 10 steps")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    start = time.perf_counter()

    sizes = {"train": 100, "val": 4, "test": 4} if args.tiny else {"train": args.train_images, "val": 20, "test": 20}
    steps = 10 if args.tiny else args.steps
    data = load_caption_data("shapes", sizes=sizes, seed=0)
    # vocabulary size, caption length, pixels; small() pre-trains its image trunk (cached)
    config = adapt_config(LNFMMConfig.small(image_encoder_init_steps=20 if args.tiny else 1500), data)

    seed_everything(args.seed)
    model = LNFMM(config)
    initialize_image_encoder(model)  # what flowkit.recipes.train does for small()
    default_params = sum(p.numel() for p in model.f_t.parameters())
    model.f_t = build_prior(config.text_specific_dim, config.shared_dim)  # <- the replacement
    print(
        f"f_t replaced: {type(model.f_t.transform[1].transform).__name__} inside {type(model.f_t).__name__} "
        f"({sum(p.numel() for p in model.f_t.parameters())} parameters, the default had {default_params})"
    )

    # the prior is a drop-in: same log_prob / sample interface, conditioned on z_s
    z_s = torch.randn(3, config.shared_dim)
    print("log p(z'_t | z_s):", model.f_t.log_prob(torch.zeros(3, config.text_specific_dim), context=z_s).detach().numpy().round(2))

    settings = TrainSettings(steps=steps, batch_size=16 if args.tiny else 32, seed=args.seed, progress=not args.no_progress)
    meta = {"f_t": "custom spline prior (examples/custom_prior.py)"}
    trainer = Trainer(
        model, data.train, settings, step=LNFMMStep(), out=Path(args.out), config=config, vocab=data.vocab.to_dict(), meta=meta
    )
    terms = trainer.run().last_terms
    print(f"trained {steps} steps: " + ", ".join(f"{k}={v:.3g}" for k, v in terms.items()))

    captions = generate_captions(model, data.test, data.vocab, num_samples=args.num_samples, limit=3, seed=args.seed, progress=False)
    for iid, caps in captions.items():
        print(f"\ntest image {iid} (reference: {data.references['test'][iid][0]!r}), {len(set(caps))} distinct of {len(caps)}:")
        for c in list(dict.fromkeys(caps))[:5]:
            print(f"  {c}")
    print(f"\n[done] {time.perf_counter() - start:.0f}s; checkpoint in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
