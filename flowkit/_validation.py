r"""Argument checks shared by every layer of flowkit (it imports nothing from flowkit).

Example:
    >>> check_positive_int("num_layers", 3)
    3
    >>> check_positive_int("num_layers", 0)
    Traceback (most recent call last):
        ...
    ValueError: num_layers must be a positive int, got 0
"""

from __future__ import annotations

import numbers

__all__ = ["check_positive_int"]


def check_positive_int(name: str, value: object, *, where: str = "", error: type[Exception] = ValueError) -> int:
    r"""Returns ``value`` as an ``int`` when it is an integer >= 1 (a bool is not), else raises.

    The message is ``"[where: ]name must be a positive int, got value"``.

    Arguments:
        name: The argument's name as the message shows it (it may carry a hint, e.g.
            ``"num_layers (flow steps)"``).
        value: The value to check; numpy integers are accepted.
        where: The caller, put in front of the message (e.g. a layer's name).
        error: The exception class raised (default :class:`ValueError`).

    Example:
        >>> check_positive_int("repeats", True, where="Flow.log_prob")
        Traceback (most recent call last):
            ...
        ValueError: Flow.log_prob: repeats must be a positive int, got True
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise error(f"{where}: " * bool(where) + f"{name} must be a positive int, got {value!r}")
    return int(value)
