r"""flowkit: conditional normalizing flows you can trust, and a complete LNFMM.

The transform protocol (same as nflows): ``y, logabsdet = t(x, context=None)`` maps data to
latent; ``x, logabsdet = t.inverse(y, context=None)`` maps back.
"""

from __future__ import annotations

__version__ = "0.1.0"

from flowkit import transforms
from flowkit.builders import glow, maf, nsf, realnvp
from flowkit.distributions import BaseDistribution, DiagonalNormal, Flow, GaussianMixture, StandardNormal
from flowkit.transforms import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ConditionalActNorm,
    ElementwiseScale,
    InputError,
    Inverse,
    Invertible1x1,
    MaskedAutoregressive,
    Permutation,
    RationalQuadraticCoupling,
    Reverse,
    Sequential,
    Switch,
    Transform,
    data_init,
)

__all__ = [
    "__version__",
    *transforms.__all__,
    "StandardNormal",
    "DiagonalNormal",
    "GaussianMixture",
    "BaseDistribution",
    "Flow",
    "glow",
    "realnvp",
    "nsf",
    "maf",
]
