r"""Numerical checks for invertible transforms: round trips, log-determinants, shapes.

Every check works on a *deep copy* of the transform (by default converted to float64 and put
in eval mode), so checking never changes the layer you pass in, not even the data-dependent
initialisation of an ActNorm.

.. code-block:: python

    from flowkit.testing import check_invertible, check_log_det, check_transform

    check_invertible(layer, x, context)   # raises CheckFailed naming the layer and the error
    check_log_det(layer, x, context)      # analytic log-det vs autograd Jacobian + slogdet
    check_transform(layer, x, context)    # all of the above plus shapes, dtypes, determinism
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from flowkit.testing.compare import Comparison, compare, worst_of

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
    "randomize_parameters",
    "prepared_copy",
    "layer_name",
]


class CheckFailed(AssertionError):
    r"""Raised when a check finds a mismatch; :attr:`result` holds the full :class:`CheckResult`."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(result.message)
        self.result = result


@dataclass
class CheckResult:
    r"""The outcome of one check; truthy when the check passed.

    Arguments:
        check: The name of the check (``"check_invertible"``, ...).
        layer: A short description of the layer that was checked.
        ok: Whether the check passed.
        max_error: The largest absolute difference found (0 for checks without a tolerance).
        worst_sample: The batch index of the worst sample, or None.
        expected: The expected value at the worst place, or None.
        got: The value the layer produced there, or None.
        message: A human-readable summary.
        details: Per-sub-check results (for :func:`check_transform`).
    """

    check: str
    layer: str
    ok: bool
    max_error: float = 0.0
    worst_sample: int | None = None
    expected: Any = None
    got: Any = None
    message: str = ""
    details: list[CheckResult] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok


# -- helpers --------------------------------------------------------------------------------


def layer_name(t: nn.Module) -> str:
    r"""A one-line description of a layer: its class name and its ``extra_repr``.

    Arguments:
        t: A module.

    Example:
        >>> layer_name(torch.nn.Linear(2, 3))
        'Linear(in_features=2, out_features=3, bias=True)'
    """
    extra = t.extra_repr().replace("\n", " ")
    if not extra:
        # Containers (Sequential, Inverse, wrappers): name their children instead.
        kids = [type(m).__name__ for m in t.children()]
        if len(kids) == 1 and isinstance(getattr(t, "transforms", None), nn.ModuleList):
            kids = [type(m).__name__ for m in t.transforms]  # type: ignore[union-attr]
        extra = ", ".join(kids[:6]) + (f", ... ({len(kids)} layers)" if len(kids) > 6 else "")
    return f"{type(t).__name__}({extra})"


def _is_transform(m: nn.Module) -> bool:
    return callable(getattr(m, "inverse", None))


def _blame(tc: nn.Module, x: Tensor, context: Tensor | None, check: Callable[..., CheckResult], **kwargs: Any) -> str:
    # For a failing composite, find the first innermost sub-transform that fails the same check
    # on the input it receives inside the composite; returns "" when none can be singled out.
    subs = [(n, m) for n, m in tc.named_modules() if n and _is_transform(m)]
    leaves = [(n, m) for n, m in subs if not any(_is_transform(c) for c in m.modules() if c is not m)]
    if not leaves:
        return ""
    seen: dict[str, tuple[Tensor, Tensor | None]] = {}

    def hook(name: str) -> Callable[..., None]:
        def capture(module: nn.Module, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
            if name not in seen and args:
                seen[name] = (args[0], args[1] if len(args) > 1 else kw.get("context"))

        return capture

    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in leaves]
    try:
        with torch.no_grad():
            _call(tc, x, context)
    except Exception:  # noqa: BLE001 - blame is best effort
        return ""
    finally:
        for h in handles:
            h.remove()
    for n, m in leaves:
        if n not in seen:
            continue
        xi, ci = seen[n]
        try:
            r = check(m, xi, ci, raise_on_failure=False, dtype=None, warm_up=False, **kwargs)
        except Exception as e:  # noqa: BLE001
            return f" [culprit: sub-layer {n!r} = {layer_name(m)} raised {type(e).__name__}: {e}]"
        if not r.ok:
            return f" [culprit: sub-layer {n!r} = {layer_name(m)}, max abs difference {r.max_error:.3e}]"
    return ""


