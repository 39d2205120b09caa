r"""Evaluation metrics of the paper's Tables 1, 2, 3 and 6.

Captions are plain strings keyed by image id; scores use pycocoevalcap's keys
(``Bleu_1`` .. ``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``, ``SPICE``).

* :func:`caption_scores`, :func:`oracle_scores`: accuracy (Table 1 is the oracle).
* :func:`consensus_rerank`: order candidates by consensus CIDEr-D (Table 2 scores the top 1).
* :func:`diversity_scores`: Unique, Novel, mBLEU-4, Div-1, Div-2 (Table 3).
* :func:`inception_score`, :func:`ivom`, :func:`lpips_diversity` (Table 6) and
  :func:`pixel_diversity`, a weight-free pixel-space stand-in that is not LPIPS.

:func:`scoring_session` shares one METEOR process between calls. pycocoevalcap, Java and
lpips are needed only when the matching function runs. Definitions: ``docs/evaluation.md``.
"""

from __future__ import annotations

from flowkit.metrics.captions import (
    METRIC_KEYS,
    caption_scores,
    oracle_scores,
    ptb_tokenize,
    scoring_session,
    spice_available,
)
from flowkit.metrics.diversity import distinct_ngrams, diversity_scores
from flowkit.metrics.images import inception_score, ivom, lpips_diversity, pixel_diversity
from flowkit.metrics.rerank import consensus_rerank, nearest_neighbors, pairwise_cider

__all__ = [
    "METRIC_KEYS",
    "caption_scores",
    "consensus_rerank",
    "distinct_ngrams",
    "diversity_scores",
    "inception_score",
    "ivom",
    "lpips_diversity",
    "nearest_neighbors",
    "oracle_scores",
    "pairwise_cider",
    "pixel_diversity",
    "ptb_tokenize",
    "scoring_session",
    "spice_available",
]
