r"""Composition of transforms: chains and inverses.

Both accept any transform with the nflows signature (``t(x, context) -> (y, logabsdet)`` and
``t.inverse(y, context)``), so flowkit and nflows layers mix by duck typing.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from flowkit.transforms.base import InputError, Transform, _is_compiling, apply_transform, check_repeats, check_values, inner_calls

__all__ = ["Sequential", "Inverse"]


def _check_transform(t: object) -> nn.Module:
    if not isinstance(t, nn.Module) or not callable(getattr(t, "inverse", None)):
        raise TypeError(f"expected a transform (an nn.Module called as t(x, context) with a .inverse method), got {type(t).__name__}")
    return t


def _features(t: nn.Module) -> int | None:
    f = getattr(t, "features", None)
    return f if isinstance(f, int) else None


class Sequential(Transform):
    r"""A chain of transforms :math:`f = f_n \circ \dots \circ f_1`.

    .. math::

        \log |\det J_f(x)| = \textstyle\sum_k \log |\det J_{f_k}(x_{k-1})| ;

    the inverse runs the inverses in reverse order. The context is passed to every transform
    (unconditional flowkit layers ignore it). Log-dets accumulate in the input's dtype.

    Arguments:
        transforms: The transforms, applied in the given order in the forward direction.

    Example:
        >>> import torch
        >>> from flowkit import ActNorm, AffineCoupling, Switch
        >>> t = Sequential(ActNorm(4), AffineCoupling(4, hidden_features=16), Switch(4))
        >>> y, ladj = t(torch.randn(8, 4))
        >>> len(t), ladj.shape
        (3, torch.Size([8]))
    """

    def __init__(self, *transforms: nn.Module) -> None:
        nn.Module.__init__(self)  # features come from the children, not validated here
        if len(transforms) == 1 and isinstance(transforms[0], (list, tuple)):
            transforms = tuple(transforms[0])
        self.transforms = nn.ModuleList([_check_transform(t) for t in transforms])
        feats = [f for f in map(_features, self.transforms) if f is not None]
        self.features = feats[0] if feats else None  # type: ignore[assignment]
        self.context_features = max([getattr(t, "context_features", 0) or 0 for t in self.transforms], default=0)
        # A child that cannot tell whether it takes a context (nflows) lets the chain accept one.
        self.accepts_any_context = any(not isinstance(t, Transform) or t.accepts_any_context for t in self.transforms)

    shares_context = True  # hands the shared context on; each child decides what to do with it

    def forward(self, x: Tensor, context: Tensor | None = None, *, context_repeats: int = 1) -> tuple[Tensor, Tensor]:
        return self._checked_chain(x, context, context_repeats, inverse=False)

    def inverse(self, y: Tensor, context: Tensor | None = None, *, context_repeats: int = 1) -> tuple[Tensor, Tensor]:
        return self._checked_chain(y, context, context_repeats, inverse=True)

    def _checked_chain(self, x: Tensor, context: Tensor | None, repeats: int, inverse: bool) -> tuple[Tensor, Tensor]:
        if _is_compiling():
            return self._chain(x, context, repeats, inverse)
        name = "y" if inverse else "x"
        check_repeats(type(self).__name__, x.shape[0] if isinstance(x, Tensor) and x.dim() else 0, context, repeats)
        if not isinstance(x, Tensor):
            raise InputError(f"{type(self).__name__}: {name} must be a torch.Tensor, got {type(x).__name__}")
        check_values(type(self).__name__, x, context, name, self)
        with inner_calls():  # the children keep their shape checks, not the NaN scan
            return self._chain(x, context, repeats, inverse)

    def _chain(self, x: Tensor, context: Tensor | None, repeats: int, inverse: bool) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for t in reversed(self.transforms) if inverse else self.transforms:
            x, ladj = apply_transform(t, x, context, repeats, inverse)
            total = total + ladj
        return x, total

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.transforms)

    def __getitem__(self, index: int) -> nn.Module:
        return self.transforms[index]

    def extra_repr(self) -> str:
        return ""


class Inverse(Transform):
    r"""The inverse :math:`f^{-1}` of a transform: its forward is ``t.inverse`` and vice versa.

    Arguments:
        transform: The transform to invert.

    Example:
        >>> import torch
        >>> from flowkit import ActNorm
        >>> t = Inverse(ActNorm(3))
        >>> x, ladj = t(torch.randn(2, 3))
    """

    def __init__(self, transform: nn.Module) -> None:
        nn.Module.__init__(self)
        self.transform = _check_transform(transform)
        self.features = _features(transform)  # type: ignore[assignment]
        self.context_features = getattr(transform, "context_features", 0) or 0

    shares_context = True  # passes the shared context on to the wrapped transform

    def forward(self, x: Tensor, context: Tensor | None = None, *, context_repeats: int = 1) -> tuple[Tensor, Tensor]:
        return apply_transform(self.transform, x, context, context_repeats, inverse=True)

    def inverse(self, y: Tensor, context: Tensor | None = None, *, context_repeats: int = 1) -> tuple[Tensor, Tensor]:
        return apply_transform(self.transform, y, context, context_repeats, inverse=False)

    def extra_repr(self) -> str:
        return ""
