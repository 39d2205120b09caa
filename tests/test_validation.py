"""flowkit._validation.check_positive_int: one message style for every positive-int argument."""

from __future__ import annotations

import numpy as np
import pytest

import flowkit
from flowkit._validation import check_positive_int
from flowkit.transforms.base import InputError


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_positive_ints_pass_as_int(value: object) -> None:
    out = check_positive_int("n", value)
    assert out == value and type(out) is int


@pytest.mark.parametrize("value", [0, -2, True, False, 2.0, "3", None])
def test_everything_else_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match=rf"^n must be a positive int, got {value!r}$".replace("(", r"\(").replace(")", r"\)")):
        check_positive_int("n", value)


def test_where_and_error_class() -> None:
    with pytest.raises(InputError, match=r"^Flow: context_repeats must be a positive int, got 0$"):
        check_positive_int("context_repeats", 0, where="Flow", error=InputError)


def test_layers_use_it() -> None:
    with pytest.raises(ValueError, match="num_layers \\(flow steps\\) must be a positive int, got 0"):
        flowkit.glow(4, num_layers=0)
    with pytest.raises(ValueError, match="ConditionalActNorm: context_features .* must be a positive int, got 0"):
        flowkit.ConditionalActNorm(3, 0)
    with pytest.raises(ValueError, match="components must be a positive int, got True"):
        flowkit.GaussianMixture(2, True)
