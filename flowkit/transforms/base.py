r"""The transform protocol shared by every flowkit layer.

A transform maps data to latent (the "normalizing" direction) and reports the log-absolute
determinant of its Jacobian:

.. code-block:: python

    y, logabsdet = t(x, context=None)          # x: (B, D), context: (B, C) or None
    x, logabsdet = t.inverse(y, context=None)  # logabsdet: (B,), in x's dtype

This is nflows' signature, so flowkit and nflows transforms compose by duck typing.

flowkit transforms also take ``context_repeats=S``: the context then has ``B`` rows and each
row serves ``S`` consecutive rows of ``x`` (``x`` is ``(B * S, D)``, ordered ``(b s)``). This
is what :meth:`flowkit.Flow.sample` uses: layers that set :attr:`Transform.shares_context`
compute from each context row once instead of ``S`` times; the others see the context
repeated, so every layer works either way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from flowkit._validation import check_positive_int

__all__ = ["Transform", "InputError", "repeat_context", "check_values"]


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


def param_dtype(module: nn.Module) -> torch.dtype | None:
    r"""The dtype of a module's first floating-point parameter (None without one), cached.

    The cache lives in the module's ``__dict__`` and :meth:`Transform._apply` (``.double()``,
    ``.to(...)``) clears it, so the per-call cost is one dict look-up.
    """
    cached = module.__dict__.get("_flowkit_param_dtype", _UNSET)
    if cached is _UNSET:
        cached = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
        module.__dict__["_flowkit_param_dtype"] = cached
    return cached


_UNSET = object()


def check_values(owner: str, x: Tensor, context: Tensor | None, name: str = "x", module: nn.Module | None = None) -> None:
    r"""The once-per-chain input checks: a floating dtype that matches the layer's parameters,
    a non-empty batch, no context for an unconditional layer, and finite values.

    Skipped while ``torch.compile`` traces and inside a chain that already ran them.
    """
    if _is_compiling() or _inner():
        return
    if not x.is_floating_point():
        raise InputError(f"{owner}: {name} must be a floating-point tensor, got {x.dtype}; convert it with {name}.float()")
    if module is not None:
        dtype = param_dtype(module)
        if dtype is not None and x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            raise InputError(
                f"{owner}: {name} is {x.dtype} but the layer's parameters are {dtype}; convert the input "
                f"({name}.to({dtype})) or the layer (layer.to({x.dtype}))"
            )
        if context is not None and not (getattr(module, "context_features", 0) or getattr(module, "accepts_any_context", False)):
            raise InputError(
                f"{owner} is unconditional (context_features=0) but got a context, which it would ignore; "
                f"pass context=None, or build the layer with context_features={context.shape[-1] if context.dim() else '?'}"
            )
    if x.dim() >= 1 and x.shape[0] == 0:
        raise InputError(f"{owner}: {name} is an empty batch (0 rows); pass at least one row")
    check_finite(owner, x, context, name)


def check_finite(owner: str, x: Tensor, context: Tensor | None, name: str = "x") -> None:
    r"""Raises :class:`InputError` when ``x`` or ``context`` holds NaN or inf."""
    if _is_compiling() or _inner():
        return
    if not torch.isfinite(x).all():
        raise InputError(
            f"{owner}: {name} contains NaN or inf; check the data or the upstream layer (a diverging loss often shows up here first)"
        )
    if context is not None and not torch.isfinite(context).all():
        raise InputError(f"{owner}: context contains NaN or inf")


def repeat_context(context: Tensor, repeats: int) -> Tensor:
    r"""Repeats each context row ``repeats`` times, copies next to each other: ``(B, C) -> (B * repeats, C)``.

    Example:
        >>> repeat_context(torch.tensor([[1.0], [2.0]]), 2).flatten().tolist()
        [1.0, 1.0, 2.0, 2.0]
    """
    return context if repeats == 1 else context.repeat_interleave(repeats, dim=0)


def check_repeats(owner: str, rows: int, context: Tensor | None, repeats: int) -> None:
    r"""Raises :class:`InputError` unless ``repeats`` is a positive int that splits ``rows``."""
    repeats = check_positive_int("context_repeats", repeats, where=owner, error=InputError)
    if repeats > 1 and isinstance(context, Tensor) and context.dim() >= 1 and rows != context.shape[0] * repeats:
        raise InputError(
            f"{owner}: with context_repeats={repeats}, x needs {repeats} rows per context row "
            f"({context.shape[0]} x {repeats} = {context.shape[0] * repeats}), got {rows}"
        )


def apply_transform(t: nn.Module, x: Tensor, context: Tensor | None, repeats: int = 1, inverse: bool = False) -> tuple[Tensor, Tensor]:
    r"""Calls ``t`` (or ``t.inverse``) on ``x`` with a context shared by ``repeats`` rows each.

    flowkit transforms get ``context_repeats``; any other transform (nflows, a user's module
    with the protocol) gets the context repeated to one row per row of ``x``.
    """
    if repeats == 1 or context is None:
        return t.inverse(x, context) if inverse else t(x, context)
    if isinstance(t, Transform):
        return t.inverse(x, context, context_repeats=repeats) if inverse else t(x, context, context_repeats=repeats)
    context = repeat_context(context, repeats)
    return t.inverse(x, context) if inverse else t(x, context)


class Transform(nn.Module):
    r"""Base class of invertible transforms with a tractable log-determinant.

    Subclasses implement :meth:`_forward` and :meth:`_inverse`; the public :meth:`forward` and
    :meth:`inverse` validate the input first, so every layer raises the same clear errors.

    A subclass that sets ``shares_context = True`` promises that its ``_forward`` and
    ``_inverse`` also accept a context with fewer rows than ``x``: ``B`` rows, each shared by
    ``x.shape[0] // B`` consecutive rows of ``x`` (see ``context_repeats``). The couplings and
    :class:`~flowkit.ConditionalActNorm` do, and then run their context networks once per
    context row; :func:`flowkit.testing.check_shared_context` checks a layer's promise.

    Arguments:
        features: The number of features D of the input.
        context_features: The number of context features C; 0 for an unconditional transform.
    """

    def __init__(self, features: int, context_features: int = 0) -> None:
        super().__init__()
        features = check_positive_int("features", features)
        if not isinstance(context_features, int) or context_features < 0:
            raise ValueError(f"context_features must be a non-negative int, got {context_features!r}")
        self.features = features
        self.context_features = context_features

    #: Whether ``_forward`` / ``_inverse`` accept a context of ``B`` rows for ``x`` of
    #: ``B * S`` rows (see the class docstring).
    shares_context: bool = False

    #: Whether a context is accepted although ``context_features == 0`` (a wrapper that cannot
    #: tell, e.g. of an nflows transform); otherwise an unconditional layer refuses a context.
    accepts_any_context: bool = False

    # -- validation -------------------------------------------------------------------------
    def _check(self, x: Tensor, context: Tensor | None, name: str = "x", repeats: int = 1) -> None:
        if _is_compiling():
            return
        if not isinstance(x, Tensor):
            raise InputError(f"{type(self).__name__}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[-1] != self.features:
            raise InputError(
                f"{type(self).__name__}: expected {name} of shape (batch, {self.features}), got "
                f"{tuple(x.shape)}; reshape the input or build the layer with features={x.shape[-1] if x.dim() else '?'}"
            )
        check_repeats(type(self).__name__, x.shape[0], context, repeats)
        if self.context_features > 0:
            if context is None:
                raise InputError(
                    f"{type(self).__name__} is conditional (context_features={self.context_features}) and needs "
                    f"context=<tensor of shape (batch, {self.context_features})>"
                )
            rows = x.shape[0] // repeats
            if context.dim() != 2 or context.shape != (rows, self.context_features):
                per = f" (one row per {repeats} rows of {name})" if repeats > 1 else ""
                raise InputError(
                    f"{type(self).__name__}: expected context of shape ({rows}, {self.context_features}){per}, got {tuple(context.shape)}"
                )
        check_values(type(self).__name__, x, context, name, self)

    # -- protocol ---------------------------------------------------------------------------
    def forward(self, x: Tensor, context: Tensor | None = None, *, context_repeats: int = 1) -> tuple[Tensor, Tensor]:
        r"""Maps data to latent; returns ``(y, logabsdet)`` with ``logabsdet`` of shape (B,).

        ``context_repeats=S``: each context row serves ``S`` consecutive rows of ``x``.
        """
        context = self._prepare(x, context, "x", context_repeats)
        return self._forward(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None, *, context_repeats: int = 1) -> tuple[Tensor, Tensor]:
        r"""Maps latent to data; returns ``(x, logabsdet)`` of the inverse map."""
        context = self._prepare(y, context, "y", context_repeats)
        return self._inverse(y, context)

    def _prepare(self, x: Tensor, context: Tensor | None, name: str, repeats: int) -> Tensor | None:
        # Validates, then hands the layer the context in the form it accepts.
        self._check(x, context, name, repeats)
        if repeats != 1 and context is not None and not self.shares_context:
            context = repeat_context(context, repeats)
        return context

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to()/.double()/.half() change the parameters' dtype: forget the cached one.
        self.__dict__.pop("_flowkit_param_dtype", None)
        return super()._apply(fn, recurse)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:  # abstract
        raise NotImplementedError

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:  # abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        s = f"features={self.features}"
        if self.context_features:
            s += f", context_features={self.context_features}"
        return s
