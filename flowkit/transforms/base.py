r"""The transform protocol shared by every flowkit layer.

A transform maps data to latent (the "normalizing" direction) and reports the log-absolute
determinant of its Jacobian:

.. code-block:: python

    y, logabsdet = t(x, context=None)          # x: (B, D), context: (B, C) or None
    x, logabsdet = t.inverse(y, context=None)  # logabsdet: (B,), in x's dtype

This is nflows' signature, so flowkit and nflows transforms compose by duck typing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["Transform", "InputError"]


class InputError(ValueError):
    r"""Raised for input of the wrong shape, a missing context, or non-finite values."""


def _is_compiling() -> bool:
    # Validation branches on data (NaN checks); skip it while dynamo traces so that a
    # compiled log_prob stays one graph.
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # torch < 2.3
        return False


_validation = threading.local()


@contextmanager
def inner_calls() -> Iterator[None]:
    r"""Marks calls of sub-transforms of a chain that has already checked its input for NaN/inf.

    The finite-value check is a reduction over the whole batch; running it in each of a deep
    chain's layers costs ~10% of a train step and ~30% of sampling, so a chain checks once
    and its children keep only the (cheap) shape checks.
    """
    previous = getattr(_validation, "inner", False)
    _validation.inner = True
    try:
        yield
    finally:
        _validation.inner = previous


def _inner() -> bool:
    return getattr(_validation, "inner", False)


def check_finite(owner: str, x: Tensor, context: Tensor | None, name: str = "x") -> None:
    r"""Raises :class:`InputError` when ``x`` or ``context`` holds NaN or inf."""
    if _is_compiling() or _inner():
        return
    if not torch.isfinite(x).all():
        raise InputError(
            f"{owner}: {name} contains NaN or inf; check the data or the upstream layer "
            f"(a diverging loss often shows up here first)"
        )
    if context is not None and not torch.isfinite(context).all():
        raise InputError(f"{owner}: context contains NaN or inf")


class Transform(nn.Module):
    r"""Base class of invertible transforms with a tractable log-determinant.

    Subclasses implement :meth:`_forward` and :meth:`_inverse`; the public :meth:`forward` and
    :meth:`inverse` validate the input first, so every layer raises the same clear errors.

    Arguments:
        features: The number of features D of the input.
        context_features: The number of context features C; 0 for an unconditional transform.
    """

    def __init__(self, features: int, context_features: int = 0) -> None:
        super().__init__()
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive int, got {features!r}")
        if not isinstance(context_features, int) or context_features < 0:
            raise ValueError(f"context_features must be a non-negative int, got {context_features!r}")
        self.features = features
        self.context_features = context_features

    # -- validation -------------------------------------------------------------------------
    def _check(self, x: Tensor, context: Tensor | None, name: str = "x") -> None:
        if _is_compiling():
            return
        if not isinstance(x, Tensor):
            raise InputError(f"{type(self).__name__}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[-1] != self.features:
            raise InputError(
                f"{type(self).__name__}: expected {name} of shape (batch, {self.features}), got "
                f"{tuple(x.shape)}; reshape the input or build the layer with features={x.shape[-1] if x.dim() else '?'}"
            )
        if self.context_features > 0:
            if context is None:
                raise InputError(
                    f"{type(self).__name__} is conditional (context_features={self.context_features}) and needs "
                    f"context=<tensor of shape (batch, {self.context_features})>"
                )
            if context.dim() != 2 or context.shape != (x.shape[0], self.context_features):
                raise InputError(
                    f"{type(self).__name__}: expected context of shape ({x.shape[0]}, {self.context_features}), "
                    f"got {tuple(context.shape)}"
                )
        check_finite(type(self).__name__, x, context if self.context_features > 0 else None, name)

    # -- protocol ---------------------------------------------------------------------------
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""Maps data to latent; returns ``(y, logabsdet)`` with ``logabsdet`` of shape (B,)."""
        self._check(x, context)
        return self._forward(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""Maps latent to data; returns ``(x, logabsdet)`` of the inverse map."""
        self._check(y, context, name="y")
        return self._inverse(y, context)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:  # abstract
        raise NotImplementedError

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:  # abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        s = f"features={self.features}"
        if self.context_features:
            s += f", context_features={self.context_features}"
        return s
