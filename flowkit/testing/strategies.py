r"""Hypothesis strategies for flows: shapes, float64 data, contexts, layer configs and layers.

.. code-block:: python

    from hypothesis import given
    from flowkit.testing import check_transform, strategies as fst

    @given(fst.layer_cases())
    def test_every_layer(case):
        check_transform(case.transform, case.x, case.context)

Requires ``hypothesis`` (``pip install flowkit[test]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

try:
    from hypothesis import strategies as st
except ImportError as e:  # pragma: no cover - hypothesis is a test extra
    raise ImportError("flowkit.testing.strategies needs hypothesis: pip install flowkit[test] (or pip install hypothesis)") from e

from flowkit.testing.registry import LayerSpec, get_layer, registered_layers

__all__ = ["shapes", "tensors", "data", "contexts", "LayerConfig", "layer_configs", "transforms", "LayerCase", "layer_cases"]

#: The magnitude bound of generated data (large enough to leave the linear part of soft clamps).
DATA_BOUND = 4.0


@st.composite
def shapes(
    draw: st.DrawFn,
    min_batch: int = 1,
    max_batch: int = 6,
    min_features: int = 1,
    max_features: int = 7,
    even: bool = False,
) -> tuple[int, int]:
    r"""Draws ``(batch, features)``; features include 1, 2 and odd counts unless ``even``.

    Arguments:
        min_batch: The smallest batch size.
        max_batch: The largest batch size.
        min_features: The smallest feature count.
        max_features: The largest feature count.
        even: Draw even feature counts only.

    Example:
        >>> from hypothesis import given
        >>> @given(shapes(max_features=4))
        ... def test_sizes(shape: tuple[int, int]) -> None:
        ...     assert 1 <= shape[0] and 1 <= shape[1] <= 4
        >>> test_sizes()
    """
    batch = draw(st.integers(min_batch, max_batch))
    if even:
        lo = max(2, min_features + (min_features % 2))
        features = 2 * draw(st.integers(lo // 2, max(lo, max_features) // 2))
    else:
        features = draw(st.integers(min_features, max_features))
    return batch, features


@st.composite
def tensors(draw: st.DrawFn, shape: Sequence[int], bound: float = DATA_BOUND, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Draws a tensor of the given shape with finite entries in ``[-bound, bound]`` (float64).

    Half of the draws take every entry from hypothesis (so it can shrink to simple values and
    find edge cases such as repeated entries); the other half are seeded Gaussians times a drawn
    scale (realistic, well spread data).

    Arguments:
        shape: The shape of the tensor.
        bound: The magnitude bound of the entries.
        dtype: The dtype of the tensor.
    """
    n = 1
    for s in shape:
        n *= int(s)
    if draw(st.booleans()):
        values = draw(st.lists(st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=64), min_size=n, max_size=n))
        return torch.tensor(values, dtype=torch.float64).reshape(tuple(shape)).to(dtype)
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 2.0]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float64) * scale
    return x.clamp(-bound, bound).to(dtype)


def data(batch: int, features: int, bound: float = DATA_BOUND) -> st.SearchStrategy[Tensor]:
    r"""Draws a float64 data batch ``(batch, features)``.

    Arguments:
        batch: The batch size B.
        features: The number of features D.
        bound: The magnitude bound of the entries.
    """
    return tensors((batch, features), bound=bound)


def contexts(batch: int, context_features: int, bound: float = DATA_BOUND) -> st.SearchStrategy[Tensor | None]:
    r"""Draws a float64 context ``(batch, context_features)``, or None when ``context_features == 0``.

    Arguments:
        batch: The batch size B.
        context_features: The number of context features C.
        bound: The magnitude bound of the entries.
    """
    if context_features == 0:
        return st.none()
    return tensors((batch, context_features), bound=bound)


