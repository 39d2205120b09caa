r"""Use flowkit layers inside nflows, and nflows layers inside flowkit.

Both libraries share the transform protocol: ``outputs, logabsdet = t(inputs, context)`` maps
data to noise (nflows' ``Flow.log_prob`` calls ``transform(inputs)``), and ``t.inverse`` maps
noise to data. The wrappers only adapt the class hierarchy and flowkit's input validation.

.. code-block:: python

    from flowkit.interop.nflows import from_nflows, to_nflows

    nflows_flow = nflows.flows.Flow(to_nflows(flowkit_layer), nflows.distributions.StandardNormal([D]))
    mixed = flowkit.Sequential(flowkit.ActNorm(D), from_nflows(nflows_maf))

Requires ``nflows`` (``pip install flowkit[nflows]``).
"""

from __future__ import annotations

import warnings

from torch import Tensor, nn

try:
    import nflows.transforms as _nft
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("flowkit.interop.nflows needs the nflows package: pip install flowkit[nflows] (or pip install nflows)") from e

from flowkit.transforms.base import Transform

__all__ = ["FlowkitAsNflows", "NflowsAsFlowkit", "to_nflows", "from_nflows"]

# nflows' LU and QR layers call the deprecated torch.triangular_solve; the warning is noise.
warnings.filterwarnings("ignore", message=r".*triangular_solve.*", category=UserWarning)


class FlowkitAsNflows(_nft.Transform):
    r"""A flowkit transform seen as an ``nflows.transforms.Transform``.

    Arguments:
        transform: The flowkit transform (any module with the flowkit/nflows protocol).

    Example:
        >>> import flowkit
        >>> import nflows.flows  # also loads nflows.transforms and nflows.distributions
        >>> import torch
        >>> t = FlowkitAsNflows(flowkit.AffineCoupling(4, hidden_features=8))
        >>> flow = nflows.flows.Flow(t, nflows.distributions.StandardNormal([4]))
        >>> flow.log_prob(torch.randn(3, 4)).shape
        torch.Size([3])
    """

    def __init__(self, transform: nn.Module) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform(inputs, context=context)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(inputs, context=context)


class NflowsAsFlowkit(Transform):
    r"""An nflows transform seen as a flowkit :class:`~flowkit.transforms.base.Transform`.

    flowkit's validation (shapes, a required context, finite values) runs before the wrapped
    transform. With ``context_features=0`` a given context is passed through unchecked.

    Arguments:
        transform: The nflows transform, on inputs of shape ``(B, features)``.
        features: The number of features D.
        context_features: The number of context features C (0: none, or not checked).

    Example:
        >>> import nflows.flows  # also loads nflows.transforms and nflows.distributions
        >>> import torch
        >>> maf = nflows.transforms.MaskedAffineAutoregressiveTransform(4, 16)
        >>> t = NflowsAsFlowkit(maf, 4)
        >>> y, ladj = t(torch.randn(3, 4))
    """

    def __init__(self, transform: nn.Module, features: int, context_features: int = 0) -> None:
        super().__init__(features, context_features)
        self.transform = transform
        self.accepts_any_context = context_features == 0  # 0 means "not checked" here

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        y, ladj = self.transform(x, context=context)
        # Some nflows layers return a Python float 0.0 or a float32 log-det.
        return y, _as_batch(ladj, x)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x, ladj = self.transform.inverse(y, context=context)
        return x, _as_batch(ladj, y)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", transform={type(self.transform).__name__}"


def _as_batch(ladj: Tensor | float, x: Tensor) -> Tensor:
    if not isinstance(ladj, Tensor):
        return x.new_full((x.shape[0],), float(ladj))
    return ladj.to(x.dtype).expand(x.shape[0]) if ladj.dim() == 0 else ladj.to(x.dtype)


def _infer_features(nt: nn.Module) -> int | None:
    for obj in (nt, getattr(nt, "autoregressive_net", None)):
        f = getattr(obj, "features", None) if obj is not None else None
        if isinstance(f, int):
            return f
    # CompositeTransform: the first layer that knows.
    for m in nt.modules():
        if m is not nt and isinstance(m, _nft.Transform):
            f = getattr(m, "features", None)
            if isinstance(f, int):
                return f
    return None


def _infer_context_features(nt: nn.Module) -> int:
    # MADE: context_layer = Linear(context_features, ...); ResidualNet / MLPs of couplings:
    # a `context_features` attribute where the net keeps one.
    for m in nt.modules():
        layer = getattr(m, "context_layer", None)
        if isinstance(layer, nn.Linear):
            return layer.in_features
        c = getattr(m, "context_features", None)
        if isinstance(c, int) and c > 0:
            return c
    return 0


def to_nflows(t: nn.Module) -> _nft.Transform:
    r"""Wraps a flowkit transform as an ``nflows.transforms.Transform``.

    The result runs inside ``nflows.flows.Flow`` and composes with nflows layers (e.g. in a
    ``CompositeTransform``); ``to_nflows(from_nflows(nt))`` returns ``nt`` itself.

    Arguments:
        t: The flowkit transform.

    Example:
        >>> import flowkit
        >>> import nflows.flows  # also loads nflows.transforms and nflows.distributions
        >>> import torch
        >>> layer = flowkit.AffineCoupling(4, context_features=2, hidden_features=8)
        >>> flow = nflows.flows.Flow(to_nflows(layer), nflows.distributions.StandardNormal([4]))
        >>> flow.log_prob(torch.randn(3, 4), context=torch.randn(3, 2)).shape
        torch.Size([3])
    """
    if isinstance(t, NflowsAsFlowkit):
        return t.transform  # type: ignore[return-value]
    if isinstance(t, _nft.Transform):
        return t
    return FlowkitAsNflows(t)


def from_nflows(nt: nn.Module, features: int | None = None, context_features: int | None = None) -> Transform:
    r"""Wraps an nflows transform as a flowkit :class:`~flowkit.transforms.base.Transform`.

    Arguments:
        nt: The nflows transform (e.g. ``PiecewiseRationalQuadraticCouplingTransform``,
            ``MaskedAffineAutoregressiveTransform``).
        features: The number of features; inferred from ``nt.features`` when omitted.
        context_features: The number of context features; inferred from MADE's context layer
            or a ``context_features`` attribute of a sub-network when omitted (0 if unknown,
            in which case a context is passed through unchecked).

    Example:
        >>> import nflows.flows  # also loads nflows.transforms and nflows.distributions
        >>> import torch
        >>> maf = nflows.transforms.MaskedAffineAutoregressiveTransform(4, 16, context_features=3)
        >>> t = from_nflows(maf)
        >>> t.features, t.context_features
        (4, 3)
    """
    if isinstance(nt, FlowkitAsNflows) and isinstance(nt.transform, Transform):
        return nt.transform
    if features is None:
        features = _infer_features(nt)
        if features is None:
            raise ValueError(f"cannot infer the number of features of {type(nt).__name__}; pass from_nflows(nt, features=D)")
    if context_features is None:
        context_features = _infer_context_features(nt)
    return NflowsAsFlowkit(nt, features, context_features)
