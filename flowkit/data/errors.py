r"""The error raised for unusable data files, before any training starts."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    r"""Data that cannot be used: a missing or malformed file, images without captions,
    features that do not match the captions. The message names the file and what to do.

    Example:
        >>> raise DataError("annotations/captions_train.json not found; pass root=...")
        Traceback (most recent call last):
        ...
        flowkit.data.errors.DataError: annotations/captions_train.json not found; pass root=...
    """
