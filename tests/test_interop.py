"""flowkit <-> nflows: the same densities, the same checks, mixed chains, one training step."""

from __future__ import annotations

import copy
import importlib
import io
import sys

import pytest
import torch

import flowkit
from flowkit.testing import check_invertible, check_log_det, check_transform, randomize_parameters

nflows = pytest.importorskip("nflows", reason="nflows is not installed (pip install flowkit[nflows])")

from nflows.distributions.normal import StandardNormal as NflowsNormal  # noqa: E402
from nflows.flows import Flow as NflowsFlow  # noqa: E402
from nflows.nn.nets import ResidualNet  # noqa: E402
from nflows.transforms import (  # noqa: E402
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    PiecewiseRationalQuadraticCouplingTransform,
    RandomPermutation,
)

from flowkit.interop.nflows import FlowkitAsNflows, NflowsAsFlowkit, from_nflows, to_nflows  # noqa: E402

D, C, B = 5, 3, 6


def _flowkit_transform() -> flowkit.Sequential:
    torch.manual_seed(0)
    t = flowkit.Sequential(
        flowkit.ConditionalActNorm(D, C, hidden_features=8),
        flowkit.AffineCoupling(D, C, hidden_features=16, clamp="tanh"),
        flowkit.Invertible1x1(D, seed=0),
        flowkit.Switch(D),
        flowkit.AffineCoupling(D, C, hidden_features=16, mask="alternate"),
    )
    return randomize_parameters(t, seed=1).double()


def _rq_coupling(context_features: int | None = C) -> PiecewiseRationalQuadraticCouplingTransform:
    torch.manual_seed(1)
    mask = torch.arange(D) % 2

    def net(i: int, o: int) -> ResidualNet:
        return ResidualNet(i, o, hidden_features=16, context_features=context_features, num_blocks=1)

    return PiecewiseRationalQuadraticCouplingTransform(mask, net, num_bins=4, tails="linear", tail_bound=3.0)


def _maf() -> MaskedAffineAutoregressiveTransform:
    torch.manual_seed(2)
    return MaskedAffineAutoregressiveTransform(D, hidden_features=16, context_features=C, num_blocks=1)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(B, D, generator=g, dtype=torch.float64), torch.randn(B, C, generator=g, dtype=torch.float64)


def test_to_nflows_inside_nflows_flow_matches_flowkit_flow() -> None:
    t = _flowkit_transform()
    x, c = _data()
    wrapped = to_nflows(t)
    assert isinstance(wrapped, nflows.transforms.Transform)
    nf = NflowsFlow(wrapped, NflowsNormal([D]))
    fk = flowkit.Flow(t, flowkit.StandardNormal(D))
    lp_nflows = nf.log_prob(x, context=c)
    lp_flowkit = fk.log_prob(x, context=c)
    assert lp_nflows.shape == (B,)
    torch.testing.assert_close(lp_nflows, lp_flowkit.to(lp_nflows.dtype), atol=1e-10, rtol=0)
    # The density is a real one: it differs from the base density (non-identity layers).
    assert (lp_flowkit - flowkit.StandardNormal(D).log_prob(x)).abs().min() > 1e-6
    # Sampling goes through the inverse: nflows gives (contexts, samples, D); its base samples
    # in the default dtype, so sample from a float32 copy.
    nf32 = NflowsFlow(to_nflows(copy.deepcopy(t).float()), NflowsNormal([D]))
    s = nf32.sample(4, context=c.float())
    assert s.shape == (B, 4, D) and torch.isfinite(s).all()
    # In an nflows CompositeTransform next to nflows layers.
    comp = CompositeTransform([to_nflows(t), RandomPermutation(D)]).double()
    y, ld = comp(x, context=c)
    back, ld_inv = comp.inverse(y, context=c)
    torch.testing.assert_close(back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ld, -ld_inv, atol=1e-10, rtol=0)


@pytest.mark.parametrize("make", [_rq_coupling, _maf], ids=["rq_coupling", "maf"])
def test_from_nflows_passes_checks_and_infers_sizes(make) -> None:
    nt = make()
    t = from_nflows(nt)
    assert isinstance(t, flowkit.Transform) and isinstance(t, NflowsAsFlowkit)
    assert (t.features, t.context_features) == (D, C)
    x, c = _data()
    x = 2 * x  # reach the linear tails of the spline too (tail_bound=3)
    check_invertible(t, x, c)
    check_log_det(t, x, c)
    # flowkit's validation now guards the nflows layer.
    with pytest.raises(flowkit.InputError, match="needs context"):
        t(x.float())


