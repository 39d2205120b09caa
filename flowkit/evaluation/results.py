r"""What the evaluation's tables have in common: plain JSON (:func:`to_jsonable`), the base of
their typed results (:class:`JsonResult`) and the timing of each table (:func:`timed`).

Each table of :mod:`flowkit.evaluation.captioning` and :mod:`flowkit.evaluation.text_to_image`
returns a small dataclass deriving from :class:`JsonResult`: its fields keep what later tables
and figures need (tensors too); ``to_json()`` gives the numbers as they stand in the report's
``results.json``, and the result reads like that dict.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["JsonResult", "timed", "to_jsonable"]

T = TypeVar("T")


def to_jsonable(x: Any) -> Any:
    r"""A copy of ``x`` that ``json.dumps`` accepts: NaN/inf become None, tensors and numpy
    values become lists or numbers, results become their ``to_json()``, keys starting with
    ``_`` (figure data) are dropped.

    Arguments:
        x: Numbers, strings, tensors, arrays, results and mappings or sequences of them.

    Example:
        >>> to_jsonable({"a": float("nan"), "b": (1, 2.5), "_figure": None})
        {'a': None, 'b': [1, 2.5]}
    """
    try:
        import numpy as np
        import torch
    except ImportError:  # pragma: no cover
        np = torch = None  # type: ignore[assignment]
    if isinstance(x, JsonResult):
        return x.to_json()
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if torch is not None and isinstance(x, torch.Tensor):
        return to_jsonable(x.detach().cpu().tolist())
    if np is not None and isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if np is not None and isinstance(x, np.generic):
        return to_jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


class JsonResult(Mapping[str, Any]):
    r"""The base of the evaluation's typed results.

    A subclass (a dataclass) defines :meth:`to_json`; the result then reads like that dict:
    ``result["key"]``, ``"key" in result``, ``result.get("key")``, ``dict(result)``.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Score(JsonResult):
        ...     value: float
        ...     def to_json(self):
        ...         return to_jsonable({"value": self.value})
        >>> Score(float("nan"))["value"] is None, dict(Score(0.5))
        (True, {'value': 0.5})
    """

    @abstractmethod
    def to_json(self) -> dict[str, Any]:
        r"""The result in plain JSON types (``json.dumps(..., allow_nan=False)`` accepts it)."""

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


def timed(timings: dict[str, float], name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    r"""Calls ``fn(*args, **kwargs)`` and records its wall time in ``timings[name]``.

    Arguments:
        timings: Seconds by name (updated).
        name: The entry.
        fn: What to run.

    Returns:
        What ``fn`` returns.

    Example:
        >>> timings = {}
        >>> timed(timings, "sum", sum, [1, 2])
        3
        >>> list(timings)
        ['sum']
    """
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    timings[name] = time.perf_counter() - t0
    return out
