r"""A registry of layers for the property tests: every layer flowkit ships, plus yours.

Each entry knows how to build its layer for given ``features`` and ``context_features``, which
keyword options to vary, and what it accepts (a context? odd feature counts?). The property
tests of flowkit run over every entry, so registering a layer is all it takes to have it
checked with random parameters, shapes and contexts:

.. code-block:: python

    from flowkit.testing import register_layer, run_property_checks

    @register_layer("MyCoupling", context="optional", options={"hidden_features": (4, 8)})
    def make_my_coupling(features: int, context_features: int, hidden_features: int = 8) -> MyCoupling:
        return MyCoupling(features, context_features, hidden_features=hidden_features)

    run_property_checks("MyCoupling")  # hypothesis: inverse to 1e-10, log-det to 1e-8 (float64)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "LayerSpec",
    "register_layer",
    "unregister_layer",
    "registered_layers",
    "get_layer",
    "register_base",
    "registered_bases",
    "get_base",
    "CONTEXT_MODES",
]

#: ``"never"``: unconditional only; ``"optional"``: with or without; ``"required"``: needs a context.
CONTEXT_MODES: tuple[str, ...] = ("never", "optional", "required")

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class LayerSpec:
    r"""How to build one registered layer.

    Arguments:
        name: The registry key.
        factory: ``factory(features, context_features, **options) -> transform``.
        context: ``"never"``, ``"optional"`` or ``"required"``.
        odd_features: Whether odd feature counts are supported.
        min_features: The smallest supported feature count.
        options: For each keyword option of the factory, the values to try (the first is the
            default).
        accepts: An optional predicate ``accepts(features, context_features, options)`` for
            combinations that are not supported (e.g. a flipped mask on one feature).
    """

    name: str
    factory: Factory
    context: str = "optional"
    odd_features: bool = True
    min_features: int = 1
    options: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    accepts: Callable[[int, int, Mapping[str, Any]], bool] | None = None

    @property
    def needs_context(self) -> bool:
        r"""Whether the layer requires a context."""
        return self.context == "required"

    @property
    def accepts_context(self) -> bool:
        r"""Whether the layer can take a context."""
        return self.context != "never"

    def default_options(self) -> dict[str, Any]:
        r"""The first value of every option."""
        return {k: v[0] for k, v in self.options.items()}

    def supports(self, features: int, context_features: int, options: Mapping[str, Any] | None = None) -> bool:
        r"""Whether this combination of sizes and options is supported."""
        if features < self.min_features or (features % 2 == 1 and not self.odd_features):
            return False
        if context_features > 0 and not self.accepts_context:
            return False
        if context_features == 0 and self.needs_context:
            return False
        opts = self.default_options() | dict(options or {})
        return self.accepts is None or bool(self.accepts(features, context_features, opts))

    def build(
        self,
        features: int,
        context_features: int = 0,
        options: Mapping[str, Any] | None = None,
        *,
        seed: int | None = 0,
        randomize: bool = True,
        scale: float = 0.5,
    ) -> nn.Module:
        r"""Builds the layer (seeded) and, with ``randomize``, moves it off its identity init.

        Arguments:
            features: The number of features D.
            context_features: The number of context features C (0 for none).
            options: Keyword options of the factory (defaults from :attr:`options`).
            seed: Seeds the layer's own initialisation and the randomisation; None leaves the
                global RNG alone.
            randomize: Apply :func:`flowkit.testing.randomize_parameters`.
            scale: The size of the random perturbation.

        Example:
            >>> get_layer("AffineCoupling").build(5, 3, {"clamp": "tanh"}, seed=1).extra_repr()
            "features=5, context_features=3, mask='half', clamp='tanh'"
        """
        from flowkit.testing.checks import randomize_parameters

        if not self.supports(features, context_features, options):
            raise ValueError(
                f"registered layer {self.name!r} does not support features={features}, "
                f"context_features={context_features}, options={options}"
            )
        opts = self.default_options() | dict(options or {})
        if seed is None:
            t = self.factory(features, context_features, **opts)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                t = self.factory(features, context_features, **opts)
        if randomize:
            randomize_parameters(t, scale=scale, seed=0 if seed is None else seed)
        return t


_REGISTRY: dict[str, LayerSpec] = {}


def _check_context(context: str) -> None:
    if context not in CONTEXT_MODES:
        raise ValueError(f"context must be one of {CONTEXT_MODES}, got {context!r}")


def _check_free(table: Mapping[str, LayerSpec], kind: str, name: str, overwrite: bool) -> None:
    if name in table and not overwrite:
        raise ValueError(f"a {kind} named {name!r} is already registered (pass overwrite=True to replace it)")


def _lookup(table: Mapping[str, LayerSpec], kind: str, name: str) -> LayerSpec:
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"no {kind} registered as {name!r}; registered: {', '.join(sorted(table))}") from None


def register_layer(
    name: str,
    factory: Factory | None = None,
    *,
    context: str = "optional",
    odd_features: bool = True,
    min_features: int = 1,
    options: Mapping[str, Sequence[Any]] | None = None,
    accepts: Callable[[int, int, Mapping[str, Any]], bool] | None = None,
    overwrite: bool = False,
) -> Any:
    r"""Registers a layer factory for the property tests; usable as a decorator.

    Arguments:
        name: The registry key (e.g. the class name).
        factory: ``factory(features, context_features, **options) -> transform``; omit it to
            use ``register_layer`` as a decorator.
        context: ``"never"``, ``"optional"`` or ``"required"``.
        odd_features: Whether odd feature counts are supported.
        min_features: The smallest supported feature count.
        options: The values to try for each keyword option of the factory.
        accepts: A predicate ``accepts(features, context_features, options)`` ruling out
            unsupported combinations.
        overwrite: Replace an existing entry of the same name instead of raising.

    Returns:
        The :class:`LayerSpec` (or, as a decorator, the factory itself).

    Example:
        >>> import flowkit
        >>> spec = register_layer("MyActNorm", lambda d, c: flowkit.ActNorm(d), context="never")
        >>> registered_layers()["MyActNorm"].build(3)
        ActNorm(features=3, initialized=True)
    """
    _check_context(context)

    def add(f: Factory) -> LayerSpec:
        _check_free(_REGISTRY, "layer", name, overwrite)
        spec = LayerSpec(
            name=name,
            factory=f,
            context=context,
            odd_features=odd_features,
            min_features=min_features,
            options=dict(options or {}),
            accepts=accepts,
        )
        _REGISTRY[name] = spec
        return spec

    if factory is None:

        def decorator(f: Factory) -> Factory:
            add(f)
            return f

        return decorator
    return add(factory)


def unregister_layer(name: str) -> None:
    r"""Removes a registered layer (no error if absent)."""
    _REGISTRY.pop(name, None)


def registered_layers() -> dict[str, LayerSpec]:
    r"""Every registered layer, by name (flowkit's own are registered on import)."""
    return dict(_REGISTRY)


def get_layer(name: str) -> LayerSpec:
    r"""The :class:`LayerSpec` registered under ``name``."""
    return _lookup(_REGISTRY, "layer", name)


_BASES: dict[str, LayerSpec] = {}


def register_base(
    name: str,
    factory: Factory,
    *,
    context: str = "optional",
    min_features: int = 1,
    options: Mapping[str, Sequence[Any]] | None = None,
    overwrite: bool = False,
) -> LayerSpec:
    r"""Registers a base-distribution factory ``factory(features, context_features, **options)``
    for the property tests of bases (:func:`flowkit.testing.check_base` over random sizes,
    contexts, options and parameters).

    Example:
        >>> import flowkit
        >>> spec = register_base("MyNormal", lambda d, c: flowkit.DiagonalNormal(d), context="never")
        >>> registered_bases()["MyNormal"].build(2)
        DiagonalNormal(features=2)
    """
    _check_context(context)
    _check_free(_BASES, "base", name, overwrite)
    spec = LayerSpec(name=name, factory=factory, context=context, min_features=min_features, options=dict(options or {}))
    _BASES[name] = spec
    return spec


def registered_bases() -> dict[str, LayerSpec]:
    r"""Every registered base distribution, by name."""
    return dict(_BASES)


def get_base(name: str) -> LayerSpec:
    r"""The :class:`LayerSpec` of the base distribution registered under ``name``."""
    return _lookup(_BASES, "base", name)


# -- flowkit's own layers -------------------------------------------------------------------
# Factories are module-level functions (picklable, readable); flowkit is imported at call time
# so that this module imports cheaply and without cycles.

_HIDDEN = (8, 4, 16)
_NUM_LAYERS = (1, 2)
_MASKS = ("half", "alternate")
_CLAMPS = ("atan", "tanh", "sigmoid")


def _coupling_accepts(features: int, context_features: int, options: Mapping[str, Any]) -> bool:
    # A flipped mask on a single feature leaves nothing to transform.
    return not (features == 1 and options.get("flip_mask", False))


def _affine_coupling(features: int, context_features: int, **options: Any) -> nn.Module:
    import flowkit

    return flowkit.AffineCoupling(features, context_features, **options)


def _additive_coupling(features: int, context_features: int, **options: Any) -> nn.Module:
    import flowkit

    return flowkit.AdditiveCoupling(features, context_features, **options)


def _actnorm(features: int, context_features: int) -> nn.Module:
    import flowkit

    return flowkit.ActNorm(features)


def _conditional_actnorm_full(
    features: int, context_features: int, hidden_features: int = 8, num_layers: int = 1, scale: str = "exp"
) -> nn.Module:
    import flowkit

    return flowkit.ConditionalActNorm(features, context_features, hidden_features=hidden_features, num_layers=num_layers, scale=scale)


def _elementwise_scale(features: int, context_features: int, offset: float = 5.0) -> nn.Module:
    import flowkit

    return flowkit.ElementwiseScale(features, offset=offset)


def _invertible_1x1(features: int, context_features: int, seed: int = 0) -> nn.Module:
    import flowkit

    return flowkit.Invertible1x1(features, seed=seed)


def _switch(features: int, context_features: int) -> nn.Module:
    import flowkit

    return flowkit.Switch(features)


def _reverse(features: int, context_features: int) -> nn.Module:
    import flowkit

    return flowkit.Reverse(features)


def _permutation(features: int, context_features: int, seed: int = 0) -> nn.Module:
    import flowkit

    return flowkit.Permutation(features, seed=seed)


def _sequential(features: int, context_features: int, hidden_features: int = 8, clamp: str = "atan") -> nn.Module:
    import flowkit

    layers: list[nn.Module] = [flowkit.ActNorm(features)]
    if context_features > 0:
        layers.append(flowkit.ConditionalActNorm(features, context_features, hidden_features=hidden_features))
    layers += [
        flowkit.AffineCoupling(features, context_features, hidden_features=hidden_features, num_layers=1, clamp=clamp),
        flowkit.Invertible1x1(features),
        flowkit.Switch(features),
        flowkit.AdditiveCoupling(features, context_features, hidden_features=hidden_features, num_layers=1),
        flowkit.Permutation(features, seed=1),
        flowkit.Reverse(features),
    ]
    return flowkit.Sequential(*layers)


def _inverse(features: int, context_features: int, hidden_features: int = 8, clamp: str = "atan") -> nn.Module:
    import flowkit

    return flowkit.Inverse(
        flowkit.Sequential(
            flowkit.AffineCoupling(features, context_features, hidden_features=hidden_features, clamp=clamp),
            flowkit.Invertible1x1(features),
        )
    )


def _flow_transform(flow: Any) -> nn.Module:
    for attr in ("transform", "_transform"):
        t = getattr(flow, attr, None)
        if isinstance(t, nn.Module):
            return t
    raise AttributeError(f"{type(flow).__name__} has no transform attribute")


def _glow(
    features: int,
    context_features: int,
    num_layers: int = 2,
    actnorm: bool = True,
    conv1x1: bool = True,
    clamp: str = "atan",
    actnorm_scale: str = "exp",
) -> nn.Module:
    import flowkit

    flow = flowkit.glow(
        features,
        context_features,
        num_layers=num_layers,
        hidden_features=8,
        actnorm=actnorm,
        conv1x1=conv1x1,
        clamp=clamp,
        net_layers=1,
        actnorm_scale=actnorm_scale,
        seed=0,
    )
    return _flow_transform(flow)


def _realnvp(features: int, context_features: int, num_layers: int = 2, mask: str = "half", actnorm: bool = False) -> nn.Module:
    import flowkit

    flow = flowkit.realnvp(features, context_features, num_layers=num_layers, hidden_features=8, mask=mask, actnorm=actnorm, net_layers=1)
    return _flow_transform(flow)


def _rq_coupling(
    features: int,
    context_features: int,
    hidden_features: int = 8,
    num_layers: int = 1,
    bins: int = 4,
    bound: float = 2.0,
    mask: str = "half",
    flip_mask: bool = False,
) -> nn.Module:
    import flowkit

    return flowkit.RationalQuadraticCoupling(
        features, context_features, hidden_features, num_layers, bins=bins, bound=bound, mask=mask, flip_mask=flip_mask
    )


def _order(features: int, order_seed: int | None) -> list[int] | None:
    if order_seed is None:
        return None
    return torch.randperm(features, generator=torch.Generator().manual_seed(order_seed)).tolist()


def _masked_autoregressive(
    features: int,
    context_features: int,
    transform: str = "affine",
    hidden_features: int = 8,
    num_layers: int = 1,
    bins: int = 4,
    bound: float = 2.0,
    order_seed: int | None = None,
) -> nn.Module:
    import flowkit

    return flowkit.MaskedAutoregressive(
        features,
        context_features,
        hidden_features,
        num_layers,
        transform=transform,
        bins=bins,
        bound=bound,
        order=_order(features, order_seed),
    )


def _iaf(features: int, context_features: int, transform: str = "affine", order_seed: int | None = None) -> nn.Module:
    import flowkit

    return flowkit.Inverse(_masked_autoregressive(features, context_features, transform, order_seed=order_seed))


def _nsf(features: int, context_features: int, num_layers: int = 2, mask: str = "half", bound: float = 2.0) -> nn.Module:
    import flowkit

    flow = flowkit.nsf(features, context_features, num_layers=num_layers, hidden_features=8, bins=4, bound=bound, mask=mask, net_layers=1)
    return _flow_transform(flow)


def _maf(features: int, context_features: int, num_layers: int = 2, transform: str = "affine") -> nn.Module:
    import flowkit

    flow = flowkit.maf(
        features,
        context_features,
        num_layers=num_layers,
        hidden_features=8,
        transform=transform,
        bins=4,
        bound=2.0,
        net_layers=1,
    )
    return _flow_transform(flow)


def _diagonal_normal(features: int, context_features: int, hidden_features: int = 8) -> nn.Module:
    import flowkit

    return flowkit.DiagonalNormal(features, context_features, hidden_features=hidden_features)


def _gaussian_mixture(features: int, context_features: int, components: int = 3, hidden_features: int = 8) -> nn.Module:
    import flowkit

    return flowkit.GaussianMixture(features, components, context_features, hidden_features=hidden_features)


_COUPLING_OPTIONS: dict[str, Sequence[Any]] = {
    "hidden_features": _HIDDEN,
    "num_layers": _NUM_LAYERS,
    "mask": _MASKS,
    "flip_mask": (False, True),
}


def _register_builtins() -> None:
    r"""Registers flowkit's own base distributions and layers (the order is the registries' order)."""
    register_base("DiagonalNormal", _diagonal_normal, options={"hidden_features": (8, 4)}, overwrite=True)
    register_base("GaussianMixture", _gaussian_mixture, options={"components": (3, 1, 5), "hidden_features": (8, 4)}, overwrite=True)
    _register_elementary_layers()
    _register_spline_autoregressive_and_flow_layers()


def _register_elementary_layers() -> None:
    r"""The affine and additive couplings, the normalizations, permutations, compositions and glow."""
    register_layer(
        "AffineCoupling",
        _affine_coupling,
        options=_COUPLING_OPTIONS | {"clamp": _CLAMPS},
        accepts=_coupling_accepts,
        overwrite=True,
    )
    register_layer("AdditiveCoupling", _additive_coupling, options=_COUPLING_OPTIONS, accepts=_coupling_accepts, overwrite=True)
    register_layer("ActNorm", _actnorm, context="never", overwrite=True)
    register_layer(
        "ConditionalActNorm",
        _conditional_actnorm_full,
        context="required",
        options={"hidden_features": _HIDDEN, "num_layers": _NUM_LAYERS, "scale": ("exp", "sigmoid")},
        overwrite=True,
    )
    register_layer("ElementwiseScale", _elementwise_scale, context="never", options={"offset": (5.0, 0.0)}, overwrite=True)
    register_layer("Invertible1x1", _invertible_1x1, context="never", options={"seed": (0, 1)}, overwrite=True)
    register_layer("Switch", _switch, context="never", overwrite=True)
    register_layer("Reverse", _reverse, context="never", overwrite=True)
    register_layer("Permutation", _permutation, context="never", options={"seed": (0, 1, 2)}, overwrite=True)
    register_layer("Sequential", _sequential, options={"hidden_features": (8, 4), "clamp": _CLAMPS}, overwrite=True)
    register_layer("Inverse", _inverse, options={"hidden_features": (8, 4), "clamp": _CLAMPS}, overwrite=True)
    register_layer(
        "glow",
        _glow,
        min_features=2,
        options={
            "num_layers": (2, 1),
            "actnorm": (True, False),
            "conv1x1": (True, False),
            "clamp": _CLAMPS,
            "actnorm_scale": ("exp", "sigmoid"),
        },
        overwrite=True,
    )


def _register_spline_autoregressive_and_flow_layers() -> None:
    r"""The rational-quadratic coupling, the autoregressive layers and the flow builders."""
    register_layer(
        "RationalQuadraticCoupling",
        _rq_coupling,
        options=_COUPLING_OPTIONS | {"bins": (4, 2, 8), "bound": (2.0, 1.0, 5.0)},
        accepts=_coupling_accepts,
        overwrite=True,
    )
    register_layer(
        "MaskedAutoregressive",
        _masked_autoregressive,
        options={
            "transform": ("affine", "spline"),
            "hidden_features": _HIDDEN,
            "num_layers": _NUM_LAYERS,
            "bins": (4, 2),
            "bound": (2.0, 1.0, 5.0),
            "order_seed": (None, 0, 1),
        },
        overwrite=True,
    )
    register_layer("IAF", _iaf, options={"transform": ("affine", "spline"), "order_seed": (None, 0)}, overwrite=True)
    register_layer("nsf", _nsf, min_features=2, options={"num_layers": (2, 1), "mask": _MASKS, "bound": (2.0, 5.0)}, overwrite=True)
    register_layer("maf", _maf, options={"num_layers": (2, 1), "transform": ("affine", "spline")}, overwrite=True)
    register_layer(
        "realnvp",
        _realnvp,
        min_features=2,
        options={"num_layers": (2, 1), "mask": _MASKS, "actnorm": (False, True)},
        overwrite=True,
    )


_register_builtins()
