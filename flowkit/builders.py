r"""Ready-made flows: :func:`glow`, :func:`realnvp`, :func:`nsf` and :func:`maf`, each a :class:`Flow`
(on a Gaussian base unless another base is given)."""

from __future__ import annotations

from torch import nn

from flowkit._validation import check_positive_int
from flowkit.distributions import Flow, StandardNormal
from flowkit.nn import check_clamp
from flowkit.transforms.autoregressive import AUTOREGRESSIVE_TRANSFORMS, MaskedAutoregressive
from flowkit.transforms.composition import Sequential
from flowkit.transforms.coupling import MASKS, AffineCoupling
from flowkit.transforms.linear import Invertible1x1
from flowkit.transforms.normalization import ActNorm, ConditionalActNorm
from flowkit.transforms.permutations import Switch
from flowkit.transforms.spline import RationalQuadraticCoupling, check_spline_args

__all__ = ["glow", "realnvp", "nsf", "maf"]


def _check_sizes(features: int, context_features: int, num_layers: int) -> None:
    if not isinstance(features, int) or features < 2:
        raise ValueError(f"features must be an int >= 2 for a coupling flow, got {features!r}")
    if not isinstance(context_features, int) or context_features < 0:
        raise ValueError(f"context_features must be a non-negative int, got {context_features!r}")
    num_layers = check_positive_int("num_layers (flow steps)", num_layers)


def glow(
    features: int,
    context_features: int = 0,
    num_layers: int = 8,
    hidden_features: int = 256,
    actnorm: bool = True,
    conv1x1: bool = True,
    clamp: str = "atan",
    base_std: float = 1.0,
    net_layers: int = 2,
    actnorm_scale: str = "exp",
    seed: int | None = None,
) -> Flow:
    r"""A Glow-style (optionally conditional) flow on vectors.

    Each of the ``num_layers`` steps is ``(Conditional)ActNorm -> AffineCoupling ->
    [Invertible1x1] -> Switch``; the ActNorm is conditional when ``context_features > 0``
    (the official LNFMM f_v / f_t step, with ``conv1x1=False``, ``clamp="sigmoid"``,
    ``actnorm_scale="sigmoid"``, ``net_layers=1`` and ``base_std=0.25``).

    Arguments:
        features: The number of features D (>= 2).
        context_features: The number of context features C (0: unconditional).
        num_layers: The number of flow steps.
        hidden_features: The width of the coupling (and conditional ActNorm) nets.
        actnorm: Whether each step starts with a (Conditional)ActNorm.
        conv1x1: Whether each step has an :class:`Invertible1x1`.
        clamp: The coupling scale clamp, ``"atan"``, ``"tanh"`` or ``"sigmoid"``.
        base_std: The standard deviation of the Gaussian base.
        net_layers: The number of hidden layers of each net.
        actnorm_scale: ``"exp"`` or ``"sigmoid"`` for :class:`ConditionalActNorm`.
        seed: Seeds the initial rotations of the 1x1 layers (step k uses ``seed + k``).

    Example:
        >>> import torch
        >>> flow = glow(6, context_features=4, num_layers=2, hidden_features=32)
        >>> flow.log_prob(torch.randn(3, 6), context=torch.randn(3, 4)).shape
        torch.Size([3])
    """
    _check_sizes(features, context_features, num_layers)
    check_clamp(clamp)
    steps: list[nn.Module] = []
    for k in range(num_layers):
        if actnorm:
            if context_features > 0:
                steps.append(ConditionalActNorm(features, context_features, hidden_features, net_layers, scale=actnorm_scale))
            else:
                steps.append(ActNorm(features))
        steps.append(AffineCoupling(features, context_features, hidden_features, net_layers, clamp=clamp))
        if conv1x1:
            steps.append(Invertible1x1(features, seed=None if seed is None else seed + k))
        steps.append(Switch(features))
    return Flow(Sequential(*steps), StandardNormal(features, std=base_std))


def realnvp(
    features: int,
    context_features: int = 0,
    num_layers: int = 8,
    hidden_features: int = 256,
    clamp: str = "atan",
    mask: str = "half",
    base_std: float = 1.0,
    net_layers: int = 2,
    actnorm: bool = False,
) -> Flow:
    r"""A RealNVP-style (optionally conditional) flow of affine couplings.

    With ``mask="half"`` each step is ``AffineCoupling -> Switch``; with ``mask="alternate"``
    the couplings alternate between the even/odd masks (no permutation layer).
    ``actnorm=True`` puts an :class:`ActNorm` before each coupling.

    Arguments:
        features: The number of features D (>= 2).
        context_features: The number of context features C (0: unconditional).
        num_layers: The number of couplings.
        hidden_features: The width of the coupling nets.
        clamp: ``"atan"``, ``"tanh"`` or ``"sigmoid"``.
        mask: ``"half"`` or ``"alternate"``.
        base_std: The standard deviation of the Gaussian base.
        net_layers: The number of hidden layers of each coupling net.
        actnorm: Whether each step starts with an :class:`ActNorm`.

    Example:
        >>> flow = realnvp(5, num_layers=4, hidden_features=32)
        >>> flow.sample(7).shape
        torch.Size([7, 5])
    """
    _check_sizes(features, context_features, num_layers)
    check_clamp(clamp)
    if mask not in MASKS:
        raise ValueError(f"unknown mask {mask!r}; choose one of {', '.join(map(repr, MASKS))}")
    steps: list[nn.Module] = []
    for k in range(num_layers):
        if actnorm:
            steps.append(ActNorm(features))
        if mask == "half":
            steps.append(AffineCoupling(features, context_features, hidden_features, net_layers, clamp=clamp))
            steps.append(Switch(features))
        else:
            steps.append(
                AffineCoupling(
                    features,
                    context_features,
                    hidden_features,
                    net_layers,
                    clamp=clamp,
                    mask="alternate",
                    flip_mask=k % 2 == 1,
                )
            )
    return Flow(Sequential(*steps), StandardNormal(features, std=base_std))