def prepared_copy(t: nn.Module, dtype: torch.dtype | None = torch.float64, eval: bool = True) -> nn.Module:
    r"""Returns a deep copy of ``t``, converted to ``dtype`` (None keeps it) and in eval mode.

    Arguments:
        t: The transform.
        dtype: The floating dtype of the copy; ``None`` keeps the parameters' dtype.
        eval: Whether to put the copy in eval mode (dropout and batch statistics off).
    """
    c = copy.deepcopy(t)
    if dtype is not None:
        c = c.to(dtype)
    if eval:
        c.eval()
    return c


def _as(x: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    if x is None:
        return None
    x = x.detach()
    return x.to(dtype) if dtype is not None else x.clone()


def _finish(result: CheckResult, raise_on_failure: bool) -> CheckResult:
    if not result.ok and raise_on_failure:
        raise CheckFailed(result)
    return result


def _failed(check: str, name: str, text: str, raise_on_failure: bool, sample: int | None = None) -> CheckResult:
    # A failure found before any comparison (a wrong shape, NaN output): the error is infinite.
    msg = f"{check} failed for {name}: {text}"
    return _finish(CheckResult(check, name, False, float("inf"), sample, message=msg), raise_on_failure)


def _verdict(
    check: str,
    name: str,
    comparisons: list[Comparison],
    raise_on_failure: bool,
    explain: Callable[[Comparison], str],
    blame: Callable[[], str] | None = None,
) -> CheckResult:
    # The result of a check made of comparisons: it passes when all pass; a failure is told by
    # ``explain`` about the worst failing comparison, followed by ``blame()`` (a culprit).
    worst = worst_of(comparisons)
    max_err = max(c.max_abs_err for c in comparisons)
    ok = all(c.ok for c in comparisons)
    if ok:
        msg = f"{check} passed for {name}: max abs difference {max_err:.3e}"
    else:
        msg = f"{check} failed for {name}: {explain(worst)}" + (blame() if blame is not None else "")
    result = CheckResult(check, name, ok, max_err, worst.worst_sample, worst.expected, worst.got, msg)
    return _finish(result, raise_on_failure)


def _nonfinite_sample(out: Tensor) -> int | None:
    # The first sample whose values hold a NaN or inf, or None.
    bad = ~torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1) if out.dim() else ~torch.isfinite(out).reshape(1)
    return int(torch.nonzero(bad)[0]) if bad.any() else None


def _call(t: nn.Module, x: Tensor, context: Tensor | None, inverse: bool = False) -> tuple[Tensor, Tensor]:
    fn = t.inverse if inverse else t
    return fn(x, context=context)


def _prepare(
    t: nn.Module, x: Tensor, context: Tensor | None, dtype: torch.dtype | None, warm_up: bool
) -> tuple[str, nn.Module, Tensor, Tensor | None]:
    # The checks run on a copy in ``dtype`` (eval mode), so the user's layer is never changed.
    tc = prepared_copy(t, dtype)
    x, context = _as(x, dtype), _as(context, dtype)
    if warm_up:
        _warm_up(tc, x, context)
    return layer_name(t), tc, x, context


def _warm_up(tc: nn.Module, x: Tensor, context: Tensor | None) -> None:
    # One training-mode forward pass on the whole batch, as a first training step would do:
    # data-dependent initialisations (ActNorm) happen here, on the copy. Then back to eval.
    tc.train()
    try:
        with torch.no_grad():
            _call(tc, x, context)
    finally:
        tc.eval()


# -- public checks --------------------------------------------------------------------------


