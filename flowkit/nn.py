r"""Small neural networks and scale functions shared by the flow layers.

:class:`MLP` is the conditioning network of couplings and of :class:`ConditionalActNorm`;
:func:`soft_log_scale` turns a raw network output into a bounded log-scale (the soft clamps
documented in ``docs/layers.md``).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit._validation import check_positive_int

__all__ = ["MLP", "CLAMPS", "soft_log_scale", "check_clamp"]

#: The names accepted by ``clamp=`` of the affine layers.
CLAMPS: tuple[str, ...] = ("atan", "tanh", "sigmoid")


class MLP(nn.Sequential):
    r"""A multi-layer perceptron ``Linear-ReLU-...-Linear``.

    ``num_layers`` counts the hidden layers: ``num_layers=1`` is ``Linear-ReLU-Linear`` (the
    coupling net of the official LNFMM code), ``num_layers=2`` is
    ``Linear-ReLU-Linear-ReLU-Linear``.

    Arguments:
        in_features: The number of input features (may be 0: the output is then the bias).
        out_features: The number of output features.
        hidden_features: The width of the hidden layers.
        num_layers: The number of hidden layers (>= 1).
        zero_last: Whether the last layer starts with zero weight and bias, so that the net
            outputs 0 for any input (a fresh coupling is then the identity).

    Example:
        >>> net = MLP(3, 4, hidden_features=16, num_layers=1)
        >>> net(torch.randn(2, 3)).abs().max().item()
        0.0
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 256,
        num_layers: int = 2,
        zero_last: bool = True,
    ) -> None:
        if in_features < 0:
            raise ValueError(f"MLP in_features must be >= 0, got {in_features}")
        out_features = check_positive_int("out_features", out_features, where="MLP")
        hidden_features = check_positive_int("hidden_features", hidden_features, where="MLP")
        num_layers = check_positive_int("num_layers (hidden layers of the net)", num_layers, where="MLP")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_layers):
            layers.append(_linear(width, hidden_features))
            # In place: a Linear's backward does not need its output, and a fresh buffer per
            # activation costs page faults (~8% of eager sampling in benchmarks/flows.py).
            layers.append(nn.ReLU(inplace=True))
            width = hidden_features
        last = nn.Linear(width, out_features)
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features

    @property
    def last(self) -> nn.Linear:
        r"""The output layer (its bias is what :func:`flowkit.data_init` adjusts)."""
        return self[-1]  # type: ignore[return-value]

    def forward_shared(self, x: Tensor, shared: Tensor) -> Tensor:
        r"""Returns ``self(cat([x, repeat(shared)], dim=1))`` without repeating ``shared``.

        ``x`` is ``(B * S, K)`` and ``shared`` is ``(B, in_features - K)``; each row of
        ``shared`` belongs to ``S`` consecutive rows of ``x``. The first layer's weight is split
        in two, :math:`W [x; s] = W_x x + W_s s`, and :math:`W_s s + b` is computed once per row
        of ``shared``: sampling S values per context skips (S - 1) / S of that work.

        Example:
            >>> net = MLP(5, 2, hidden_features=8, zero_last=False)
            >>> x, s = torch.randn(6, 2), torch.randn(3, 3)
            >>> full = net(torch.cat([x, s.repeat_interleave(2, dim=0)], dim=1))
            >>> torch.allclose(net.forward_shared(x, s), full, atol=1e-6)
            True
        """
        rows, k = shared.shape[0], x.shape[1]
        if k + shared.shape[1] != self.in_features or rows == 0 or x.shape[0] % rows:
            raise ValueError(
                f"MLP.forward_shared: x {tuple(x.shape)} and shared {tuple(shared.shape)} do not fit "
                f"in_features={self.in_features} with a whole number of x rows per shared row"
            )
        first: nn.Linear = self[0]  # type: ignore[assignment]
        per_row = F.linear(shared, first.weight[:, k:], first.bias)  # (B, H), once per row
        h = F.linear(x, first.weight[:, :k])  # (B * S, H)
        h.view(rows, -1, h.shape[1]).add_(per_row.unsqueeze(1))  # in place: h is a fresh buffer
        for layer in list(self)[1:]:
            h = layer(h)
        return h

    def hidden(self, x: Tensor) -> Tensor:
        r"""Returns the activations that feed the last layer."""
        for layer in list(self)[:-1]:
            x = layer(x)
        return x


def _linear(in_features: int, out_features: int) -> nn.Linear:
    if in_features > 0:
        return nn.Linear(in_features, out_features)
    # No input (a 1-feature coupling without context): the net reduces to the last layer's
    # bias; torch would warn that initializing the empty weight is a no-op.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.bias)
    return layer


def check_clamp(clamp: str) -> str:
    r"""Returns ``clamp`` if it is a known clamp name, else raises a :class:`ValueError`."""
    if clamp not in CLAMPS:
        raise ValueError(f"unknown clamp {clamp!r}; choose one of {', '.join(map(repr, CLAMPS))}")
    return clamp


def soft_log_scale(raw: Tensor, clamp: str, bound: float = 2.0) -> Tensor:
    r"""Maps a raw network output to a log-scale with a soft clamp.

    .. math::

        \text{atan}: \ \log s = \tfrac{2b}{\pi} \arctan\!\big(\tfrac{\pi r}{2b}\big) \in (-b, b) \\
        \text{tanh}: \ \log s = b \tanh(r / b) \in (-b, b) \\
        \text{sigmoid}: \ \log s = \log \sigma(r + 2) \in (-\infty, 0)

    ``atan`` and ``tanh`` have slope 1 at 0 (so ``log s ~ r`` for small ``r``) and are bounded
    by ``b``; ``sigmoid`` is Glow's (and the official LNFMM code's) ``scale = sigmoid(r + 2)``,
    bounded above by 1 and computed with ``logsigmoid``, so it is finite (no NaN) for any finite
    ``r``. Note that ``sigmoid`` at ``r = 0`` is ``sigmoid(2) ~ 0.881``, not 1.

    Arguments:
        raw: The raw output ``r``.
        clamp: ``"atan"``, ``"tanh"`` or ``"sigmoid"``.
        bound: The bound ``b`` of ``atan`` and ``tanh``.

    Example:
        >>> soft_log_scale(torch.tensor([0.0, 1e4]), "tanh", 2.0)
        tensor([0., 2.])
    """
    if clamp == "atan":
        c = math.pi / (2.0 * bound)
        return torch.atan(raw * c) / c
    if clamp == "tanh":
        return bound * torch.tanh(raw / bound)
    if clamp == "sigmoid":
        return F.logsigmoid(raw + 2.0)
    raise ValueError(f"unknown clamp {clamp!r}; choose one of {', '.join(map(repr, CLAMPS))}")
