r"""Coupling layers: affine (RealNVP / Glow) and additive (NICE).

A coupling layer splits the features into an identity part :math:`x_a` and a transformed part
:math:`x_b`; a network of :math:`(x_a, c)` gives the parameters of an elementwise map of
:math:`x_b`. The masks are index buffers, so forward uses ``index_select`` (no ``nonzero()``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowkit.nn import MLP, check_clamp, soft_log_scale
from flowkit.transforms.base import Transform

__all__ = ["AffineCoupling", "AdditiveCoupling", "MASKS", "coupling_indices"]

#: The names accepted by ``mask=``.
MASKS: tuple[str, ...] = ("half", "alternate")


def coupling_indices(features: int, mask: str, flip: bool = False) -> tuple[Tensor, Tensor]:
    r"""Returns the (identity, transformed) feature indices of a coupling mask.

    ``"half"``: the first ``D // 2`` features are the identity part, the last ``ceil(D / 2)``
    are transformed; :class:`flowkit.Switch` moves the last ``ceil(D / 2)`` to the front, so a
    chain coupling -> Switch -> coupling transforms every feature within two steps, for odd
    ``D`` too. ``"alternate"``: odd positions are the identity part, even positions (``ceil(D /
    2)`` of them) are transformed. ``flip=True`` swaps the two roles.

    Example:
        >>> coupling_indices(5, "half")
        (tensor([0, 1]), tensor([2, 3, 4]))
    """
    if mask not in MASKS:
        raise ValueError(f"unknown mask {mask!r}; choose one of {', '.join(map(repr, MASKS))}")
    idx = torch.arange(features)
    if mask == "half":
        ident, trans = idx[: features // 2], idx[features // 2 :]
    else:
        ident, trans = idx[1::2], idx[0::2]
    if flip:
        ident, trans = trans, ident
    return ident, trans


class _Coupling(Transform):
    r"""Shared machinery: masks as index buffers and the conditioning network."""

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden_features: int,
        num_layers: int,
        mask: str,
        flip_mask: bool,
        params_per_feature: int,
    ) -> None:
        super().__init__(features, context_features)
        ident, trans = coupling_indices(features, mask, flip_mask)
        if len(trans) == 0:
            raise ValueError(f"{type(self).__name__}: mask {mask!r} leaves no feature to transform for features={features}")
        self.mask = mask
        self.flip_mask = flip_mask
        self.register_buffer("identity_idx", ident)
        self.register_buffer("transform_idx", trans)
        # y = cat(y_a, y_b)[:, inverse_idx] puts the features back in their places.
        self.register_buffer("inverse_idx", torch.argsort(torch.cat([ident, trans])))
        self.params_per_feature = params_per_feature
        self.net = MLP(
            len(ident) + context_features,
            params_per_feature * len(trans),
            hidden_features=hidden_features,
            num_layers=num_layers,
            zero_last=True,
        )

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask == "half":  # contiguous halves: slicing avoids two gathers per call
            k = self.features // 2
            a, b = x[:, :k], x[:, k:]
            return (b, a) if self.flip_mask else (a, b)
        return x.index_select(1, self.identity_idx), x.index_select(1, self.transform_idx)

    def _merge(self, a: Tensor, b: Tensor) -> Tensor:
        if self.mask == "half":
            return torch.cat([b, a] if self.flip_mask else [a, b], dim=1)
        return torch.cat([a, b], dim=1).index_select(1, self.inverse_idx)

    # The net runs on [x_a, c]; a context shared by S rows enters once per row (MLP.forward_shared).
    shares_context = True

    def _params(self, a: Tensor, context: Tensor | None) -> Tensor:
        if self.context_features == 0 or context is None:
            return self.net(a)
        if context.shape[0] != a.shape[0]:
            return self.net.forward_shared(a, context.to(a.dtype))
        return self.net(torch.cat([a, context.to(a.dtype)], dim=1))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mask={self.mask!r}" + (", flip_mask=True" if self.flip_mask else "")


class AffineCoupling(_Coupling):
    r"""Affine coupling layer (RealNVP, Glow), optionally conditional.

    With :math:`(t, r) = \mathrm{net}([x_a, c])` and :math:`\log s = \mathrm{clamp}(r)`,

    .. math::

        y_a = x_a, \quad y_b = (x_b + t) \odot e^{\log s}, \quad
        \log |\det J| = \textstyle\sum_i \log s_i .

    This is Glow's form (shift then scale), as in the official LNFMM code. The clamps (see
    :func:`flowkit.nn.soft_log_scale`): ``"atan"`` and ``"tanh"`` keep :math:`\log s` in
    :math:`(-b, b)` with ``b = clamp_bound`` (default 2) and slope 1 at 0; ``"sigmoid"`` is
    :math:`s = \sigma(r + 2)`, :math:`\log s \in (-\infty, 0)`. The last layer of the net
    starts at zero, so a fresh layer is exactly the identity for ``"atan"`` and ``"tanh"``
    (for ``"sigmoid"`` it scales :math:`x_b` by :math:`\sigma(2) \approx 0.881`).

    Arguments:
        features: The number of features D (odd D is fine: the mask splits ``D // 2`` /
            ``ceil(D / 2)``, see :func:`coupling_indices`).
        context_features: The number of context features C, concatenated to the net's input.
        hidden_features: The width of the net's hidden layers.
        num_layers: The number of hidden layers of the net (1 is ``Linear-ReLU-Linear``).
        clamp: ``"atan"``, ``"tanh"`` or ``"sigmoid"``.
        mask: ``"half"`` or ``"alternate"``.
        flip_mask: Swap the identity and transformed parts of the mask.
        clamp_bound: The bound ``b`` of the ``"atan"`` and ``"tanh"`` clamps.

    Example:
        >>> t = AffineCoupling(5, context_features=3, hidden_features=32)
        >>> x, c = torch.randn(8, 5), torch.randn(8, 3)
        >>> y, ladj = t(x, context=c)
        >>> torch.allclose(t.inverse(y, context=c)[0], x, atol=1e-6), ladj.shape
        (True, torch.Size([8]))
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden_features: int = 256,
        num_layers: int = 2,
        clamp: str = "atan",
        mask: str = "half",
        flip_mask: bool = False,
        clamp_bound: float = 2.0,
    ) -> None:
        check_clamp(clamp)
        if not clamp_bound > 0:
            raise ValueError(f"clamp_bound must be > 0, got {clamp_bound}")
        super().__init__(features, context_features, hidden_features, num_layers, mask, flip_mask, 2)
        self.clamp = clamp
        self.clamp_bound = float(clamp_bound)

    def _shift_log_scale(self, a: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        # chunk, not einops: this runs once per layer per call, and einops' parsing overhead
        # showed up in the benchmark against the peers.
        shift, raw = self._params(a, context).chunk(2, dim=1)
        return shift, soft_log_scale(raw, self.clamp, self.clamp_bound)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        a, b = self._split(x)
        shift, log_s = self._shift_log_scale(a, context)
        y_b = (b + shift) * torch.exp(log_s)
        return self._merge(a, y_b), log_s.sum(dim=1)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        a, b = self._split(y)
        shift, log_s = self._shift_log_scale(a, context)
        x_b = b * torch.exp(-log_s) - shift
        return self._merge(a, x_b), -log_s.sum(dim=1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", clamp={self.clamp!r}"


class AdditiveCoupling(_Coupling):
    r"""Additive coupling layer (NICE), optionally conditional; volume preserving.

    .. math::

        y_a = x_a, \quad y_b = x_b + \mathrm{net}([x_a, c]), \quad \log |\det J| = 0 .

    The net's last layer starts at zero, so a fresh layer is the identity.

    Arguments:
        features: The number of features D.
        context_features: The number of context features C, concatenated to the net's input.
        hidden_features: The width of the net's hidden layers.
        num_layers: The number of hidden layers of the net.
        mask: ``"half"`` or ``"alternate"``.
        flip_mask: Swap the identity and transformed parts of the mask.

    Example:
        >>> t = AdditiveCoupling(4, hidden_features=16)
        >>> y, ladj = t(torch.randn(3, 4))
        >>> ladj
        tensor([0., 0., 0.])
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden_features: int = 256,
        num_layers: int = 2,
        mask: str = "half",
        flip_mask: bool = False,
    ) -> None:
        super().__init__(features, context_features, hidden_features, num_layers, mask, flip_mask, 1)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        a, b = self._split(x)
        y_b = b + self._params(a, context)
        return self._merge(a, y_b), x.new_zeros(x.shape[0])

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        a, b = self._split(y)
        x_b = b - self._params(a, context)
        return self._merge(a, x_b), y.new_zeros(y.shape[0])