def check_invertible(
    t: nn.Module,
    x: Tensor,
    context: Tensor | None = None,
    atol: float = 1e-10,
    rtol: float = 1e-9,
    raise_on_failure: bool = True,
    dtype: torch.dtype | None = torch.float64,
    warm_up: bool = True,
) -> CheckResult:
    r"""Checks that ``inverse`` undoes ``forward`` (and vice versa) and that their log-dets cancel.

    Four comparisons on a float64 copy of ``t``: :math:`f^{-1}(f(x)) = x`,
    :math:`f(f^{-1}(x)) = x`, and :math:`\log|J_f(x)| + \log|J_{f^{-1}}(f(x))| = 0`
    (likewise for the second round trip). An entry passes when
    ``|got - expected| <= atol + rtol * |expected|``.

    Arguments:
        t: The transform, with the protocol ``y, ld = t(x, context)`` and ``t.inverse``.
        x: A batch of inputs, ``(B, D)``; also used as latent input of the second round trip.
        context: The context, ``(B, C)``, or None.
        atol: The absolute tolerance.
        rtol: The relative tolerance.
        raise_on_failure: Raise :class:`CheckFailed` on a mismatch (else return the result).
        dtype: The dtype the copy of ``t`` and the data are converted to; None keeps them.
        warm_up: Run one training-mode forward pass on the whole batch first (on the copy), so
            data-dependent initialisations (ActNorm) happen as on a first training batch.

    Returns:
        A :class:`CheckResult`, truthy when the check passed.

    Example:
        >>> import flowkit
        >>> t = flowkit.AffineCoupling(4, hidden_features=8)
        >>> bool(check_invertible(t, torch.randn(3, 4)))
        True
    """
    name, tc, x, context = _prepare(t, x, context, dtype, warm_up)
    with torch.no_grad():
        y, ld_f = _call(tc, x, context)
        x_inv, ld_i2 = _call(tc, x, context, inverse=True)
        for what, out in (("forward(x)", y), ("inverse(x)", x_inv), ("forward log-det", ld_f), ("inverse log-det", ld_i2)):
            sample = _nonfinite_sample(out)
            if sample is not None:
                return _failed("check_invertible", name, f"{what} is NaN or inf at sample {sample}", raise_on_failure, sample)
        x_rec, ld_i = _call(tc, y, context, inverse=True)
        x_rec2, ld_f2 = _call(tc, x_inv, context)

    comparisons = []
    for what, expected, got in (
        ("inverse(forward(x)) != x", x, x_rec),
        ("forward(inverse(x)) != x", x, x_rec2),
        ("forward log-det + inverse log-det at forward(x) != 0", -ld_f, ld_i),
        ("inverse log-det + forward log-det at inverse(x) != 0", -ld_i2, ld_f2),
    ):
        c = compare(got, expected, atol, rtol, what)
        if c.shape_mismatch:
            return _failed("check_invertible", name, f"{what.split(' !=')[0]} has {c.message()}", raise_on_failure)
        comparisons.append(c)
    return _verdict(
        "check_invertible",
        name,
        comparisons,
        raise_on_failure,
        lambda c: f"{c.what}; {c.message()}",
        lambda: _blame(tc, x, context, check_invertible, atol=atol, rtol=rtol),
    )


def jacobian_log_det(t: nn.Module, x: Tensor, context: Tensor | None = None, inverse: bool = False) -> tuple[Tensor, Tensor]:
    r"""The per-sample log-absolute-determinant of the Jacobian of ``t`` (or ``t.inverse``) by autograd.

    Samples of a batch are independent, so the Jacobian of the batch-summed output
    :math:`\sum_b f(x)_b` with respect to ``x`` holds every per-sample Jacobian:
    ``J[:, b, :]`` is the Jacobian of sample ``b``. That costs D backward passes in total.

    Arguments:
        t: The transform (use it in eval mode).
        x: The input, ``(B, D)``.
        context: The context or None.
        inverse: Differentiate ``t.inverse`` instead of ``t``.

    Returns:
        ``(slogdet, analytic)``: the autograd log-det ``(B,)`` and the layer's own ``(B,)``.
    """
    with torch.no_grad():
        _, analytic = _call(t, x, context, inverse)

    def summed(inp: Tensor) -> Tensor:
        out, _ = _call(t, inp, context, inverse)
        return out.sum(0)

    jac = torch.autograd.functional.jacobian(summed, x.detach())  # (D, B, D)
    jac = jac.permute(1, 0, 2)  # (B, D_out, D_in)
    _, logabsdet = torch.linalg.slogdet(jac)
    return logabsdet, analytic


