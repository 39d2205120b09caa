r"""LNFMM: latent normalizing flows for many-to-many cross-domain mappings (ICLR 2020).

.. code-block:: python

    from flowkit.models import LNFMM, LNFMMConfig

    model = LNFMM(LNFMMConfig.small(vocab_size=len(vocab)))
    out = model(images, captions)          # {"loss", "kl_t", "kl_v", "logdet_fs", "align", "rec_t", "rec_v"}
    ids = model.sample_captions(images, num_samples=100)   # (B, 100, L)
"""

from flowkit.models.lnfmm.config import LNFMMConfig
from flowkit.models.lnfmm.model import LNFMM, LNFMMInputError
from flowkit.models.lnfmm.sampling import beam_search, greedy_decode, ids_to_strings, sample_decode
from flowkit.models.lnfmm.step import LNFMMStep, adapt_config

__all__ = [
    "LNFMM",
    "LNFMMConfig",
    "LNFMMInputError",
    "LNFMMStep",
    "adapt_config",
    "beam_search",
    "greedy_decode",
    "ids_to_strings",
    "sample_decode",
]
