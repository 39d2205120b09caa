r"""flowkit: conditional normalizing flows you can trust, and a complete LNFMM.

The transform protocol (same as nflows): ``y, logabsdet = t(x, context=None)`` maps data to
latent; ``x, logabsdet = t.inverse(y, context=None)`` maps back.
"""

from __future__ import annotations

__version__ = "0.1.0"

from flowkit.transforms.base import InputError, Transform

__all__ = ["InputError", "Transform", "__version__"]
