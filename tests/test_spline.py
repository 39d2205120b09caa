"""RationalQuadraticCoupling and the spline maths: identity at init, identity tails, the
float64 autograd log-det, the stable inverse, agreement with nflows' spline, errors."""

from __future__ import annotations

import pytest
import torch

import flowkit
from flowkit import RationalQuadraticCoupling
from flowkit.testing import check_log_det, check_transform, randomize_parameters
from flowkit.transforms.spline import _DERIVATIVE_SHIFT, rational_quadratic_spline, spline_knots


def _raw(n: int, d: int, bins: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, d, 3 * bins - 1, generator=g, dtype=torch.float64)


def test_identity_at_initialization() -> None:
    torch.manual_seed(0)
    for mask in ("half", "alternate"):
        t = RationalQuadraticCoupling(5, 3, hidden_features=16, bins=6, mask=mask)
        x, c = 3 * torch.randn(64, 5), torch.randn(64, 3)
        y, ladj = t(x, c)
        assert torch.allclose(y, x, atol=1e-5) and ladj.abs().max() < 1e-5
        back, ladj_inv = t.inverse(x, c)
        assert torch.allclose(back, x, atol=1e-5) and ladj_inv.abs().max() < 1e-5


def test_identity_tails_and_c1_at_the_bound() -> None:
    raw = _raw(1, 6, 5)
    x = torch.tensor([[-9.0, -3.0001, 3.0001, 7.5, -3.0, 3.0]], dtype=torch.float64)
    y, ladj = rational_quadratic_spline(x, raw, bound=3.0)
    assert torch.equal(y[0, :4], x[0, :4]) and torch.equal(ladj[0, :4], torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(y[0, 4:], x[0, 4:], atol=1e-12)  # the knots at +-B are fixed
    assert ladj[0, 4:].abs().max() < 1e-12  # slope 1 at the boundary knots: C^1 with the tails
    back, _ = rational_quadratic_spline(y, raw, bound=3.0, inverse=True)
    assert torch.equal(back[0, :4], x[0, :4])


def test_spline_is_monotonic_and_maps_the_interval_onto_itself() -> None:
    raw = _raw(1, 1, 8, seed=3, scale=3.0).expand(2001, 1, 23)
    x = torch.linspace(-4, 4, 2001, dtype=torch.float64)[:, None]
    y, ladj = rational_quadratic_spline(x, raw, bound=4.0)
    assert (y[1:] > y[:-1]).all() and y.min() == -4.0 and y.max() == 4.0
    # The analytic log-derivative against central differences.
    h = 1e-7
    fd = torch.log((rational_quadratic_spline(x + h, raw, 4.0)[0] - rational_quadratic_spline(x - h, raw, 4.0)[0]) / (2 * h))
    inner = x.abs() < 4.0 - 1e-6
    assert (fd - ladj)[inner].abs().max() < 1e-3  # a point within h of a knot sees the kink of g"


def test_stable_inverse_float64_round_trip_near_knots() -> None:
    # (With raw parameters ~3x larger, derivatives reach the 1e-3 floor and bins their minimum
    # width: the log-det round trip at a knot is then ill-conditioned, ~1e-6.)
    raw = _raw(200, 3, 8, seed=1, scale=1.0)
    xk, _, _ = spline_knots(raw, 2.0)
    # Points on and next to the knots are the hard cases for the quadratic's root.
    x = xk[..., 3] + torch.tensor([0.0, 1e-12, -1e-9], dtype=torch.float64)
    y, ladj = rational_quadratic_spline(x, raw, 2.0)
    back, ladj_inv = rational_quadratic_spline(y, raw, 2.0, inverse=True)
    assert (back - x).abs().max() < 1e-12 and (ladj + ladj_inv).abs().max() < 1e-10


@pytest.mark.parametrize("mask", ["half", "alternate"])
def test_float64_autograd_log_det_conditional_odd_features(mask: str) -> None:
    t = randomize_parameters(RationalQuadraticCoupling(7, 2, hidden_features=16, bins=5, bound=2.0, mask=mask), seed=2, scale=1.0)
    x = 2.5 * torch.randn(6, 7, dtype=torch.float64)  # some entries in the tails
    c = torch.randn(6, 2, dtype=torch.float64)
    assert check_log_det(t, x, c, atol=1e-10).max_error < 1e-10
    assert check_transform(t, x, c)


def test_matches_nflows_spline() -> None:
    splines = pytest.importorskip("nflows.transforms.splines.rational_quadratic")
    raw = _raw(50, 4, 6, seed=4)
    x = 4 * torch.randn(50, 4, dtype=torch.float64)
    w, h, d = raw.split([6, 6, 5], dim=-1)
    for inverse in (False, True):
        ours = rational_quadratic_spline(x, raw, 3.0, inverse=inverse)
        ref = splines.unconstrained_rational_quadratic_spline(
            x, w, h, d + _DERIVATIVE_SHIFT, inverse=inverse, tails="linear", tail_bound=3.0
        )
        assert torch.allclose(ours[0], ref[0], atol=1e-12) and torch.allclose(ours[1], ref[1], atol=1e-12)


def test_errors() -> None:
    with pytest.raises(ValueError, match="bins"):
        RationalQuadraticCoupling(4, bins=1)
    with pytest.raises(ValueError, match="bound"):
        RationalQuadraticCoupling(4, bound=0.0)
    with pytest.raises(ValueError, match="mask"):
        RationalQuadraticCoupling(4, mask="checker")
    with pytest.raises(flowkit.InputError, match="needs context"):
        RationalQuadraticCoupling(4, 2, hidden_features=8)(torch.randn(3, 4))


def test_nsf_trains() -> None:
    torch.manual_seed(0)
    flow = flowkit.nsf(2, 1, num_layers=2, hidden_features=16, bins=4)
    x = torch.randn(128, 2) * torch.tensor([0.3, 1.5]) + 1.0
    c = torch.randn(128, 1)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = -flow.log_prob(x, c).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < first - 0.2
