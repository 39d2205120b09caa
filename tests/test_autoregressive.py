"""MaskedAutoregressive (MAF) and its inverse (IAF): autoregressive structure, the inverse in
D passes, IAF = Inverse(MAF), the ordering buffer, shared context, errors."""

from __future__ import annotations

import pytest
import torch

import flowkit
from flowkit import Inverse, MaskedAutoregressive
from flowkit.testing import check_log_det, check_shared_context, randomize_parameters


def _layer(transform: str = "affine", order=None, d: int = 5, c: int = 2) -> MaskedAutoregressive:
    torch.manual_seed(0)
    t = MaskedAutoregressive(d, c, hidden_features=24, transform=transform, bins=4, bound=2.0, order=order)
    return randomize_parameters(t, seed=1, scale=1.0).double().eval()


@pytest.mark.parametrize("transform", ["affine", "spline"])
def test_jacobian_is_triangular_in_the_ordering(transform: str) -> None:
    order = [3, 1, 4, 0, 2]
    t = _layer(transform, order)
    x, c = torch.randn(1, 5, dtype=torch.float64), torch.randn(1, 2, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: t(v, c)[0], x)[0, :, 0]  # (D_out, D_in)
    pos = torch.empty(5, dtype=torch.long)
    pos[torch.tensor(order)] = torch.arange(5)
    allowed = pos[None, :] <= pos[:, None]  # y_i may depend on x_j only if j comes no later
    assert (jac[~allowed] == 0).all() and (jac.diagonal() != 0).all()
    assert torch.equal(t.net.order, torch.tensor(order)) and "net.order" in t.state_dict()


@pytest.mark.parametrize("transform", ["affine", "spline"])
def test_inverse_takes_d_passes_and_forward_one(transform: str) -> None:
    t = _layer(transform)
    calls = []
    orig = t.net.from_context_term
    t.net.from_context_term = lambda *a: calls.append(1) or orig(*a)  # counted on this instance only
    x, c = 1.5 * torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    y, ladj = t(x, c)
    assert len(calls) == 1
    back, ladj_inv = t.inverse(y, c)
    assert len(calls) == 1 + 5
    assert (back - x).abs().max() < 1e-10 and (ladj + ladj_inv).abs().max() < 1e-10
    assert check_log_det(t, x, c, atol=1e-10).max_error < 1e-10


def test_iaf_is_inverse_of_maf() -> None:
    maf = _layer("spline")
    iaf = Inverse(maf)
    z, c = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    x, ladj = iaf(z, c)
    x_ref, ladj_ref = maf.inverse(z, c)
    assert torch.equal(x, x_ref) and torch.equal(ladj, ladj_ref)
    # An IAF flow samples in one pass per layer and its samples have the flow's density.
    flow = flowkit.Flow(iaf, flowkit.StandardNormal(5)).double()
    s, lp = flow.sample_and_log_prob(4, c)
    assert torch.allclose(lp.reshape(-1), flow.log_prob(s.reshape(-1, 5), c.repeat_interleave(4, 0)), atol=1e-9)


def test_identity_at_init_and_first_feature_sees_the_context() -> None:
    torch.manual_seed(0)
    t = MaskedAutoregressive(3, 2, hidden_features=8)
    x = torch.randn(4, 3)
    y, ladj = t(x, torch.randn(4, 2))
    assert torch.equal(y, x) and ladj.abs().max() == 0
    t = _layer(d=3, c=2)
    x = torch.zeros(1, 3, dtype=torch.float64)
    y1, _ = t(x, torch.zeros(1, 2, dtype=torch.float64))
    y2, _ = t(x, torch.ones(1, 2, dtype=torch.float64))
    assert (y1[0, 0] - y2[0, 0]).abs() > 1e-6  # unlike nflows' MADE, the first feature is conditional


def test_shared_context_and_errors() -> None:
    t = _layer("spline")
    x, c = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    assert check_shared_context(t, x, c, repeats=4)
    with pytest.raises(ValueError, match="transform"):
        MaskedAutoregressive(3, transform="quadratic")
    with pytest.raises(ValueError, match="order"):
        MaskedAutoregressive(3, order=[0, 0, 1])
    with pytest.raises(flowkit.InputError, match="needs context"):
        MaskedAutoregressive(3, 2, hidden_features=8)(torch.randn(2, 3))


def test_maf_builder_alternates_orderings() -> None:
    flow = flowkit.maf(4, 2, num_layers=3, hidden_features=8)
    orders = [layer.net.order.tolist() for layer in flow.transform]
    assert orders == [[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]]