def test_from_nflows_trains_one_step() -> None:
    flow = flowkit.Flow(flowkit.Sequential(from_nflows(_rq_coupling()), from_nflows(_maf())), flowkit.StandardNormal(D))
    x, c = (v.float() for v in _data())
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in flow.parameters()]
    loss = -flow.log_prob(x, context=c).mean()
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in flow.parameters() if p.requires_grad)
    opt.step()
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, flow.parameters()))
    loss_after = -flow.log_prob(x, context=c).mean()
    assert torch.isfinite(loss_after) and loss_after < loss  # one Adam step on the same batch helps


def test_mixed_sequential_of_flowkit_and_nflows_layers() -> None:
    torch.manual_seed(4)
    mixed = flowkit.Sequential(
        flowkit.AffineCoupling(D, C, hidden_features=8),
        from_nflows(_maf()),
        flowkit.Switch(D),
        from_nflows(_rq_coupling()),
        flowkit.ConditionalActNorm(D, C, hidden_features=8),
    )
    randomize_parameters(mixed, seed=5, scale=0.3)
    x, c = _data()
    result = check_transform(mixed, x, c)
    assert result and result.max_error < 1e-8
    flow = flowkit.Flow(mixed, flowkit.StandardNormal(D))
    assert flow.sample(3, context=c.float()).shape == (B, 3, D)


def test_wrappers_unwrap_pickle_and_import_message(monkeypatch: pytest.MonkeyPatch) -> None:
    nt = _maf()
    assert to_nflows(from_nflows(nt)) is nt
    t = flowkit.Switch(4)
    assert from_nflows(to_nflows(t)) is t
    assert isinstance(to_nflows(t), FlowkitAsNflows)
    with pytest.raises(ValueError, match="features=D"):
        from_nflows(CompositeTransform([]))
    # Whole-module save works (no lambdas stored on the wrappers).
    buf = io.BytesIO()
    torch.save(flowkit.Sequential(from_nflows(nt), flowkit.Reverse(D)), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x, c = (v.float() for v in _data())
    torch.testing.assert_close(loaded(x, c)[0], flowkit.Sequential(from_nflows(nt), flowkit.Reverse(D))(x, c)[0])
    # Without nflows, the import fails with the install hint.
    monkeypatch.setitem(sys.modules, "nflows", None)
    monkeypatch.setitem(sys.modules, "nflows.transforms", None)
    monkeypatch.delitem(sys.modules, "flowkit.interop.nflows")
    with pytest.raises(ImportError, match=r"pip install flowkit\[nflows\]"):
        importlib.import_module("flowkit.interop.nflows")
    interop = importlib.import_module("flowkit.interop")
    with pytest.raises(ImportError, match=r"pip install flowkit\[nflows\]"):
        interop.to_nflows  # noqa: B018 - the lazy attribute triggers the import


def test_new_layers_both_ways() -> None:
    from nflows.transforms import MaskedPiecewiseRationalQuadraticAutoregressiveTransform

    torch.manual_seed(6)
    ours = flowkit.Sequential(
        flowkit.RationalQuadraticCoupling(D, C, hidden_features=16, bins=4, bound=3.0),
        flowkit.Switch(D),
        flowkit.MaskedAutoregressive(D, C, hidden_features=16, transform="spline", bins=4, bound=3.0),
        flowkit.Inverse(flowkit.MaskedAutoregressive(D, C, hidden_features=16)),
    )
    ours = randomize_parameters(ours, seed=7).double()
    x, c = _data()
    # flowkit -> nflows: the same density inside an nflows Flow
    nf = NflowsFlow(to_nflows(ours), NflowsNormal([D]))
    fk = flowkit.Flow(ours, flowkit.StandardNormal(D))
    torch.testing.assert_close(nf.log_prob(2 * x, context=c), fk.log_prob(2 * x, context=c), atol=1e-10, rtol=0)
    # nflows -> flowkit: nflows' spline MAF next to flowkit's layers, checked by the kit
    torch.manual_seed(8)
    theirs = MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
        D, hidden_features=16, context_features=C, num_bins=4, tails="linear", tail_bound=3.0, num_blocks=1
    )
    mixed = flowkit.Sequential(from_nflows(theirs, features=D), ours)
    assert check_transform(mixed, 2 * x, c).max_error < 1e-8