def check_log_det(
    t: nn.Module,
    x: Tensor,
    context: Tensor | None = None,
    atol: float = 1e-8,
    rtol: float = 1e-8,
    raise_on_failure: bool = True,
    inverse: bool = True,
    dtype: torch.dtype | None = torch.float64,
    warm_up: bool = True,
) -> CheckResult:
    r"""Checks the analytic log-determinant against autograd's Jacobian and ``slogdet``.

    On a float64 copy of ``t``, the Jacobian of the per-sample map is computed with
    :func:`torch.autograd.functional.jacobian` and its :func:`torch.linalg.slogdet` is compared
    with the ``logabsdet`` the layer returns, at ``x`` for the forward map and (with
    ``inverse=True``) at ``forward(x)`` for the inverse map.

    Arguments:
        t: The transform.
        x: A batch of inputs, ``(B, D)``.
        context: The context, ``(B, C)``, or None.
        atol: The absolute tolerance.
        rtol: The relative tolerance, relative to ``|slogdet|``.
        raise_on_failure: Raise :class:`CheckFailed` on a mismatch (else return the result).
        inverse: Also check the log-det of ``t.inverse``.
        dtype: The dtype the copy of ``t`` and the data are converted to; None keeps them.
        warm_up: Run one forward pass on the whole batch first (see :func:`check_invertible`).

    Returns:
        A :class:`CheckResult`, truthy when the check passed.

    Example:
        >>> import flowkit
        >>> t = flowkit.ActNorm(4)
        >>> check_log_det(t, torch.randn(8, 4)).max_error < 1e-8
        True
    """
    name, tc, x, context = _prepare(t, x, context, dtype, warm_up)
    todo = [("forward", x, False)]
    if inverse:
        with torch.no_grad():
            y, _ = _call(tc, x, context)
        todo.append(("inverse", y, True))

    comparisons = []
    for direction, inp, inv in todo:
        expected, got = jacobian_log_det(tc, inp, context, inverse=inv)
        c = compare(got, expected, atol, rtol, direction)
        if c.shape_mismatch:
            text = f"{direction} logabsdet has {c.message()} (one value per sample)"
            return _failed("check_log_det", name, text, raise_on_failure)
        comparisons.append(c)
    return _verdict(
        "check_log_det",
        name,
        comparisons,
        raise_on_failure,
        lambda c: f"{c.what} logabsdet differs from slogdet of the autograd Jacobian; {c.message()}",
        lambda: _blame(tc, x, context, check_log_det, atol=atol, rtol=rtol, inverse=inverse),
    )


def check_shapes(
    t: nn.Module,
    x: Tensor,
    context: Tensor | None = None,
    raise_on_failure: bool = True,
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64),
) -> CheckResult:
    r"""Checks that outputs have x's shape and dtype and ``logabsdet`` is ``(B,)`` in x's dtype.

    Both directions are checked for every dtype in ``dtypes`` (the layer is copied and
    converted to each).

    Arguments:
        t: The transform.
        x: A batch of inputs, ``(B, D)``.
        context: The context, ``(B, C)``, or None.
        raise_on_failure: Raise :class:`CheckFailed` on a mismatch (else return the result).
        dtypes: The dtypes to check.
    """
    name = layer_name(t)
    problems: list[str] = []
    for dt in dtypes:
        tc = prepared_copy(t, dt)
        xd, cd = _as(x, dt), _as(context, dt)
        with torch.no_grad():
            for direction, inv in (("forward", False), ("inverse", True)):
                out = _call(tc, xd, cd, inv)
                if not (isinstance(out, tuple) and len(out) == 2):
                    problems.append(f"{direction} must return a (outputs, logabsdet) tuple, got {type(out).__name__}")
                    continue
                y, ld = out
                if y.shape != xd.shape or y.dtype != dt:
                    problems.append(f"{direction} output is {tuple(y.shape)} {y.dtype} for input {tuple(xd.shape)} {dt}")
                if ld.shape != (xd.shape[0],) or ld.dtype != dt:
                    problems.append(f"{direction} logabsdet is {tuple(ld.shape)} {ld.dtype}, expected ({xd.shape[0]},) {dt}")
    ok = not problems
    msg = f"check_shapes passed for {name}" if ok else f"check_shapes failed for {name}: " + "; ".join(dict.fromkeys(problems))
    return _finish(CheckResult("check_shapes", name, ok, 0.0 if ok else float("inf"), message=msg), raise_on_failure)


