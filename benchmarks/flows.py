r"""Flow layers: flowkit vs nflows, zuko and FrEIA on the same conditional coupling flow.

Every library builds the same model: K conditional affine couplings (one-sided: the first
``D // 2`` features condition the last ``D - D // 2``; the context is concatenated to the
coupling net's input) with a fixed random permutation between them, coupling nets
``Linear(D/2 + C, H) - ReLU - (Linear(H, H) - ReLU) x (depth - 1) - Linear(H, 2 * D/2)`` of the
same width and depth, and a standard normal base. Two workloads:

1. train step: ``-log_prob(x, c).mean()`` and ``backward()`` on a batch of B;
2. sampling: ``S`` samples for each of B contexts (no gradients).

The libraries' repeats are interleaved (round robin, rotating order), so machine noise hits
all alike; medians are reported after warm-up. flowkit also runs under ``torch.compile``.

Run (from the repository root)::

    python benchmarks/flows.py --threads 1 --repeats 30 --sample-repeats 7

``--wide`` runs the wider sizes (C = 256, hidden width 256; 1,151,232 parameters)::

    python benchmarks/flows.py --threads 1 --wide --no-compile --repeats 150 --sample-repeats 3 --samples 10

``--workload nsf`` runs the same comparison with rational-quadratic spline couplings (8 bins
on [-5, 5], linear tails; flowkit, nflows, zuko), ``--workload maf`` with affine masked
autoregressive layers whose orderings alternate with their reverse (flowkit ``maf``, nflows
``MaskedAffineAutoregressiveTransform`` + ``ReversePermutation``, zuko ``MAF``). Sampling a
MAF takes D passes per layer.

Needs the ``bench`` extra: ``pip install flowkit[bench]`` (nflows, zuko, FrEIA).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flowkit  # noqa: E402

warnings.filterwarnings("ignore", message=r".*triangular_solve.*")

LOG_2PI = math.log(2 * math.pi)


def mlp(in_features: int, out_features: int, hidden: int, depth: int) -> nn.Sequential:
    r"""The coupling net every peer gets: ``depth`` hidden layers of width ``hidden``."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def permutations(k: int, d: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(1234)
    return [torch.randperm(d, generator=g) for _ in range(k)]


@dataclass
class Model:
    r"""One library's flow: a loss for the train step and a sampler."""

    name: str
    module: nn.Module
    loss: Callable[[Tensor, Tensor], Tensor]
    sample: Callable[[Tensor, int], Tensor]
    features: int
    train_times: list[float] = field(default_factory=list)
    sample_times: list[float] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


# -- the four libraries ---------------------------------------------------------------------


def build_flowkit(k: int, d: int, c: int, hidden: int, depth: int) -> Model:
    layers: list[nn.Module] = []
    for perm in permutations(k, d):
        layers.append(flowkit.AffineCoupling(d, c, hidden_features=hidden, num_layers=depth, clamp="atan"))
        layers.append(flowkit.Permutation(d, indices=perm))
    flow = flowkit.Flow(flowkit.Sequential(*layers), flowkit.StandardNormal(d))

    def loss(x: Tensor, ctx: Tensor) -> Tensor:
        return -flow.log_prob(x, ctx).mean()

    def sample(ctx: Tensor, n: int) -> Tensor:
        return flow.sample(n, ctx)

    return Model("flowkit", flow, loss, sample, d)


class _CatNet(nn.Module):
    # nflows calls transform_net(identity_features, context).
    def __init__(self, in_features: int, out_features: int, hidden: int, depth: int) -> None:
        super().__init__()
        self.net = mlp(in_features, out_features, hidden, depth)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x if context is None else torch.cat([x, context], dim=1))


