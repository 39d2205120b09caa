r"""Masked autoregressive transforms (MAF; their inverse is the IAF) with a MADE conditioner.

Each feature :math:`x_i` is transformed by an elementwise map whose parameters come from the
features before it in an ordering :math:`\pi` and from the context:

.. math::

    y_{\pi(k)} = \tau\big(x_{\pi(k)}; \theta_k(x_{\pi(1)}, \dots, x_{\pi(k-1)}, c)\big) .

The Jacobian is triangular (in the ordering), so :math:`\log|\det J| = \sum_i \log|\tau'(x_i)|`.
All :math:`\theta_k` come from one pass of a MADE network (masked weights, Germain et al.,
2015), so the density direction costs one pass; the inverse recovers one feature per pass
(D passes). :class:`~flowkit.Inverse` of the layer is the IAF (Kingma et al., 2016): one
pass to sample, D passes to evaluate a density.

References:
    MADE (Germain et al., 2015), https://arxiv.org/abs/1502.03509
    MAF (Papamakarios et al., 2017), https://arxiv.org/abs/1705.07057
    IAF (Kingma et al., 2016), https://arxiv.org/abs/1606.04934
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit._validation import check_positive_int
from flowkit.nn import soft_log_scale
from flowkit.transforms.base import Transform
from flowkit.transforms.spline import check_spline_args, rational_quadratic_spline, spline_params_per_feature

__all__ = ["MaskedAutoregressive", "MaskedMLP", "AUTOREGRESSIVE_TRANSFORMS"]

#: The names accepted by ``MaskedAutoregressive(transform=...)``.
AUTOREGRESSIVE_TRANSFORMS: tuple[str, ...] = ("affine", "spline")


class MaskedMLP(nn.Module):
    r"""A MADE network: an MLP whose masked weights make output block :math:`i` depend only on
    the inputs before feature :math:`i` in the ordering (and on the context).

    Input feature :math:`i` gets degree :math:`m(i) = 1 + \mathrm{position\ of\ } i` in
    ``order``; the context gets degree 0. Hidden units get degrees cycling through
    :math:`\{m_0, \dots, D - 1\}` (:math:`m_0 = 0` with a context, so that every output,
    the first feature's included, can depend on the context; :math:`m_0 = 1` without). A unit
    sees a unit of the layer below when its degree is :math:`\ge` that unit's; output block
    :math:`i` sees a hidden unit when :math:`m(i) >` its degree. The masks are buffers.

    Arguments:
        features: The number of autoregressive features D.
        context_features: The number of context features C.
        params_per_feature: The number of outputs per feature P (output ``(B, D, P)``).
        hidden_features: The width of the hidden layers.
        num_layers: The number of hidden layers (>= 1).
        order: A permutation of ``range(D)``: the order in which features are generated
            (default ``0, 1, ..., D - 1``).

    Example:
        >>> net = MaskedMLP(3, 0, params_per_feature=2, hidden_features=8)
        >>> net(torch.randn(4, 3)).shape
        torch.Size([4, 3, 2])
    """

    order: Tensor
    degrees: Tensor

    def __init__(
        self,
        features: int,
        context_features: int,
        params_per_feature: int,
        hidden_features: int = 256,
        num_layers: int = 2,
        order: Sequence[int] | Tensor | None = None,
    ) -> None:
        super().__init__()
        num_layers = check_positive_int("num_layers (hidden layers of the net)", num_layers)
        hidden_features = check_positive_int("hidden_features", hidden_features)
        d, c, p, h = features, context_features, params_per_feature, hidden_features
        order_t = torch.arange(d) if order is None else torch.as_tensor(order, dtype=torch.long).flatten()
        if order_t.numel() != d or not torch.equal(torch.sort(order_t).values, torch.arange(d)):
            raise ValueError(f"order must be a permutation of range({d}), got {order_t.tolist()}")
        degrees = torch.empty(d, dtype=torch.long)
        degrees[order_t] = torch.arange(1, d + 1)
        self.register_buffer("order", order_t.clone())
        self.register_buffer("degrees", degrees)
        self.features, self.context_features, self.params_per_feature = d, c, p

        low = 0 if (c > 0 or d == 1) else 1
        hidden_deg = low + torch.arange(h) % (d - low)
        # First layer: the x part is masked, the context part (degree 0) is dense.
        self.first_x = nn.Parameter(torch.empty(h, d))
        self.first_c = nn.Parameter(torch.empty(h, c))
        self.first_bias = nn.Parameter(torch.empty(h))
        ref = nn.Linear(d + c, h)
        with torch.no_grad():
            self.first_x.copy_(ref.weight[:, :d])
            self.first_c.copy_(ref.weight[:, d:])
            self.first_bias.copy_(ref.bias)
        self.register_buffer("first_mask", (hidden_deg[:, None] >= degrees[None, :]).to(torch.get_default_dtype()))
        self.hidden = nn.ModuleList([nn.Linear(h, h) for _ in range(num_layers - 1)])
        self.register_buffer("hidden_mask", (hidden_deg[:, None] >= hidden_deg[None, :]).to(torch.get_default_dtype()))
        self.last = nn.Linear(h, d * p)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)
        out_deg = degrees.repeat_interleave(p)  # output unit i * P + j belongs to feature i
        self.register_buffer("last_mask", (out_deg[:, None] > hidden_deg[None, :]).to(torch.get_default_dtype()))

    def context_term(self, context: Tensor | None, dtype: torch.dtype) -> Tensor:
        r"""The context's part of the first layer plus its bias: ``(B, H)``, or ``(H,)`` without context."""
        if context is None or self.context_features == 0:
            return self.first_bias.to(dtype)
        return F.linear(context.to(dtype), self.first_c, self.first_bias)

    def masked_weights(self) -> list[Tensor]:
        r"""The masked weight matrices, first layer (x part) to last."""
        return [
            self.first_x * self.first_mask,
            *(layer.weight * self.hidden_mask for layer in self.hidden),
            self.last.weight * self.last_mask,
        ]

    def from_context_term(self, x: Tensor, term: Tensor, weights: list[Tensor] | None = None) -> Tensor:
        r"""The outputs ``(N, D, P)`` given :meth:`context_term` (and :meth:`masked_weights`, to
        reuse them over the inverse's passes); a term of ``B`` rows serves ``N / B`` consecutive
        rows of ``x`` each."""
        w = self.masked_weights() if weights is None else weights
        h = F.linear(x, w[0])
        if term.dim() == 1 or term.shape[0] == h.shape[0]:
            h = h + term
        else:
            h = (h.view(term.shape[0], -1, h.shape[1]) + term.unsqueeze(1)).view(h.shape)
        h = F.relu(h)
        for layer, wi in zip(self.hidden, w[1:-1]):
            h = F.relu(F.linear(h, wi, layer.bias))
        out = F.linear(h, w[-1], self.last.bias)
        return out.view(x.shape[0], self.features, self.params_per_feature)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Returns the parameters ``(N, D, P)``; block ``i`` depends on ``x`` only through the
        features before ``i`` in the ordering."""
        return self.from_context_term(x, self.context_term(context, x.dtype))


class MaskedAutoregressive(Transform):
    r"""Masked autoregressive transform (MAF), affine or rational-quadratic spline, optionally conditional.

    With :math:`\theta = \mathrm{MADE}(x, c)` (see :class:`MaskedMLP`),

    .. math::

        \text{affine}: \ y_i = (x_i + t_i) \, e^{\log s_i}, \ \log|\det J| = \textstyle\sum_i \log s_i ;
        \qquad
        \text{spline}: \ y_i = g_{\theta_i}(x_i), \ \log|\det J| = \textstyle\sum_i \log g'_{\theta_i}(x_i) ,

    with :math:`\log s = \frac{2b}{\pi}\arctan(\frac{\pi r}{2b})` (the ``"atan"`` soft clamp,
    :math:`b` = ``clamp_bound``) and :math:`g` the spline of
    :class:`~flowkit.RationalQuadraticCoupling` (identity outside :math:`[-B, B]`). The forward
    (density) direction is one MADE pass; the inverse takes D passes, pass :math:`k` fixing the
    :math:`k`-th feature of the ordering. ``Inverse(MaskedAutoregressive(...))`` is the IAF.
    The MADE's last layer starts at zero, so a fresh layer is the identity.

    Arguments:
        features: The number of features D.
        context_features: The number of context features C (feeds every hidden unit of the
            MADE's first layer).
        hidden_features: The width of the MADE's hidden layers.
        num_layers: The number of hidden layers of the MADE.
        transform: ``"affine"`` or ``"spline"``.
        bins: The number of spline bins K (``transform="spline"``).
        bound: The half-width :math:`B` of the spline's interval.
        order: The ordering, a permutation of ``range(D)`` (default: ``0, ..., D - 1``); a
            buffer. :func:`flowkit.maf` alternates it with its reverse.
        clamp_bound: The bound of the affine log-scale's soft clamp.

    Example:
        >>> from flowkit import Inverse
        >>> t = MaskedAutoregressive(4, context_features=2, hidden_features=16)
        >>> x, c = torch.randn(3, 4), torch.randn(3, 2)
        >>> y, ladj = t(x, context=c)
        >>> iaf = Inverse(MaskedAutoregressive(4, transform="spline", hidden_features=16))
        >>> iaf(x)[0].shape
        torch.Size([3, 4])
    """

    # The MADE's first layer splits into an x part and a context part computed once per row.
    shares_context = True

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden_features: int = 256,
        num_layers: int = 2,
        transform: str = "affine",
        bins: int = 8,
        bound: float = 5.0,
        order: Sequence[int] | Tensor | None = None,
        clamp_bound: float = 2.0,
    ) -> None:
        super().__init__(features, context_features)
        if transform not in AUTOREGRESSIVE_TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; choose one of {', '.join(map(repr, AUTOREGRESSIVE_TRANSFORMS))}")
        if transform == "spline":
            check_spline_args(bins, bound)
        if not clamp_bound > 0:
            raise ValueError(f"clamp_bound must be > 0, got {clamp_bound}")
        self.transform = transform
        self.bins = bins
        self.bound = float(bound)
        self.clamp_bound = float(clamp_bound)
        per = 2 if transform == "affine" else spline_params_per_feature(bins)
        self.net = MaskedMLP(features, context_features, per, hidden_features, num_layers, order)

    def _elementwise(self, x: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        if self.transform == "spline":
            y, ladj = rational_quadratic_spline(x, params, self.bound, inverse=inverse)
            return y, ladj.sum(dim=1)
        shift, raw = params.unbind(dim=-1)
        log_s = soft_log_scale(raw, "atan", self.clamp_bound)
        if inverse:
            return x * torch.exp(-log_s) - shift, -log_s.sum(dim=1)
        return (x + shift) * torch.exp(log_s), log_s.sum(dim=1)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._elementwise(x, self.net(x, context), inverse=False)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        # Pass k gets the features of degree <= k right; after D passes all are exact, and so
        # are the parameters of the last pass (feature i's depend on degrees < m(i) only).
        term = self.net.context_term(context, y.dtype)  # the context's part: once, not D times
        weights = self.net.masked_weights()
        x = torch.zeros_like(y)
        ladj = y.new_zeros(y.shape[0])
        for _ in range(self.features):
            x, ladj = self._elementwise(y, self.net.from_context_term(x, term, weights), inverse=True)
        return x, ladj

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", transform={self.transform!r}"
        if self.transform == "spline":
            s += f", bins={self.bins}, bound={self.bound:g}"
        if not torch.equal(self.net.order, torch.arange(self.features, device=self.net.order.device)):
            s += f", order={self.net.order.tolist()}"
        return s