@dataclass(frozen=True)
class LayerConfig:
    r"""A registered layer name with sizes and keyword options; :meth:`build` makes the layer.

    Arguments:
        name: The registry key.
        features: The number of features D.
        context_features: The number of context features C (0 for none).
        options: Keyword options of the layer's factory.
        seed: The seed of the layer's initialisation and randomisation.
    """

    name: str
    features: int
    context_features: int
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def build(self, randomize: bool = True, scale: float = 0.5) -> nn.Module:
        r"""Builds the layer, with random non-identity parameters when ``randomize``."""
        return get_layer(self.name).build(
            self.features, self.context_features, self.options, seed=self.seed, randomize=randomize, scale=scale
        )


def _names(names: Sequence[str] | None) -> list[str]:
    names = sorted(registered_layers()) if names is None else list(names)
    if not names:
        raise ValueError("no registered layers to draw from")
    return names


@st.composite
def layer_configs(
    draw: st.DrawFn,
    names: Sequence[str] | None = None,
    features: int | None = None,
    max_features: int = 7,
    max_context_features: int = 4,
) -> LayerConfig:
    r"""Draws a :class:`LayerConfig`: a registered layer, supported sizes and options.

    Arguments:
        names: The registry keys to draw from (default: every registered layer).
        features: A fixed feature count (default: drawn, odd counts included where supported).
        max_features: The largest feature count drawn.
        max_context_features: The largest context size drawn.

    Example:
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=10, deadline=None)
        ... @given(layer_configs(names=["AffineCoupling"]))
        ... def test_builds(config: LayerConfig) -> None:
        ...     assert config.name == "AffineCoupling" and config.build().features == config.features
        >>> test_builds()
    """
    name = draw(st.sampled_from(_names(names)))
    spec: LayerSpec = get_layer(name)
    for _ in range(50):
        if features is None:
            lo = max(1, spec.min_features)
            d = draw(st.integers(lo, max(lo, max_features)))
            if d % 2 == 1 and not spec.odd_features:
                d += 1
        else:
            d = features
        if spec.context == "never":
            c = 0
        elif spec.context == "required":
            c = draw(st.integers(1, max_context_features))
        else:
            c = draw(st.integers(0, max_context_features))
        opts = {k: draw(st.sampled_from(list(v))) for k, v in spec.options.items()}
        if spec.supports(d, c, opts):
            break
    else:  # pragma: no cover - a registration whose predicate rejects everything
        raise ValueError(f"could not draw a supported configuration of {name!r}")
    seed = draw(st.integers(0, 2**16))
    return LayerConfig(name, d, c, opts, seed)


@st.composite
def transforms(draw: st.DrawFn, names: Sequence[str] | None = None, scale: float = 0.5, **kwargs: Any) -> nn.Module:
    r"""Draws a registered layer built with random non-identity parameters.

    Arguments:
        names: The registry keys to draw from (default: all).
        scale: The size of the random perturbation of the parameters.
        kwargs: Passed to :func:`layer_configs`.
    """
    return draw(layer_configs(names=names, **kwargs)).build(randomize=True, scale=scale)


@dataclass
class LayerCase:
    r"""A randomized layer with a float64 batch and context to check it on."""

    config: LayerConfig
    transform: nn.Module
    x: Tensor
    context: Tensor | None


@st.composite
def layer_cases(
    draw: st.DrawFn,
    names: Sequence[str] | None = None,
    max_batch: int = 5,
    scale: float = 0.5,
    **kwargs: Any,
) -> LayerCase:
    r"""Draws a :class:`LayerCase`: a randomized registered layer, data and a matching context.

    Arguments:
        names: The registry keys to draw from (default: all).
        max_batch: The largest batch size.
        scale: The size of the random perturbation of the parameters.
        kwargs: Passed to :func:`layer_configs`.
    """
    config = draw(layer_configs(names=names, **kwargs))
    batch = draw(st.integers(1, max_batch))
    x = draw(data(batch, config.features))
    context = draw(contexts(batch, config.context_features))
    return LayerCase(config, config.build(randomize=True, scale=scale), x, context)
