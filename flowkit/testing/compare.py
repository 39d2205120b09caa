r"""One numerical comparison for every check: where two tensors differ most, and by how much.

:func:`compare` measures ``got`` against ``expected`` entry by entry with the tolerance
``atol + rtol * |expected|`` and returns a :class:`Comparison`; the checks of
:mod:`flowkit.testing.checks` build their messages from it. NaN never passes.

Example:
    >>> c = compare(torch.tensor([1.0, 2.5]), torch.tensor([1.0, 2.0]), atol=0.1, what="y")
    >>> c.ok, c.worst_index, c.max_abs_err
    (False, (1,), 0.5)
    >>> c.message()
    'worst sample 1: expected 2, got 2.5; max abs difference 5.000e-01 > atol=0.1'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Comparison", "compare", "worst_of", "format_value"]


def format_value(v: Any) -> str:
    r"""A short text of a value: 12 significant digits, at most 8 entries of a tensor.

    Example:
        >>> format_value(torch.tensor(0.5)), format_value(torch.arange(3.0))
        ('0.5', '[0.0, 1.0, 2.0]')
    """
    if isinstance(v, Tensor):
        v = v.detach().cpu()
        if v.numel() == 1:
            return f"{float(v):.12g}"
        return str([round(float(a), 10) for a in v.reshape(-1)[:8]]) + (" ..." if v.numel() > 8 else "")
    if isinstance(v, float):
        return f"{v:.12g}"
    return repr(v)


@dataclass(frozen=True)
class Comparison:
    r"""The outcome of :func:`compare`; truthy when every entry is within tolerance.

    Arguments:
        what: What was compared (free text, used by the checks' messages).
        ok: Whether every entry passed (False on a shape mismatch or any NaN).
        max_abs_err: The largest ``|got - expected|`` (inf when an entry is NaN or the shapes differ).
        max_rel_err: The largest ``|got - expected| / |expected|`` (inf where expected is 0 and got is not).
        worst_index: The index of the worst entry (the one furthest beyond its tolerance, else
            the largest difference); ``()`` on a shape mismatch.
        expected: The expected value at ``worst_index``, or None.
        got: The value found there, or None.
        atol: The absolute tolerance.
        rtol: The relative tolerance.
        got_shape: The shape of ``got``.
        expected_shape: The shape of ``expected``.
    """

    what: str
    ok: bool
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple[int, ...]
    expected: Tensor | None
    got: Tensor | None
    atol: float
    rtol: float
    got_shape: tuple[int, ...]
    expected_shape: tuple[int, ...]

    def __bool__(self) -> bool:
        return self.ok

    @property
    def shape_mismatch(self) -> bool:
        r"""Whether ``got`` and ``expected`` have different shapes (nothing was compared)."""
        return self.got_shape != self.expected_shape

    @property
    def worst_sample(self) -> int | None:
        r"""The batch index (first index) of the worst entry, or None."""
        return self.worst_index[0] if self.worst_index else None

    def where(self) -> str:
        r"""``"sample i"`` or ``"sample i, feature j"``: the place of the worst entry."""
        idx = self.worst_index
        return f"sample {idx[0]}" + (f", feature {idx[1]}" if len(idx) > 1 else "") if idx else "nowhere"

    def tolerance(self) -> str:
        r"""The tolerance as text: ``atol=...`` and, when nonzero, ``+ rtol=...*|expected|``."""
        return f"atol={self.atol:g}" + (f" + rtol={self.rtol:g}*|expected|" if self.rtol else "")

    def message(self) -> str:
        r"""The worst entry, its values and the error against the tolerance, in one line."""
        if self.shape_mismatch:
            return f"shape {self.got_shape}, expected {self.expected_shape}"
        cmp = "<=" if self.ok else ">"
        return (
            f"worst {self.where()}: expected {format_value(self.expected)}, got {format_value(self.got)}; "
            f"max abs difference {self.max_abs_err:.3e} {cmp} {self.tolerance()}"
        )


def compare(got: Tensor, expected: Tensor, atol: float, rtol: float = 0.0, what: str = "") -> Comparison:
    r"""Compares ``got`` with ``expected`` entry by entry: ``|got - expected| <= atol + rtol * |expected|``.

    ``got`` is converted to ``expected``'s dtype. Shapes must match, else the comparison fails
    with ``max_abs_err = inf``.

    Arguments:
        got: The values a layer produced.
        expected: The reference values.
        atol: The absolute tolerance.
        rtol: The relative tolerance.
        what: A label for messages.

    Example:
        >>> bool(compare(torch.ones(2, 3), torch.ones(2, 3), atol=0.0))
        True
    """
    gs, es = tuple(got.shape), tuple(expected.shape)
    if gs != es:
        inf = float("inf")
        return Comparison(what, False, inf, inf, (), None, None, float(atol), float(rtol), gs, es)
    if got.numel() == 0:
        return Comparison(what, True, 0.0, 0.0, (), None, None, float(atol), float(rtol), gs, es)
    got, expected = got.detach().to(expected.dtype), expected.detach()
    diff = (got - expected).abs()
    excess = diff - (atol + rtol * expected.abs())
    bad = ~(excess <= 0)  # NaN-safe: NaN compares False
    score = torch.where(torch.isnan(excess), torch.full_like(excess, math.inf), excess) if bad.any() else diff
    flat = int(torch.argmax(score.reshape(-1)))
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    nan = bool(torch.isnan(diff).any())
    max_abs = math.inf if nan else float(diff.max())
    rel = torch.where(diff == 0, torch.zeros_like(diff), diff / expected.abs())
    max_rel = math.inf if nan else float(rel.max())
    return Comparison(what, not bool(bad.any()), max_abs, max_rel, idx, expected[idx], got[idx], float(atol), float(rtol), gs, es)


def worst_of(comparisons: Sequence[Comparison]) -> Comparison:
    r"""The comparison to report: the failing one with the largest error, else the largest error.

    Example:
        >>> a = compare(torch.zeros(2), torch.zeros(2), atol=0.0, what="a")
        >>> b = compare(torch.ones(2), torch.zeros(2), atol=0.0, what="b")
        >>> worst_of([a, b]).what
        'b'
    """
    if not comparisons:
        raise ValueError("worst_of needs at least one comparison")
    failing = [c for c in comparisons if not c.ok]
    return max(failing or comparisons, key=lambda c: c.max_abs_err)
