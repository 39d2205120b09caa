"""A context shared by S rows (``context_repeats``), as Flow.sample uses it: the same numbers as
the context repeated row by row, for flowkit and foreign layers alike; clear errors for bad
repeats; the testing kit catches a layer that breaks the promise; and the sampler's noise is
PyTorch's own, so a compiled sampler draws the same samples as eager for a seed."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import flowkit
from flowkit import AffineCoupling, ConditionalActNorm, Flow, InputError, Sequential, StandardNormal, Switch, glow
from flowkit.nn import MLP
from flowkit.testing import CheckFailed, check_shared_context, randomize_parameters
from flowkit.transforms.base import repeat_context


def _glow64() -> Flow:
    torch.manual_seed(0)
    flow = glow(6, context_features=4, num_layers=3, hidden_features=16, seed=0).double()
    randomize_parameters(flow, scale=0.5, seed=3)
    return flow.eval()


class _ForeignCoupling(nn.Module):
    """A protocol-only transform (not a flowkit Transform), like an nflows layer."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = randomize_parameters(AffineCoupling(6, 4, hidden_features=8), seed=5).double()
        self.seen_rows: list[int] = []

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.seen_rows.append(context.shape[0])
        return self.inner(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.seen_rows.append(context.shape[0])
        return self.inner.inverse(y, context)


def test_flow_sample_equals_the_repeated_context_path() -> None:
    flow = _glow64()
    c = torch.randn(5, 4, dtype=torch.float64)
    torch.manual_seed(11)
    x, log_prob = flow.sample_and_log_prob(7, c)
    torch.manual_seed(11)
    z = flow.base.sample(35)
    x_ref, ladj_ref = flow.transform.inverse(z, repeat_context(c, 7))
    assert torch.allclose(x.reshape(35, 6), x_ref, atol=1e-12, rtol=0)
    assert torch.allclose(log_prob.reshape(35), flow.base.log_prob(z) - ladj_ref, atol=1e-12, rtol=0)
    # and the density of the samples is the flow's density at them
    assert torch.allclose(log_prob.reshape(35), flow.log_prob(x.reshape(35, 6), repeat_context(c, 7)), atol=1e-10)


def test_gradients_through_shared_context_match_the_repeated_path() -> None:
    flow = _glow64()
    c = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(12, 6, dtype=torch.float64)
    x_shared, _ = flow.transform.inverse(z, c, context_repeats=4)
    (g_shared,) = torch.autograd.grad(x_shared.square().sum(), c)
    x_rep, _ = flow.transform.inverse(z, repeat_context(c, 4))
    (g_rep,) = torch.autograd.grad(x_rep.square().sum(), c)
    assert torch.allclose(g_shared, g_rep, atol=1e-10)


def test_foreign_children_get_the_context_repeated() -> None:
    foreign = _ForeignCoupling()
    chain = Sequential(ConditionalActNorm(6, 4, hidden_features=8), foreign, Switch(6)).double()
    randomize_parameters(chain, seed=2)
    c = torch.randn(2, 4, dtype=torch.float64)
    z = torch.randn(10, 6, dtype=torch.float64)
    y, ld = chain.inverse(z, c, context_repeats=5)
    assert foreign.seen_rows == [10]  # the protocol-only layer saw one context row per row
    y_ref, ld_ref = chain.inverse(z, repeat_context(c, 5))
    assert torch.allclose(y, y_ref, atol=1e-12) and torch.allclose(ld, ld_ref, atol=1e-12)
    # Flow.sample with a foreign transform at the top takes the repeated path
    flow = Flow(foreign, StandardNormal(6).double())
    foreign.seen_rows.clear()
    assert flow.sample(3, c).shape == (2, 3, 6)
    assert foreign.seen_rows == [6]


def test_conditional_actnorm_runs_its_net_once_per_context_row() -> None:
    t = randomize_parameters(ConditionalActNorm(3, 2, hidden_features=8), seed=0)
    rows: list[int] = []
    t.net.register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape[0]))
    t.inverse(torch.randn(40, 3), torch.randn(4, 2), context_repeats=10)
    assert rows == [4]


@pytest.mark.parametrize(
    ("rows", "context_rows", "repeats", "match"),
    [
        (10, 2, 4, r"4 rows per context row \(2 x 4 = 8\), got 10"),
        (10, 5, 0, "context_repeats must be a positive int, got 0"),
        (10, 5, True, "context_repeats must be a positive int, got True"),
        (10, 5, 1, r"expected context of shape \(10, 4\), got \(5, 4\)"),
    ],
)
def test_bad_context_repeats_are_clear_errors(rows: int, context_rows: int, repeats: int, match: str) -> None:
    coupling = AffineCoupling(6, 4, hidden_features=8)
    chain = Sequential(coupling, Switch(6))
    x, c = torch.randn(rows, 6), torch.randn(context_rows, 4)
    for t in (coupling, chain):
        with pytest.raises(InputError, match=match):
            t.inverse(x, c, context_repeats=repeats)


def test_mlp_forward_shared_checks_its_shapes() -> None:
    net = MLP(5, 2, hidden_features=8, zero_last=False)
    with pytest.raises(ValueError, match="do not fit in_features=5"):
        net.forward_shared(torch.randn(6, 2), torch.randn(4, 3))  # 6 rows for 4 shared rows
    with pytest.raises(ValueError, match="do not fit in_features=5"):
        net.forward_shared(torch.randn(6, 3), torch.randn(3, 3))  # 3 + 3 features != 5


class _TiledContextCoupling(flowkit.AffineCoupling):
    """Claims shares_context but repeats the context the wrong way round (tile, not interleave)."""

    def _params(self, a: Tensor, context: Tensor | None) -> Tensor:
        if context is not None and context.shape[0] != a.shape[0]:
            context = context.repeat(a.shape[0] // context.shape[0], 1)
        return super()._params(a, context)


def test_check_shared_context_catches_a_broken_promise() -> None:
    good = randomize_parameters(AffineCoupling(4, 3, hidden_features=8), seed=1)
    x, c = torch.randn(5, 4), torch.randn(5, 3)
    assert check_shared_context(good, x, c, repeats=3).max_error < 1e-12
    bad = randomize_parameters(_TiledContextCoupling(4, 3, hidden_features=8), seed=1)
    with pytest.raises(CheckFailed, match=r"_TiledContextCoupling.*context_repeats=3 differs"):
        check_shared_context(bad, x, c, repeats=3)
    with pytest.raises(TypeError, match="needs a flowkit Transform"):
        check_shared_context(_ForeignCoupling(), x.double(), c.double())


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside torch's inductor
def test_compiled_sampler_draws_the_eager_samples() -> None:
    torch._dynamo.reset()
    flow = _glow64().float()
    c = torch.randn(3, 4)
    torch.manual_seed(4)
    eager = flow.sample(5, c)
    compiled = torch.compile(flow.sample, backend="inductor", fullgraph=True)
    torch.manual_seed(4)
    got = compiled(5, c)
    assert torch.allclose(got, eager, atol=1e-5)
    # two draws inside one compiled graph stay two draws
    twice = torch.compile(lambda: (flow.base.sample(4), flow.base.sample(4)), fullgraph=True)
    a, b = twice()
    assert not torch.equal(a, b)