def check_deterministic(t: nn.Module, x: Tensor, context: Tensor | None = None, raise_on_failure: bool = True) -> CheckResult:
    r"""Checks that two eval-mode forward passes on the same input agree exactly.

    Arguments:
        t: The transform.
        x: A batch of inputs, ``(B, D)``.
        context: The context, ``(B, C)``, or None.
        raise_on_failure: Raise :class:`CheckFailed` on a mismatch (else return the result).
    """
    name = layer_name(t)
    tc = prepared_copy(t, torch.float64)
    xd, cd = _as(x, torch.float64), _as(context, torch.float64)
    _warm_up(tc, xd, cd)
    with torch.no_grad():
        y1, l1 = _call(tc, xd, cd)
        y2, l2 = _call(tc, xd, cd)
    comparisons = [compare(y2, y1, 0.0, what="output"), compare(l2, l1, 0.0, what="logabsdet")]
    return _verdict(
        "check_deterministic",
        name,
        comparisons,
        raise_on_failure,
        lambda c: (
            f"two eval-mode forward passes differ by {c.max_abs_err:.3e} in the {c.what} at {c.where()} "
            f"(dropout or state that changes on every call?)"
        ),
    )


def check_batch_independent(
    t: nn.Module,
    x: Tensor,
    context: Tensor | None = None,
    atol: float = 1e-10,
    raise_on_failure: bool = True,
    max_samples: int = 8,
) -> CheckResult:
    r"""Checks that in eval mode each sample's output does not depend on the rest of the batch.

    The per-sample Jacobian of :func:`check_log_det` relies on this. The batch is run whole
    and then its first ``max_samples`` samples one at a time.

    Arguments:
        t: The transform.
        x: A batch of inputs, ``(B, D)``.
        context: The context, ``(B, C)``, or None.
        atol: The absolute tolerance.
        raise_on_failure: Raise :class:`CheckFailed` on a mismatch (else return the result).
        max_samples: How many samples to run alone.
    """
    name = layer_name(t)
    tc = prepared_copy(t, torch.float64)
    xd, cd = _as(x, torch.float64), _as(context, torch.float64)
    n = min(xd.shape[0], max_samples)
    _warm_up(tc, xd, cd)
    with torch.no_grad():
        y, ld = _call(tc, xd, cd)
        y, ld = y[:n], ld[:n]
        parts = [_call(tc, xd[i : i + 1], None if cd is None else cd[i : i + 1]) for i in range(n)]
    comparisons = [
        compare(torch.cat([p[0] for p in parts]), y, atol, what="output"),
        compare(torch.cat([p[1] for p in parts]), ld, atol, what="logabsdet"),
    ]
    return _verdict(
        "check_batch_independent",
        name,
        comparisons,
        raise_on_failure,
        lambda c: (
            f"sample {c.worst_sample} gives a different {c.what} alone than in the batch ({c.message()}); "
            "eval-mode layers must treat samples independently"
        ),
    )


