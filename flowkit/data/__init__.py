r"""Data for flowkit: the embedded shapes dataset, COCO-format files, vocabulary and judges.

The training engine needs one call::

    from flowkit.data import load_caption_data
    data = load_caption_data("shapes", sizes={"train": 2000, "val": 200, "test": 200})
    data = load_caption_data("coco", root="path/to/coco", split_scheme="karpathy")

Submodules: :mod:`flowkit.data.shapes` (dataset, grammar, COCO export),
:mod:`flowkit.data.vocab` (tokenizer, vocabulary), :mod:`flowkit.data.coco` (COCO files,
features), :mod:`flowkit.data.judges` (caption accuracy / coverage, judges of images),
:mod:`flowkit.data.classifier` (the attribute classifier those judges read images with).
"""

from __future__ import annotations

from flowkit.data.errors import DataError
from flowkit.data.loading import CaptionData, ImageDataset, PairDataset, load_caption_data
from flowkit.data.vocab import Vocabulary, tokenize

__all__ = [
    "CaptionData",
    "DataError",
    "ImageDataset",
    "PairDataset",
    "Vocabulary",
    "load_caption_data",
    "tokenize",
]
