r"""Invertible transforms, one module per family (coupling, spline, autoregressive, normalization,
linear, permutations)."""

from flowkit.transforms.autoregressive import MaskedAutoregressive
from flowkit.transforms.base import InputError, Transform
from flowkit.transforms.composition import Inverse, Sequential
from flowkit.transforms.coupling import AdditiveCoupling, AffineCoupling
from flowkit.transforms.linear import Invertible1x1
from flowkit.transforms.normalization import ActNorm, ConditionalActNorm, ElementwiseScale, data_init
from flowkit.transforms.permutations import Permutation, Reverse, Switch
from flowkit.transforms.spline import RationalQuadraticCoupling

__all__ = [
    "InputError",
    "Transform",
    "AffineCoupling",
    "AdditiveCoupling",
    "RationalQuadraticCoupling",
    "MaskedAutoregressive",
    "ActNorm",
    "ConditionalActNorm",
    "ElementwiseScale",
    "Invertible1x1",
    "Permutation",
    "Reverse",
    "Switch",
    "Sequential",
    "Inverse",
    "data_init",
]