def build_nflows(k: int, d: int, c: int, hidden: int, depth: int) -> Model:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import AffineCouplingTransform, CompositeTransform, Permutation

    mask = torch.zeros(d)
    mask[d // 2 :] = 1  # > 0: transformed, identity otherwise (same split as flowkit's "half")
    layers = []
    for perm in permutations(k, d):
        layers.append(
            AffineCouplingTransform(mask, lambda i, o: _CatNet(i + c, o, hidden, depth))  # noqa: B023
        )
        layers.append(Permutation(perm))
    flow = Flow(CompositeTransform(layers), StandardNormal([d]))

    def loss(x: Tensor, ctx: Tensor) -> Tensor:
        return -flow.log_prob(x, context=ctx).mean()

    def sample(ctx: Tensor, n: int) -> Tensor:
        return flow.sample(n, context=ctx)

    return Model("nflows", flow, loss, sample, d)


def build_zuko(k: int, d: int, c: int, hidden: int, depth: int) -> Model:
    from zuko.distributions import DiagNormal
    from zuko.flows import Flow, GeneralCouplingTransform, UnconditionalDistribution, UnconditionalTransform
    from zuko.transforms import PermutationTransform

    mask = torch.arange(d) < d // 2  # True: conditioning (identity) features
    transforms = []
    for perm in permutations(k, d):
        transforms.append(GeneralCouplingTransform(d, c, mask=mask, hidden_features=(hidden,) * depth))
        transforms.append(UnconditionalTransform(PermutationTransform, perm, buffer=True))
    base = UnconditionalDistribution(DiagNormal, torch.zeros(d), torch.ones(d), buffer=True)
    flow = Flow(transforms, base)

    def loss(x: Tensor, ctx: Tensor) -> Tensor:
        return -flow(ctx).log_prob(x).mean()

    def sample(ctx: Tensor, n: int) -> Tensor:
        return flow(ctx).sample((n,))

    return Model("zuko", flow, loss, sample, d)


def build_freia(k: int, d: int, c: int, hidden: int, depth: int) -> Model:
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    def subnet(i: int, o: int) -> nn.Module:
        return mlp(i, o, hidden, depth)

    inn = Ff.SequenceINN(d)
    for perm in permutations(k, d):
        inn.append(Fm.AffineCouplingOneSided, cond=0, cond_shape=(c,), subnet_constructor=subnet, clamp=2.0)
        inn.append(Fm.PermuteRandom, seed=0)
        with torch.no_grad():  # the same fixed permutation as the others
            inn.module_list[-1].perm.copy_(perm)
            inn.module_list[-1].perm_inv.copy_(torch.argsort(perm))

    def loss(x: Tensor, ctx: Tensor) -> Tensor:
        z, log_jac = inn(x, c=[ctx])
        log_prob = -0.5 * (z**2).sum(1) - 0.5 * d * LOG_2PI + log_jac
        return -log_prob.mean()

    def sample(ctx: Tensor, n: int) -> Tensor:
        ctx_rep = ctx.repeat_interleave(n, dim=0)
        z = torch.randn(ctx_rep.shape[0], d)
        x, _ = inn(z, c=[ctx_rep], rev=True, jac=False)
        return x.reshape(ctx.shape[0], n, d)

    return Model("FrEIA", inn, loss, sample, d)


BUILDERS: dict[str, Callable[[int, int, int, int, int], Model]] = {
    "flowkit": build_flowkit,
    "nflows": build_nflows,
    "zuko": build_zuko,
    "FrEIA": build_freia,
}


# -- NSF: rational-quadratic spline couplings (8 bins on [-5, 5], linear/identity tails) -----

BINS, BOUND = 8, 5.0


def _wrap(name: str, flow: nn.Module, d: int, kind: str) -> Model:
    # kind: "flowkit", "nflows" or "zuko" calling conventions.
    if kind == "zuko":
        return Model(name, flow, lambda x, ctx: -flow(ctx).log_prob(x).mean(), lambda ctx, n: flow(ctx).sample((n,)), d)
    if kind == "nflows":
        return Model(name, flow, lambda x, ctx: -flow.log_prob(x, context=ctx).mean(), lambda ctx, n: flow.sample(n, context=ctx), d)
    return Model(name, flow, lambda x, ctx: -flow.log_prob(x, ctx).mean(), lambda ctx, n: flow.sample(n, ctx), d)


def build_flowkit_nsf(k: int, d: int, c: int, hidden: int, depth: int) -> Model:
    layers: list[nn.Module] = []
    for perm in permutations(k, d):
        layers.append(flowkit.RationalQuadraticCoupling(d, c, hidden_features=hidden, num_layers=depth, bins=BINS, bound=BOUND))
        layers.append(flowkit.Permutation(d, indices=perm))
    return _wrap("flowkit", flowkit.Flow(flowkit.Sequential(*layers), flowkit.StandardNormal(d)), d, "flowkit")


def build_nflows_nsf(k: int, d: int, c: int, hidden: int, depth: int) -> Model:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import CompositeTransform, Permutation, PiecewiseRationalQuadraticCouplingTransform

    mask = torch.zeros(d)
    mask[d // 2 :] = 1
    layers = []
    for perm in permutations(k, d):
        layers.append(
            PiecewiseRationalQuadraticCouplingTransform(
                mask,
                lambda i, o: _CatNet(i + c, o, hidden, depth),
                num_bins=BINS,
                tails="linear",
                tail_bound=BOUND,  # noqa: B023
            )
        )
        layers.append(Permutation(perm))
    return _wrap("nflows", Flow(CompositeTransform(layers), StandardNormal([d])), d, "nflows")


def build_zuko_nsf(k: int, d: int, c: int, hidden: int, depth: int) -> Model:
    from zuko.distributions import DiagNormal
    from zuko.flows import Flow, GeneralCouplingTransform, UnconditionalDistribution, UnconditionalTransform
    from zuko.transforms import MonotonicRQSTransform, PermutationTransform

    mask = torch.arange(d) < d // 2
    transforms = []
    for perm in permutations(k, d):
        transforms.append(
            GeneralCouplingTransform(
                d,
                c,
                mask=mask,
                univariate=MonotonicRQSTransform,
                shapes=[(BINS,), (BINS,), (BINS - 1,)],
                hidden_features=(hidden,) * depth,
            )
        )
        transforms.append(UnconditionalTransform(PermutationTransform, perm, buffer=True))
    base = UnconditionalDistribution(DiagNormal, torch.zeros(d), torch.ones(d), buffer=True)
    return _wrap("zuko", Flow(transforms, base), d, "zuko")


# -- MAF: affine masked autoregressive layers, orderings alternating with their reverse ------


def build_flowkit_maf(k: int, d: int, c: int, hidden: int, depth: int) -> Model:
    return _wrap("flowkit", flowkit.maf(d, c, num_layers=k, hidden_features=hidden, net_layers=depth), d, "flowkit")


def build_nflows_maf(k: int, d: int, c: int, hidden: int, depth: int) -> Model:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import CompositeTransform, MaskedAffineAutoregressiveTransform, ReversePermutation

    layers = []
    for _ in range(k):
        # num_blocks = depth - 1 plain masked blocks after the first layer: depth hidden layers.
        layers.append(MaskedAffineAutoregressiveTransform(d, hidden, context_features=c, num_blocks=depth - 1, use_residual_blocks=False))
        layers.append(ReversePermutation(d))
    return _wrap("nflows", Flow(CompositeTransform(layers[:-1]), StandardNormal([d])), d, "nflows")


def build_zuko_maf(k: int, d: int, c: int, hidden: int, depth: int) -> Model:
    from zuko.flows import MAF

    return _wrap("zuko", MAF(d, c, transforms=k, hidden_features=(hidden,) * depth), d, "zuko")


WORKLOADS: dict[str, dict[str, Callable[[int, int, int, int, int], Model]]] = {
    "coupling": BUILDERS,
    "nsf": {"flowkit": build_flowkit_nsf, "nflows": build_nflows_nsf, "zuko": build_zuko_nsf},
    "maf": {"flowkit": build_flowkit_maf, "nflows": build_nflows_maf, "zuko": build_zuko_maf},
}


# -- timing ---------------------------------------------------------------------------------


def train_step(model: Model, x: Tensor, ctx: Tensor) -> float:
    model.module.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    loss = model.loss(x, ctx)
    loss.backward()
    return time.perf_counter() - t0


def sample_step(model: Model, ctx: Tensor, n: int) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        s = model.sample(ctx, n)
    dt = time.perf_counter() - t0
    # flowkit, nflows, FrEIA: (contexts, samples, D); zuko: (samples, contexts, D).
    assert s.shape in ((ctx.shape[0], n, model.features), (n, ctx.shape[0], model.features)), s.shape
    return dt


def compiled_flowkit(model: Model) -> Model:
    flow = model.module
    loss = torch.compile(model.loss)
    sample = torch.compile(model.sample)
    return Model("flowkit (compiled)", flow, loss, sample, model.features)


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def matmul_time(model: Model, ctx: Tensor, n: int, runs: int = 3) -> tuple[float, float]:
    r"""(total, matmul) seconds per sampling run, from torch.profiler's self CPU times.

    No compiler that keeps the matrix products (inductor calls the same BLAS routines on CPU)
    can make a run faster than its matmul time, so ``eager total / eager matmul`` bounds the
    speed-up that compiling the sampler can give.
    """
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        model.sample(ctx, n)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model.sample(ctx, n)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6 / runs
    # cpu_time_total: addmm's own copy of the bias into its output counts as matmul work.
    mm = sum(e.cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e6 / runs
    return total, mm


def fmt_ms(t: float) -> str:
    return f"{1e3 * t:.1f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", "-K", type=int, default=8, help="number of couplings K")
    p.add_argument("--features", "-D", type=int, default=32, help="features D")
    p.add_argument("--context", "-C", type=int, default=64, help="context features C")
    p.add_argument("--batch", "-B", type=int, default=256, help="batch size B (train) and number of contexts (sampling)")
    p.add_argument("--hidden", type=int, default=128, help="hidden width of every coupling net")
    p.add_argument("--depth", type=int, default=2, help="hidden layers of every coupling net")
    p.add_argument("--samples", type=int, default=100, help="samples per context")
    p.add_argument("--repeats", type=int, default=20, help="timed train steps per library")
    p.add_argument("--sample-repeats", type=int, default=5, help="timed sampling runs per library")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per library first")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of flowkit")
    p.add_argument("--libs", default="flowkit,nflows,zuko,FrEIA", help="comma-separated libraries")
    p.add_argument("--no-profile", action="store_true", help="skip the profile of flowkit's sampling (matmul share)")
    p.add_argument(
        "--workload",
        default="coupling",
        choices=sorted(WORKLOADS),
        help="coupling: affine couplings (default); nsf: spline couplings; maf: masked autoregressive",
    )
    p.add_argument(
        "--wide", action="store_true", help="the wider sizes of issue 13: context C = 256 and hidden width 256 (K = 8, D = 32, B = 256)"
    )
    args = p.parse_args(argv)
    if args.wide:
        args.context, args.hidden = 256, 256
    builders = WORKLOADS[args.workload]

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    k, d, c, b = args.layers, args.features, args.context, args.batch
    models = []
    for name in args.libs.split(","):
        if name not in builders:
            continue  # e.g. FrEIA has no spline or autoregressive workload here
        torch.manual_seed(0)
        models.append(builders[name](k, d, c, args.hidden, args.depth))
    if not args.no_compile and any(m.name == "flowkit" for m in models):
        models.append(compiled_flowkit(next(m for m in models if m.name == "flowkit")))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, d, generator=g)
    ctx = torch.randn(b, c, generator=g)

    print(
        f"# flows benchmark ({args.workload}): K={k} D={d} C={c} B={b} hidden={args.hidden}x{args.depth} "
        f"samples={args.samples}x{b}, threads={args.threads}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}",
        flush=True,
    )
    for m in models:
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            train_step(m, x, ctx)
        for _ in range(max(1, args.warmup // 2)):
            sample_step(m, ctx, args.samples)
        loss = float(m.loss(x, ctx).detach())
        print(f"  {m.name:20s} params={m.num_params:>8d}  loss={loss:9.4f}  warm-up {time.perf_counter() - t0:6.1f}s", flush=True)

    # Interleaved repeats, rotating the order every round.
    for r in range(args.repeats):
        order = models[r % len(models) :] + models[: r % len(models)]
        for m in order:
            m.train_times.append(train_step(m, x, ctx))
    for r in range(args.sample_repeats):
        order = models[r % len(models) :] + models[: r % len(models)]
        for m in order:
            m.sample_times.append(sample_step(m, ctx, args.samples))

    fk = next((m for m in models if m.name == "flowkit"), None)
    peers = [m for m in models if m.name not in ("flowkit", "flowkit (compiled)")]
    med = {m.name: (statistics.median(m.train_times), statistics.median(m.sample_times)) for m in models}
    print()
    low = {m.name: (min(m.train_times), min(m.sample_times)) for m in models}
    print(
        "| library | params | train step, median (min) ms | flowkit / this, train | sampling, median (min) ms | flowkit / this, sampling |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for m in models:
        tr, sa = med[m.name]
        if fk is not None:
            rt, rs = med["flowkit"][0] / tr, med["flowkit"][1] / sa
            ratio_t, ratio_s = f"{rt:.2f}", f"{rs:.2f}"
        else:
            ratio_t = ratio_s = "-"
        print(
            f"| {m.name} | {m.num_params} | {fmt_ms(tr)} ({fmt_ms(low[m.name][0])}) | {ratio_t} | "
            f"{fmt_ms(sa)} ({fmt_ms(low[m.name][1])}) | {ratio_s} |"
        )
    if fk is not None:
        print()
        if peers:
            best_t = min(peers, key=lambda m: med[m.name][0])
            best_s = min(peers, key=lambda m: med[m.name][1])
            print(
                f"- fastest peer, train step: {best_t.name} ({fmt_ms(med[best_t.name][0])} ms); "
                f"flowkit eager / it = {med['flowkit'][0] / med[best_t.name][0]:.2f} (target <= 1.00)"
            )
            print(
                f"- fastest peer, sampling: {best_s.name} ({fmt_ms(med[best_s.name][1])} ms); "
                f"flowkit eager / it = {med['flowkit'][1] / med[best_s.name][1]:.2f} (target <= 1.00)"
            )
        if "flowkit (compiled)" in med:
            ct, cs = med["flowkit (compiled)"]
            print(
                f"- flowkit compiled speed-up over eager: train {med['flowkit'][0] / ct:.2f}x, "
                f"sampling {med['flowkit'][1] / cs:.2f}x (target >= 1.20x)"
            )
        if not args.no_profile:
            for m in (x for x in models if x.name.startswith("flowkit")):
                total, mm = matmul_time(m, ctx, args.samples)
                print(
                    f"- {m.name} sampling, profiled: {fmt_ms(total)} ms per run, of which matrix products "
                    f"{fmt_ms(mm)} ms ({100 * mm / total:.0f}%); run time / matmul time = {total / mm:.2f}"
                )
        print("- ratios are of medians; flowkit / this < 1 means flowkit is faster")


if __name__ == "__main__":
    main()
