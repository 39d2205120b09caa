r"""Invertible transforms, one module per family (coupling, normalization, linear, permutations)."""

from flowkit.transforms.base import InputError, Transform

__all__ = ["InputError", "Transform"]