def check_shared_context(
    t: nn.Module,
    x: Tensor,
    context: Tensor | None,
    repeats: int = 3,
    atol: float = 1e-10,
    raise_on_failure: bool = True,
    seed: int = 0,
) -> CheckResult:
    r"""Checks ``context_repeats``: a context row shared by S rows acts as S copies of it.

    Each row of ``x`` becomes ``repeats`` rows (plus seeded noise, so they differ); both
    directions are run with the context given once per row (``context_repeats=repeats``) and
    with the context repeated, on a float64 copy, and outputs and log-dets must agree to
    ``atol``. This is the promise a layer with ``shares_context = True`` makes (see
    :class:`flowkit.Transform`); :meth:`flowkit.Flow.sample` relies on it.

    Arguments:
        t: A flowkit transform.
        x: A batch of inputs, ``(B, D)``.
        context: The context, ``(B, C)``; with None there is nothing to check (passes).
        repeats: The number of rows S per context row.
        atol: The absolute tolerance.
        raise_on_failure: Raise :class:`CheckFailed` on a mismatch (else return the result).
        seed: The seed of the noise that makes the S rows of a group differ.

    Example:
        >>> import flowkit
        >>> t = randomize_parameters(flowkit.AffineCoupling(4, 2, hidden_features=8))
        >>> bool(check_shared_context(t, torch.randn(3, 4), torch.randn(3, 2)))
        True
    """
    from flowkit.transforms.base import Transform, repeat_context

    name = layer_name(t)
    if not isinstance(t, Transform):
        raise TypeError(f"check_shared_context needs a flowkit Transform (context_repeats), got {name}")
    if context is None:
        return _finish(
            CheckResult("check_shared_context", name, True, message=f"check_shared_context: {name} has no context"), raise_on_failure
        )
    g = torch.Generator().manual_seed(seed)
    xd = _as(x, torch.float64)
    # the noise is drawn on the CPU (seeded the same everywhere) and moved to x's device
    noise = torch.randn(xd.shape[0] * repeats, xd.shape[1], generator=g, dtype=torch.float64)
    xs = repeat_context(xd, repeats) + 0.1 * noise.to(xd.device)
    _, tc, xs, cd = _prepare(t, xs, context, torch.float64, warm_up=False)
    _warm_up(tc, xs, repeat_context(cd, repeats))
    comparisons = []
    with torch.no_grad():
        for direction, inv in (("forward", False), ("inverse", True)):
            fn = tc.inverse if inv else tc
            y_rep, ld_rep = fn(xs, repeat_context(cd, repeats))
            y_sh, ld_sh = fn(xs, cd, context_repeats=repeats)
            comparisons.append(compare(y_sh, y_rep, atol, what=f"{direction} output"))
            comparisons.append(compare(ld_sh, ld_rep, atol, what=f"{direction} logabsdet"))
    return _verdict(
        "check_shared_context",
        name,
        comparisons,
        raise_on_failure,
        lambda c: (
            f"{c.what} with context_repeats={repeats} differs from the repeated context at row "
            f"{c.worst_sample} by {c.max_abs_err:.3e} > atol={atol:g}; a layer with shares_context=True "
            "must treat a context of B rows as each row repeated for its x rows"
        ),
    )


def check_transform(
    t: nn.Module,
    x: Tensor,
    context: Tensor | None = None,
    atol_inverse: float = 1e-10,
    atol_log_det: float = 1e-8,
    raise_on_failure: bool = True,
) -> CheckResult:
    r"""Runs every check: shapes and dtypes, determinism, batch independence, inverse, log-det,
    and for flowkit transforms with a context :func:`check_shared_context`.

    Arguments:
        t: The transform.
        x: A batch of inputs, ``(B, D)``.
        context: The context, ``(B, C)``, or None.
        atol_inverse: The absolute tolerance of :func:`check_invertible` (float64).
        atol_log_det: The absolute tolerance of :func:`check_log_det` (float64).
        raise_on_failure: Raise :class:`CheckFailed` at the first failing check.

    Returns:
        A :class:`CheckResult` whose ``details`` hold each check's result.

    Example:
        >>> import flowkit
        >>> t = randomize_parameters(flowkit.AffineCoupling(5, 3, hidden_features=8), seed=0)
        >>> bool(check_transform(t, torch.randn(4, 5), torch.randn(4, 3)))
        True
    """
    name = layer_name(t)
    checks: list[Callable[[], CheckResult]] = [
        lambda: check_shapes(t, x, context, raise_on_failure),
        lambda: check_deterministic(t, x, context, raise_on_failure),
        lambda: check_batch_independent(t, x, context, raise_on_failure=raise_on_failure),
        lambda: check_invertible(t, x, context, atol=atol_inverse, raise_on_failure=raise_on_failure),
        lambda: check_log_det(t, x, context, atol=atol_log_det, raise_on_failure=raise_on_failure),
    ]
    from flowkit.transforms.base import Transform

    if isinstance(t, Transform) and context is not None:
        checks.append(lambda: check_shared_context(t, x, context, atol=atol_inverse, raise_on_failure=raise_on_failure))
    details = [c() for c in checks]
    ok = all(details)
    msg = f"check_transform passed for {name}" if ok else "; ".join(d.message for d in details if not d.ok)
    return CheckResult("check_transform", name, ok, max(d.max_error for d in details), message=msg, details=details)