def _base(features: int, base: nn.Module | None, base_std: float) -> nn.Module:
    if base is None:
        return StandardNormal(features, std=base_std)
    if getattr(base, "features", features) != features:
        raise ValueError(f"base has {base.features} features, the flow {features}")
    return base


def nsf(
    features: int,
    context_features: int = 0,
    num_layers: int = 4,
    hidden_features: int = 128,
    bins: int = 8,
    bound: float = 5.0,
    mask: str = "half",
    net_layers: int = 2,
    base: nn.Module | None = None,
    base_std: float = 1.0,
) -> Flow:
    r"""A neural spline flow (Durkan et al., 2019) of rational-quadratic spline couplings.

    With ``mask="half"`` each step is ``RationalQuadraticCoupling -> Switch``; with
    ``mask="alternate"`` the couplings alternate between the even/odd masks. The splines act
    on :math:`[-B, B]` (``bound``) and are the identity outside, so standardize the data (or
    put an :class:`ActNorm` in front) to keep it mostly inside.

    Arguments:
        features: The number of features D (>= 2).
        context_features: The number of context features C (0: unconditional).
        num_layers: The number of spline couplings.
        hidden_features: The width of the coupling nets.
        bins: The number of spline bins K.
        bound: The half-width :math:`B` of the splines' interval.
        mask: ``"half"`` or ``"alternate"``.
        net_layers: The number of hidden layers of each coupling net.
        base: The base distribution (default :class:`StandardNormal` with ``base_std``); e.g.
            a conditional :class:`DiagonalNormal` or :class:`GaussianMixture`.
        base_std: The standard deviation of the default Gaussian base.

    Example:
        >>> import torch
        >>> flow = nsf(3, context_features=2, num_layers=2, hidden_features=16)
        >>> flow.sample(5, context=torch.randn(4, 2)).shape
        torch.Size([4, 5, 3])
    """
    _check_sizes(features, context_features, num_layers)
    check_spline_args(bins, bound)
    if mask not in MASKS:
        raise ValueError(f"unknown mask {mask!r}; choose one of {', '.join(map(repr, MASKS))}")
    steps: list[nn.Module] = []
    for k in range(num_layers):
        if mask == "half":
            steps.append(RationalQuadraticCoupling(features, context_features, hidden_features, net_layers, bins, bound))
            steps.append(Switch(features))
        else:
            steps.append(
                RationalQuadraticCoupling(
                    features,
                    context_features,
                    hidden_features,
                    net_layers,
                    bins,
                    bound,
                    mask="alternate",
                    flip_mask=k % 2 == 1,
                )
            )
    return Flow(Sequential(*steps), _base(features, base, base_std))


def maf(
    features: int,
    context_features: int = 0,
    num_layers: int = 4,
    hidden_features: int = 128,
    transform: str = "affine",
    bins: int = 8,
    bound: float = 5.0,
    net_layers: int = 2,
    base: nn.Module | None = None,
    base_std: float = 1.0,
) -> Flow:
    r"""A masked autoregressive flow (Papamakarios et al., 2017) of :class:`MaskedAutoregressive` layers.

    Layer ``k`` uses the ordering ``0, ..., D - 1`` for even ``k`` and its reverse for odd
    ``k`` (a buffer of each layer, no permutation layers). ``log_prob`` takes one MADE pass per
    layer, ``sample`` D passes per layer; for the opposite trade-off (the IAF) wrap the
    transform: ``Flow(Inverse(flow.transform), flow.base)``.

    Arguments:
        features: The number of features D (>= 1).
        context_features: The number of context features C (0: unconditional).
        num_layers: The number of autoregressive layers.
        hidden_features: The width of the MADE nets.
        transform: ``"affine"`` (MAF) or ``"spline"`` (rational-quadratic, as in NSF's
            autoregressive variant).
        bins: The number of spline bins (``transform="spline"``).
        bound: The half-width of the splines' interval.
        net_layers: The number of hidden layers of each MADE.
        base: The base distribution (default :class:`StandardNormal` with ``base_std``).
        base_std: The standard deviation of the default Gaussian base.

    Example:
        >>> import torch
        >>> flow = maf(4, num_layers=2, hidden_features=16, transform="spline")
        >>> flow.log_prob(torch.randn(3, 4)).shape
        torch.Size([3])
    """
    features = check_positive_int("features", features)
    _check_sizes(max(features, 2), context_features, num_layers)
    if transform not in AUTOREGRESSIVE_TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; choose one of {', '.join(map(repr, AUTOREGRESSIVE_TRANSFORMS))}")
    steps: list[nn.Module] = []
    for k in range(num_layers):
        order = range(features) if k % 2 == 0 else range(features - 1, -1, -1)
        steps.append(
            MaskedAutoregressive(features, context_features, hidden_features, net_layers, transform, bins, bound, order=list(order))
        )
    return Flow(Sequential(*steps), _base(features, base, base_std))
