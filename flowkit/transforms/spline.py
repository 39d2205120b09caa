r"""Monotonic rational-quadratic splines (Durkan et al., 2019) and the spline coupling layer.

A spline with :math:`K` bins maps :math:`[-B, B]` onto itself through :math:`K + 1` knots
:math:`(x_k, y_k)` with :math:`x_0 = y_0 = -B`, :math:`x_K = y_K = B` and positive
derivatives :math:`\delta_k` at the knots (:math:`\delta_0 = \delta_K = 1`). In bin :math:`k`,
with :math:`w_k = x_{k+1} - x_k`, :math:`h_k = y_{k+1} - y_k`, :math:`s_k = h_k / w_k` and
:math:`\xi = (x - x_k) / w_k \in [0, 1]`,

.. math::

    g(x) = y_k + \frac{h_k \left[ s_k \xi^2 + \delta_k \xi (1 - \xi) \right]}
                      {s_k + (\delta_{k+1} + \delta_k - 2 s_k) \, \xi (1 - \xi)} ,
    \qquad
    g'(x) = \frac{s_k^2 \left[ \delta_{k+1} \xi^2 + 2 s_k \xi (1 - \xi) + \delta_k (1 - \xi)^2 \right]}
                 {\left[ s_k + (\delta_{k+1} + \delta_k - 2 s_k) \, \xi (1 - \xi) \right]^2} .

Outside :math:`[-B, B]` the map is the identity (the boundary derivatives are 1, so the map is
:math:`C^1`). The inverse solves :math:`a \xi^2 + b \xi + c = 0` for :math:`\xi` with the
numerically stable root :math:`\xi = 2c / (-b - \sqrt{b^2 - 4ac})` (Durkan et al., 2019, eq. 6
and appendix A).

References:
    Neural Spline Flows (Durkan et al., 2019), https://arxiv.org/abs/1906.04032
    Piecewise rational quadratic interpolation (Gregory & Delbourgo, 1982)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkit.transforms.coupling import _Coupling

__all__ = [
    "RationalQuadraticCoupling",
    "spline_params_per_feature",
    "spline_knots",
    "rational_quadratic_spline",
    "MIN_BIN_SIZE",
    "MIN_DERIVATIVE",
]

#: The smallest bin width and height, as a fraction of ``2 * bound``.
MIN_BIN_SIZE = 1e-3
#: The smallest derivative at an interior knot.
MIN_DERIVATIVE = 1e-3
# softplus(0 + shift) = 1 - MIN_DERIVATIVE: a raw derivative of 0 gives slope exactly 1.
_DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


def spline_params_per_feature(bins: int) -> int:
    r"""The number of raw parameters of one spline: ``bins`` widths and heights, ``bins - 1`` derivatives.

    Example:
        >>> spline_params_per_feature(8)
        23
    """
    return 3 * bins - 1


def check_spline_args(bins: int, bound: float) -> None:
    r"""Raises :class:`ValueError` unless ``bins >= 2`` is an int and ``bound > 0``."""
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 2:
        raise ValueError(f"bins must be an int >= 2, got {bins!r}")
    if not float(bound) > 0:
        raise ValueError(f"bound must be > 0, got {bound!r}")


def _softmax(raw: Tensor) -> Tensor:
    # Not torch.softmax: on CPU its kernel always goes parallel, and with two threads on a busy
    # machine each call on a tiny tensor cost ~8 ms (thread wake-up) against ~20 us for this.
    e = torch.exp(raw - raw.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def _cumulative(raw: Tensor, bound: float) -> Tensor:
    # Unnormalized sizes (..., K) -> knot positions (..., K + 1) from -bound to bound exactly.
    k = raw.shape[-1]
    sizes = MIN_BIN_SIZE + (1.0 - MIN_BIN_SIZE * k) * _softmax(raw)
    inner = torch.cumsum(sizes[..., :-1], dim=-1) * (2.0 * bound) - bound
    lo = inner.new_full(inner.shape[:-1] + (1,), -bound)
    return torch.cat([lo, inner, -lo], dim=-1)


def spline_knots(raw: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    r"""Turns raw parameters ``(..., 3K - 1)`` into knots ``x_k``, ``y_k`` and derivatives ``delta_k``.

    Widths and heights are ``softmax`` of the raw values, each at least :data:`MIN_BIN_SIZE`
    of the interval; interior derivatives are :math:`\delta = \delta_{min} +
    \mathrm{softplus}(r + c)` with :math:`c` chosen so that :math:`r = 0` gives
    :math:`\delta = 1`; the two boundary derivatives are 1. Zero raw parameters give the
    identity on :math:`[-B, B]`.

    Arguments:
        raw: The raw parameters, last dimension ``3 * bins - 1``.
        bound: The half-width :math:`B` of the spline's interval.

    Returns:
        ``(x_knots, y_knots, derivatives)``, each ``(..., K + 1)``.

    Example:
        >>> xk, yk, d = spline_knots(torch.zeros(2, 11), bound=3.0)
        >>> xk[0].tolist(), [round(v, 6) for v in d[0].tolist()]
        ([-3.0, -1.5, 0.0, 1.5, 3.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    """
    k = (raw.shape[-1] + 1) // 3
    widths, heights, derivs = raw.split([k, k, k - 1], dim=-1)
    x_knots = _cumulative(widths, bound)
    y_knots = _cumulative(heights, bound)
    inner = MIN_DERIVATIVE + F.softplus(derivs + _DERIVATIVE_SHIFT)
    one = inner.new_ones(inner.shape[:-1] + (1,))
    return x_knots, y_knots, torch.cat([one, inner, one], dim=-1)


def rational_quadratic_spline(x: Tensor, raw: Tensor, bound: float, inverse: bool = False) -> tuple[Tensor, Tensor]:
    r"""Applies the monotonic rational-quadratic spline (or its inverse) elementwise.

    Arguments:
        x: The input, any shape ``(...)``.
        raw: The raw spline parameters ``(..., 3K - 1)`` of each element (see :func:`spline_knots`).
        bound: The half-width :math:`B`; outside :math:`[-B, B]` the map is the identity.
        inverse: Apply :math:`g^{-1}` instead of :math:`g`.

    Returns:
        ``(y, logabsdet)``: the output and the elementwise :math:`\log |g'(x)|` (forward) or
        :math:`-\log |g'(g^{-1}(y))|` (inverse), both of ``x``'s shape.

    Example:
        >>> x = torch.linspace(-4, 4, 5)
        >>> raw = torch.randn(5, 11)
        >>> y, ladj = rational_quadratic_spline(x, raw, bound=3.0)
        >>> back, _ = rational_quadratic_spline(y, raw, bound=3.0, inverse=True)
        >>> torch.allclose(back, x, atol=1e-5), y[0].item(), ladj[-1].item()
        (True, -4.0, 0.0)
    """
    x_knots, y_knots, deriv = spline_knots(raw.to(x.dtype), bound)
    inside = (x >= -bound) & (x <= bound)
    xc = x.clamp(-bound, bound)
    # The bin of each element: how many interior knots lie at or below it (0 .. K - 1).
    knots = y_knots if inverse else x_knots
    idx = (xc.unsqueeze(-1) >= knots[..., 1:-1]).sum(dim=-1, keepdim=True)
    idx1 = idx + 1

    def at(t: Tensor, i: Tensor) -> Tensor:
        return t.gather(-1, i).squeeze(-1)

    x_k, y_k, d_k = at(x_knots, idx), at(y_knots, idx), at(deriv, idx)
    w = at(x_knots, idx1) - x_k
    h = at(y_knots, idx1) - y_k
    d_k1 = at(deriv, idx1)
    s = h / w
    c2 = d_k1 + d_k - 2.0 * s
    if inverse:
        dy = xc - y_k
        a = h * (s - d_k) + dy * c2
        b = h * d_k - dy * c2
        c = -s * dy
        disc = (b * b - 4.0 * a * c).clamp_min(0.0)
        xi = (2.0 * c) / (-b - torch.sqrt(disc))
        out = x_k + xi * w
    else:
        xi = (xc - x_k) / w
    t = xi * (1.0 - xi)
    denom = s + c2 * t
    if not inverse:
        out = y_k + h * (s * xi * xi + d_k * t) / denom
    numer = s * s * (d_k1 * xi * xi + 2.0 * s * t + d_k * (1.0 - xi) * (1.0 - xi))
    log_grad = torch.log(numer) - 2.0 * torch.log(denom)
    if inverse:
        log_grad = -log_grad
    out = torch.where(inside, out, x)
    return out, torch.where(inside, log_grad, torch.zeros_like(log_grad))


class RationalQuadraticCoupling(_Coupling):
    r"""Rational-quadratic spline coupling layer (Neural Spline Flows), optionally conditional.

    With :math:`\theta = \mathrm{net}([x_a, c])` holding ``3 * bins - 1`` raw spline parameters
    per transformed feature (see :func:`spline_knots`),

    .. math::

        y_a = x_a, \quad y_{b,i} = g_{\theta_i}(x_{b,i}), \quad
        \log |\det J| = \textstyle\sum_i \log g'_{\theta_i}(x_{b,i}) ,

    where :math:`g_\theta` is a monotonic rational-quadratic spline on :math:`[-B, B]` and the
    identity outside (:math:`\log g' = 0` there). The inverse solves one quadratic per element
    (the stable root). The net's last layer starts at zero, so a fresh layer is the identity.

    Arguments:
        features: The number of features D (odd D is fine, see
            :func:`~flowkit.transforms.coupling.coupling_indices`).
        context_features: The number of context features C, concatenated to the net's input.
        hidden_features: The width of the net's hidden layers.
        num_layers: The number of hidden layers of the net.
        bins: The number of spline bins K (>= 2).
        bound: The half-width :math:`B` of the spline's interval.
        mask: ``"half"`` or ``"alternate"``.
        flip_mask: Swap the identity and transformed parts of the mask.

    Example:
        >>> t = RationalQuadraticCoupling(5, context_features=3, hidden_features=32, bins=4)
        >>> x, c = torch.randn(8, 5), torch.randn(8, 3)
        >>> y, ladj = t(x, context=c)
        >>> torch.allclose(y, x, atol=1e-6), ladj.abs().max().item() < 1e-6  # identity at init
        (True, True)
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden_features: int = 256,
        num_layers: int = 2,
        bins: int = 8,
        bound: float = 5.0,
        mask: str = "half",
        flip_mask: bool = False,
    ) -> None:
        check_spline_args(bins, bound)
        super().__init__(features, context_features, hidden_features, num_layers, mask, flip_mask, spline_params_per_feature(bins))
        self.bins = bins
        self.bound = float(bound)

    def _raw(self, a: Tensor, context: Tensor | None, rows: int) -> Tensor:
        return self._params(a, context).view(rows, -1, self.params_per_feature)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        a, b = self._split(x)
        y_b, ladj = rational_quadratic_spline(b, self._raw(a, context, x.shape[0]), self.bound)
        return self._merge(a, y_b), ladj.sum(dim=1)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        a, b = self._split(y)
        x_b, ladj = rational_quadratic_spline(b, self._raw(a, context, y.shape[0]), self.bound, inverse=True)
        return self._merge(a, x_b), ladj.sum(dim=1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bins={self.bins}, bound={self.bound:g}"