def randomize_parameters(t: nn.Module, scale: float = 0.5, seed: int = 0, mark_initialized: bool = True) -> nn.Module:
    r"""Moves a layer off its identity initialisation by adding seeded noise to every parameter.

    Many layers start as the identity (zero-initialised last layers, unit scales), where a wrong
    log-det or inverse can hide. Each parameter gets ``scale * N(0, 1) / sqrt(fan_in)`` added
    (``fan_in`` is the last dimension of weight matrices, 1 for vectors), which keeps the
    outputs of coupling networks of order ``scale``. Buffers (masks, permutations) are left
    alone. With ``mark_initialized``, boolean buffers whose name mentions ``init`` (ActNorm's
    data-init flag) are set so that the random parameters are not overwritten by a data init.

    Arguments:
        t: The module, changed in place and returned.
        scale: The size of the perturbation.
        seed: The seed of the noise.
        mark_initialized: Mark data-dependent initialisation as done.

    Example:
        >>> import flowkit
        >>> t = randomize_parameters(flowkit.ActNorm(3), scale=0.5, seed=1)
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(t.named_parameters(), key=lambda kv: kv[0]):
            if not p.dtype.is_floating_point:
                continue
            fan_in = max(p.shape[-1], 1) if p.dim() >= 2 else 1
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64) * (scale / fan_in**0.5)
            p.add_(noise.to(device=p.device, dtype=p.dtype))
        if mark_initialized:
            for bname, b in t.named_buffers():
                leaf = bname.rsplit(".", 1)[-1].lower()
                if "init" in leaf and (b.dtype == torch.bool or (not b.dtype.is_floating_point and b.numel() == 1)):
                    b.fill_(True if b.dtype == torch.bool else 1)
    return t


# -- base distributions ---------------------------------------------------------------------


def _normalization(base: nn.Module, context: Tensor | None, points: int) -> float:
    # The integral of p(z | c) for the first context row over a grid that covers the samples
    # (midpoint rule; D <= 2). Returns the integral.
    c1 = None if context is None else context[:1]
    with torch.no_grad():
        s = base.sample(2000, c1)
        s = s.reshape(-1, s.shape[-1])
        spread = s.std(dim=0).max().clamp_min(1e-3)
        lo, hi = s.min(dim=0).values - 4 * spread, s.max(dim=0).values + 4 * spread
        axes = [lo[i] + (hi[i] - lo[i]) * (torch.arange(points, dtype=s.dtype, device=s.device) + 0.5) / points for i in range(s.shape[1])]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, s.shape[1])
        cell = float(torch.prod((hi - lo) / points))
        cg = None if c1 is None else c1.expand(grid.shape[0], -1)
        return float(torch.exp(base.log_prob(grid, cg)).sum()) * cell


def check_base(
    base: nn.Module,
    z: Tensor,
    context: Tensor | None = None,
    atol: float = 1e-10,
    normalization_tol: float = 1e-2,
    repeats: int = 3,
    raise_on_failure: bool = True,
) -> CheckResult:
    r"""Checks a (conditional) base distribution with flowkit's base protocol.

    On float64 (and float32 for dtypes) copies: ``log_prob(z, context)`` is ``(B,)`` in z's
    dtype and finite; each sample's log-density does not depend on the rest of the batch; a
    context shared by ``repeats`` rows (``context_repeats``) gives the same log-densities as
    the context repeated; ``sample(S)`` / ``sample(S, context, temperature)`` have shapes
    ``(S, D)`` / ``(B, S, D)``, are finite and reparameterized (a gradient reaches the
    parameters); and for ``D <= 2`` the density integrates to 1 (midpoint rule on a grid
    around the samples, to ``normalization_tol``).

    Arguments:
        base: The distribution (``log_prob(z, context=None, *, context_repeats=1)``,
            ``sample(num_samples, context=None, temperature=1.0)``).
        z: Points ``(B, D)``.
        context: The context ``(B, C)``, or None.
        atol: The tolerance of the batch-independence and shared-context comparisons.
        normalization_tol: The tolerance of the integral (D <= 2).
        repeats: The rows per context row of the shared-context comparison.
        raise_on_failure: Raise :class:`CheckFailed` on a mismatch (else return the result).

    Example:
        >>> import flowkit
        >>> bool(check_base(flowkit.GaussianMixture(2, 3, context_features=1), torch.randn(4, 2), torch.randn(4, 1)))
        True
    """
    name = layer_name(base)
    problems: list[str] = []
    b, d = z.shape
    for dt in (torch.float32, torch.float64):
        bc = prepared_copy(base, dt)
        zd, cd = _as(z, dt), _as(context, dt)
        with torch.no_grad():
            lp = bc.log_prob(zd, cd)
            if lp.shape != (b,) or lp.dtype != dt:
                problems.append(f"log_prob is {tuple(lp.shape)} {lp.dtype} for z {tuple(zd.shape)} {dt}")
            elif not torch.isfinite(lp).all():
                problems.append(f"log_prob is not finite in {dt}")
            s = bc.sample(4, cd, temperature=0.5)
            want = (4, d) if cd is None else (b, 4, d)
            if tuple(s.shape) != want or s.dtype != dt or not torch.isfinite(s).all():
                problems.append(f"sample(4, context) is {tuple(s.shape)} {s.dtype} in {dt}, expected {want} finite")
    bc = prepared_copy(base, torch.float64)
    zd, cd = _as(z, torch.float64), _as(context, torch.float64)
    comparisons = []
    with torch.no_grad():
        lp = bc.log_prob(zd, cd)
        alone = torch.cat([bc.log_prob(zd[i : i + 1], None if cd is None else cd[i : i + 1]) for i in range(b)])
        comparisons.append(compare(alone, lp, atol, what="log_prob of a sample alone differs from in the batch"))
        if cd is not None:
            noise = torch.randn(b * repeats, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            zs = zd.repeat_interleave(repeats, dim=0) + 0.1 * noise.to(zd.device)
            shared = bc.log_prob(zs, cd, context_repeats=repeats)
            full = bc.log_prob(zs, cd.repeat_interleave(repeats, dim=0))
            what = f"log_prob with context_repeats={repeats} differs from the repeated context"
            comparisons.append(compare(shared, full, atol, what=what))
    problems += [f"{c.what} by {c.max_abs_err:.3e} ({c.message()})" for c in comparisons if not c.ok]
    err = max(c.max_abs_err for c in comparisons)
    params = [p for p in bc.parameters() if p.requires_grad]
    if params:
        s = bc.sample(3, cd)
        grads = torch.autograd.grad(s.sum(), params, allow_unused=True)
        if all(g is None or not torch.any(g != 0) for g in grads):
            problems.append("sample is not reparameterized: no gradient reaches the parameters")
    if d <= 2:
        total = _normalization(bc, cd, 400 if d == 1 else 300)
        if not abs(total - 1.0) <= normalization_tol:
            problems.append(f"the density integrates to {total:.4f}, not 1 (tol {normalization_tol:g})")
    ok = not problems
    msg = f"check_base passed for {name}" if ok else f"check_base failed for {name}: " + "; ".join(problems)
    return _finish(CheckResult("check_base", name, ok, err, message=msg), raise_on_failure)
