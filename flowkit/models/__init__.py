r"""Models built on flowkit's flows: :class:`LNFMM` and its :class:`LNFMMConfig`."""

from flowkit.models.lnfmm import LNFMM, LNFMMConfig, LNFMMInputError, ids_to_strings

__all__ = ["LNFMM", "LNFMMConfig", "LNFMMInputError", "ids_to_strings"]
