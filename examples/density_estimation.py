#!/usr/bin/env python
r"""Conditional density estimation: nsf, maf and realnvp on a multimodal 2-D density that moves
with its context, at equal parameter counts.

Data: :math:`c \sim U(-1, 1)`; :math:`x | c` is a mixture of 6 Gaussians (std 0.25) on a ring
of radius :math:`2 + 0.5 c`, rotated by the angle :math:`\pi c / 2`, with uneven weights. The
true density is known, so the test NLL of the truth is printed as the floor.

Each flow gets a hidden width chosen so that its parameter count is closest to a common
budget, trains by maximum likelihood (Adam) for the same number of steps, and is scored by
the test NLL :math:`-\frac1N \sum \log p(x_n | c_n)` on fresh data. A plot of samples for three
contexts (rows: data, nsf, maf, realnvp) is written to ``docs/img/density_estimation.png``.

Usage::

    python examples/density_estimation.py            # about a minute on one CPU thread
    python examples/density_estimation.py --quick    # a smoke run of seconds
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

import flowkit

MODES, STD = 6, 0.25
WEIGHTS = torch.tensor([3.0, 1.0, 2.0, 1.0, 3.0, 2.0]) / 12.0


def mode_centers(c: torch.Tensor) -> torch.Tensor:
    r"""The 6 mode centres for each context, ``(B, 6, 2)``."""
    angle = 2 * math.pi * torch.arange(MODES) / MODES + math.pi * c / 2  # (B, 6)
    radius = 2.0 + 0.5 * c
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)


def sample_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Draws ``n`` pairs ``(x, c)``: ``x`` ``(n, 2)``, ``c`` ``(n, 1)``."""
    c = 2 * torch.rand(n, 1, generator=generator) - 1
    k = torch.multinomial(WEIGHTS, n, replacement=True, generator=generator)
    centers = mode_centers(c)[torch.arange(n), k]
    return centers + STD * torch.randn(n, 2, generator=generator), c


def true_log_prob(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    r"""The exact :math:`\log p(x | c)` of the data."""
    d2 = (x.unsqueeze(1) - mode_centers(c)).square().sum(-1)  # (B, 6)
    log_n = -d2 / (2 * STD**2) - 2 * math.log(STD) - math.log(2 * math.pi)
    return torch.logsumexp(log_n + WEIGHTS.log(), dim=-1)


def build(name: str, hidden: int, layers: int) -> flowkit.Flow:
    if name == "nsf":
        return flowkit.nsf(2, 1, num_layers=layers, hidden_features=hidden, bins=8, bound=5.0)
    if name == "maf":
        return flowkit.maf(2, 1, num_layers=layers, hidden_features=hidden)
    return flowkit.realnvp(2, 1, num_layers=layers, hidden_features=hidden)


def num_params(flow: torch.nn.Module) -> int:
    return sum(p.numel() for p in flow.parameters())


def width_for(name: str, budget: int, layers: int) -> int:
    r"""The hidden width whose parameter count is closest to ``budget``."""
    lo, hi = 4, 1024  # the count grows with the width: bisect for the last width <= budget
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if num_params(build(name, mid, layers)) <= budget else (lo, mid)
    return min((lo, hi), key=lambda h: abs(num_params(build(name, h, layers)) - budget))


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=1500, help="training steps per flow")
    p.add_argument("--batch", type=int, default=256, help="batch size")
    p.add_argument("--params", type=int, default=30000, help="parameter budget of every flow")
    p.add_argument("--layers", type=int, default=6, help="layers of every flow")
    p.add_argument("--test", type=int, default=20000, help="test points")
    p.add_argument("--seed", type=int, default=0, help="seed of data and training")
    p.add_argument(
        "--plot",
        default=str(Path(__file__).resolve().parents[1] / "docs" / "img" / "density_estimation.png"),
        help="where to write the PNG ('' for none)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quick", action="store_true", help="a smoke run: 30 steps, small flows, 2,000 test points")
    p.add_argument("--no-progress", action="store_true", help="print no per-model progress lines")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.params, args.layers, args.test = 30, 3000, 2, 2000
    torch.set_num_threads(max(1, args.threads))

    gen = torch.Generator().manual_seed(args.seed + 1)
    x_test, c_test = sample_data(args.test, gen)
    floor = float(-true_log_prob(x_test, c_test).mean())
    print(f"conditional 2-D density, {MODES} modes moving with c; test NLL of the true density: {floor:.3f}")
    print(f"budget {args.params} parameters, {args.layers} layers, {args.steps} steps of batch {args.batch}")
    results: dict[str, dict[str, float]] = {}
    flows: dict[str, flowkit.Flow] = {}
    for name in ("nsf", "maf", "realnvp"):
        hidden = width_for(name, args.params, args.layers)
        torch.manual_seed(args.seed)
        flow = build(name, hidden, args.layers)
        opt = torch.optim.Adam(flow.parameters(), lr=2e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
        data_gen = torch.Generator().manual_seed(args.seed + 2)
        t0 = time.perf_counter()
        for step in range(args.steps):
            x, c = sample_data(args.batch, data_gen)
            loss = -flow.log_prob(x, c).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
            opt.step()
            sched.step()
            if not args.no_progress and (step + 1) % max(1, args.steps // 4) == 0:
                print(f"  {name}: step {step + 1}/{args.steps}, train NLL {float(loss):.3f}", flush=True)
        seconds = time.perf_counter() - t0
        flow.eval()
        with torch.no_grad():
            nll = float(-flow.log_prob(x_test, c_test).mean())
        results[name] = {"params": num_params(flow), "hidden": hidden, "test_nll": nll, "train_seconds": seconds}
        flows[name] = flow

    print()
    print("| flow | hidden | params | test NLL | - true NLL | train time |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['hidden']} | {r['params']} | {r['test_nll']:.3f} | {r['test_nll'] - floor:+.3f} | {r['train_seconds']:.1f} s |"
        )
    if args.plot:
        plot(flows, args.plot, args.seed)
        print(f"\nwrote {args.plot}")
    return results


def plot(flows: dict[str, flowkit.Flow], path: str, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contexts = torch.tensor([[-0.8], [0.0], [0.8]])
    rows = ["data", *flows]
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.5 * len(rows)), sharex=True, sharey=True)
    gen = torch.Generator().manual_seed(seed + 3)
    for j, c in enumerate(contexts):
        for i, name in enumerate(rows):
            if name == "data":
                k = torch.multinomial(WEIGHTS, 2000, replacement=True, generator=gen)
                pts = mode_centers(c.expand(2000, 1))[torch.arange(2000), k] + STD * torch.randn(2000, 2, generator=gen)
            else:
                torch.manual_seed(seed)
                with torch.no_grad():
                    pts = flows[name].sample(2000, c[None])[0]
            ax = axes[i, j]
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.3)
            ax.set_xlim(-3.5, 3.5)
            ax.set_ylim(-3.5, 3.5)
            ax.set_aspect("equal")
            if i == 0:
                ax.set_title(f"c = {float(c):+.1f}")
            if j == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
