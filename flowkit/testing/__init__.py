r"""A testing kit for invertible layers: numerical checks, a layer registry, hypothesis strategies.

.. code-block:: python

    from flowkit.testing import check_invertible, check_log_det, check_transform, randomize_parameters

    layer = randomize_parameters(MyLayer(5, context_features=3), seed=0)  # off the identity init
    check_transform(layer, torch.randn(4, 5), torch.randn(4, 3))          # raises CheckFailed

    from flowkit.testing import register_layer, run_property_checks
    register_layer("MyLayer", make_my_layer, context="optional")
    run_property_checks("MyLayer")   # hypothesis over shapes, contexts, options, parameters

The strategies live in :mod:`flowkit.testing.strategies` (needs ``hypothesis``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from flowkit.testing.checks import (
    CheckFailed,
    CheckResult,
    check_base,
    check_batch_independent,
    check_deterministic,
    check_invertible,
    check_log_det,
    check_shapes,
    check_shared_context,
    check_transform,
    jacobian_log_det,
    layer_name,
    randomize_parameters,
)
from flowkit.testing.compare import Comparison, compare
from flowkit.testing.registry import (
    LayerSpec,
    get_base,
    get_layer,
    register_base,
    register_layer,
    registered_bases,
    registered_layers,
    unregister_layer,
)

__all__ = [
    "CheckFailed",
    "CheckResult",
    "check_invertible",
    "check_log_det",
    "check_shapes",
    "check_deterministic",
    "check_batch_independent",
    "check_shared_context",
    "check_transform",
    "check_base",
    "Comparison",
    "compare",
    "jacobian_log_det",
    "layer_name",
    "randomize_parameters",
    "LayerSpec",
    "register_layer",
    "unregister_layer",
    "registered_layers",
    "get_layer",
    "register_base",
    "registered_bases",
    "get_base",
    "run_property_checks",
]

_anonymous = itertools.count()


def run_property_checks(
    layer: str | Callable[..., nn.Module],
    *,
    max_examples: int = 25,
    context: str = "optional",
    odd_features: bool = True,
    min_features: int = 1,
    options: Mapping[str, Sequence[Any]] | None = None,
    max_features: int = 7,
    max_batch: int = 5,
    atol_inverse: float = 1e-10,
    atol_log_det: float = 1e-8,
    derandomize: bool = True,
) -> int:
    r"""Runs flowkit's hypothesis property test on one layer and returns the number of examples.

    Each example draws sizes (odd feature counts and 1 included where supported), options,
    random non-identity parameters, a float64 batch and a context, and runs
    :func:`check_transform` (inverse to ``atol_inverse``, log-det to ``atol_log_det``, shapes,
    dtypes, determinism, batch independence). A failure raises :class:`CheckFailed` with
    hypothesis' minimal failing example.

    Arguments:
        layer: A registered name, or a factory ``factory(features, context_features,
            **options)`` (registered for the duration of the run with the arguments below).
        max_examples: The number of hypothesis examples.
        context: For a factory: ``"never"``, ``"optional"`` or ``"required"``.
        odd_features: For a factory: whether odd feature counts are supported.
        min_features: For a factory: the smallest feature count.
        options: For a factory: the values to try for each keyword option.
        max_features: The largest feature count drawn.
        max_batch: The largest batch size drawn.
        atol_inverse: The tolerance of the round trips (float64).
        atol_log_det: The tolerance of the log-det (float64).
        derandomize: Use a fixed seed (reproducible runs, as in CI).

    Example:
        >>> import flowkit
        >>> run_property_checks(lambda d, c: flowkit.Reverse(d), context="never", max_examples=5)
        5
    """
    from hypothesis import HealthCheck, given, settings

    from flowkit.testing import strategies as fst

    temporary = not isinstance(layer, str)
    if temporary:
        name = f"_run_property_checks_{next(_anonymous)}"
        register_layer(
            name,
            layer,  # type: ignore[arg-type]
            context=context,
            odd_features=odd_features,
            min_features=min_features,
            options=options,
        )
    else:
        name = layer  # type: ignore[assignment]
        get_layer(name)  # a clear KeyError for unknown names
    count = 0

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(fst.layer_cases(names=[name], max_features=max_features, max_batch=max_batch))
    def property_test(case: fst.LayerCase) -> None:
        nonlocal count
        count += 1
        check_transform(case.transform, case.x, case.context, atol_inverse=atol_inverse, atol_log_det=atol_log_det)

    try:
        property_test()
    finally:
        if temporary:
            unregister_layer(name)
    return count
