"""The testing kit itself: the checks catch broken layers with useful messages, the registry and
the strategies produce valid, supported draws, and user layers can be checked the same way."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

import flowkit
from flowkit.testing import (
    CheckFailed,
    check_batch_independent,
    check_deterministic,
    check_invertible,
    check_log_det,
    check_shapes,
    check_transform,
    get_layer,
    randomize_parameters,
    register_layer,
    registered_layers,
    run_property_checks,
    unregister_layer,
)
from flowkit.testing import strategies as fst


class ScaleShift(flowkit.Transform):
    """y = x * exp(s) + b with optional deliberate bugs (for the tests below)."""

    def __init__(
        self,
        features: int,
        bug: str = "",
        error: float = 0.0,
    ) -> None:
        super().__init__(features)
        self.log_scale = nn.Parameter(torch.linspace(-0.5, 0.7, features))
        self.shift = nn.Parameter(torch.linspace(0.3, -0.2, features))
        self.bug = bug
        self.error = error

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        y = x * torch.exp(self.log_scale) + self.shift
        ld = self.log_scale.sum().expand(x.shape[0]).to(x.dtype)
        if self.bug == "sign":
            ld = -ld
        if self.bug == "offset":  # consistent with the inverse, wrong against the Jacobian
            ld = ld + self.error
        if self.bug == "shape":
            ld = ld[:, None]
        if self.bug == "noise":
            y = y + 1e-3 * torch.randn_like(y)
        if self.bug == "batch":
            y = y - y.mean(0, keepdim=True) + self.shift
        if self.bug == "float32":
            ld = ld.float()
        return y, ld

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        scale = torch.exp(self.log_scale)
        if self.bug == "inverse":
            scale = scale * (1 + self.error)
        x = (y - self.shift) / scale
        ld = -self.log_scale.sum().expand(y.shape[0]).to(y.dtype)
        if self.bug == "offset":
            ld = ld - self.error
        if self.bug == "shape":
            ld = ld[:, None]
        return x, ld


X = torch.linspace(-2, 2, 12, dtype=torch.float64).reshape(4, 3)


def test_correct_layer_passes_every_check() -> None:
    result = check_transform(ScaleShift(3), X)
    assert result and result.max_error < 1e-12
    assert [d.check for d in result.details] == [
        "check_shapes",
        "check_deterministic",
        "check_batch_independent",
        "check_invertible",
        "check_log_det",
    ]


def test_wrong_log_det_sign_is_caught_with_layer_and_error_size() -> None:
    layer = ScaleShift(3, bug="sign")
    true_ld = float(layer.log_scale.detach().sum())
    with pytest.raises(CheckFailed) as info:
        check_log_det(layer, X)
    msg = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert "ScaleShift(features=3)" in msg and "check_log_det failed" in msg
    assert "worst sample" in msg and "expected" in msg and "got" in msg
    m = re.search(r"max abs difference ([0-9.e+-]+)", msg)
    assert m is not None and float(m.group(1)) == pytest.approx(2 * abs(true_ld), rel=1e-6)
    assert info.value.result.max_error == pytest.approx(2 * abs(true_ld), rel=1e-6)
    # The sign error also breaks the forward/inverse consistency of the log-dets.
    with pytest.raises(CheckFailed, match=r"log-det"):
        check_invertible(layer, X)


def test_non_inverse_is_caught_and_error_size_reported() -> None:
    layer = ScaleShift(3, bug="inverse", error=1e-6)
    result = check_invertible(layer, X, raise_on_failure=False)
    assert not result and result.check == "check_invertible"
    assert "inverse(forward(x)) != x" in result.message or "forward(inverse(x)) != x" in result.message
    assert "ScaleShift" in result.message
    # x * s / (s (1 + e)) - x ~ -e x: the error is about 1e-6 * |x|max
    assert 1e-7 < result.max_error < 1e-5
    assert result.worst_sample in (0, 3)  # the largest |x| are in the first and last rows
    with pytest.raises(CheckFailed, match=r"ScaleShift\(features=3\).*max abs difference"):
        check_invertible(layer, X)
    # Below the tolerance it passes: the check measures, it does not guess.
    assert check_invertible(ScaleShift(3, bug="inverse", error=1e-14), X)


def test_log_det_offset_passes_invertibility_but_fails_jacobian() -> None:
    layer = ScaleShift(3, bug="offset", error=1e-5)
    assert check_invertible(layer, X)
    result = check_log_det(layer, X, raise_on_failure=False)
    assert not result
    assert result.max_error == pytest.approx(1e-5, rel=1e-4)
    assert check_log_det(ScaleShift(3, bug="offset", error=1e-10), X)  # below atol=1e-8


def test_shape_dtype_determinism_and_batch_independence_checks() -> None:
    with pytest.raises(CheckFailed, match=r"logabsdet is \(4, 1\)"):
        check_shapes(ScaleShift(3, bug="shape"), X)
    with pytest.raises(CheckFailed, match=r"shape"):
        check_log_det(ScaleShift(3, bug="shape"), X)
    with pytest.raises(CheckFailed, match=r"torch.float32, expected \(4,\) torch.float64"):
        check_shapes(ScaleShift(3, bug="float32"), X)
    with pytest.raises(CheckFailed, match=r"check_deterministic failed for ScaleShift"):
        check_deterministic(ScaleShift(3, bug="noise"), X)
    with pytest.raises(CheckFailed, match=r"check_batch_independent failed"):
        check_batch_independent(ScaleShift(3, bug="batch"), X)
    summary = check_transform(ScaleShift(3, bug="sign"), X, raise_on_failure=False)
    assert not summary and "check_log_det failed" in summary.message


def test_nan_output_fails() -> None:
    class NaNLayer(ScaleShift):
        def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
            x, ld = super()._inverse(y, context)
            return x * float("nan"), ld

    result = check_invertible(NaNLayer(3), X, raise_on_failure=False)
    assert not result and "NaNLayer" in result.message and "inverse(x) is NaN or inf" in result.message


def test_checks_do_not_modify_the_layer() -> None:
    layer = flowkit.ActNorm(3).train()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    check_transform(layer, X.float() * 3 + 1)
    after = layer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert layer.training and not bool(layer.initialized)
    assert next(layer.parameters()).dtype == torch.float32


def test_randomize_parameters_leaves_identity_and_is_seeded() -> None:
    x = torch.randn(5, 4)
    fresh = flowkit.AffineCoupling(4, hidden_features=8)
    assert torch.equal(fresh(x)[0], x)  # identity at init: a wrong log-det could hide here
    torch.manual_seed(0)
    a = randomize_parameters(flowkit.AffineCoupling(4, hidden_features=8), seed=3)
    torch.manual_seed(0)
    b = randomize_parameters(flowkit.AffineCoupling(4, hidden_features=8), seed=3)
    ya, lda = a(x)
    assert not torch.allclose(ya, x) and lda.abs().min() > 0
    assert torch.equal(ya, b(x)[0])
    norm = randomize_parameters(flowkit.ActNorm(4), seed=1)
    assert bool(norm.initialized)  # the random parameters survive the first training forward
    p = norm.log_scale.detach().clone()
    norm.train()(x)
    assert torch.equal(norm.log_scale.detach(), p)


def test_registry_register_build_and_reject() -> None:
    specs = registered_layers()
    assert {"AffineCoupling", "ActNorm", "ConditionalActNorm", "Sequential", "glow"} <= set(specs)
    assert get_layer("ConditionalActNorm").needs_context
    assert not get_layer("ActNorm").accepts_context
    with pytest.raises(ValueError, match="does not support"):
        get_layer("ConditionalActNorm").build(3, 0)
    with pytest.raises(KeyError, match="no layer registered"):
        get_layer("NoSuchLayer")
    with pytest.raises(ValueError, match="already registered"):
        register_layer("ActNorm", lambda d, c: flowkit.ActNorm(d))

    try:

        @register_layer("UserScaleShift", context="never", options={"features_hint": (0,)})
        def make(features: int, context_features: int, features_hint: int = 0) -> ScaleShift:
            return ScaleShift(features)

        assert "UserScaleShift" in registered_layers()
        assert isinstance(get_layer("UserScaleShift").build(2), ScaleShift)
    finally:
        unregister_layer("UserScaleShift")
    assert "UserScaleShift" not in registered_layers()


def test_run_property_checks_on_user_layers() -> None:
    assert run_property_checks(ScaleShift, context="never", max_examples=5) == 5
    assert "ScaleShift" not in " ".join(registered_layers())  # temporary registration removed

    def broken(features: int, context_features: int) -> ScaleShift:
        return ScaleShift(features, bug="sign")

    with pytest.raises(CheckFailed, match=r"ScaleShift"):
        run_property_checks(broken, context="never", max_examples=5)


@given(fst.shapes(max_batch=4, max_features=5))
def test_shapes_strategy(shape: tuple[int, int]) -> None:
    batch, features = shape
    assert 1 <= batch <= 4 and 1 <= features <= 5


@given(fst.shapes(min_features=1, max_features=9, even=True))
def test_even_shapes_strategy(shape: tuple[int, int]) -> None:
    assert shape[1] % 2 == 0 and 2 <= shape[1] <= 9


@given(st.integers(1, 4), st.integers(0, 3), st.data())
def test_data_and_context_strategies(batch: int, c: int, draw: st.DataObject) -> None:
    x = draw.draw(fst.data(batch, 3))
    assert x.shape == (batch, 3) and x.dtype == torch.float64
    assert torch.isfinite(x).all() and x.abs().max() <= fst.DATA_BOUND
    ctx = draw.draw(fst.contexts(batch, c))
    if c == 0:
        assert ctx is None
    else:
        assert ctx.shape == (batch, c) and ctx.dtype == torch.float64 and torch.isfinite(ctx).all()


@given(fst.layer_configs())
def test_layer_configs_are_supported_and_build(config: fst.LayerConfig) -> None:
    spec = get_layer(config.name)
    assert spec.supports(config.features, config.context_features, config.options)
    assert set(config.options) == set(spec.options)
    for key, value in config.options.items():
        assert value in spec.options[key]
    t = config.build()
    assert isinstance(t, nn.Module)
    x = torch.zeros(2, config.features)
    ctx = torch.zeros(2, config.context_features) if config.context_features else None
    y, ld = t(x, ctx)
    assert y.shape == x.shape and ld.shape == (2,)


@given(fst.layer_cases(names=["AffineCoupling"]))
def test_layer_cases_are_consistent_and_non_identity(case: fst.LayerCase) -> None:
    assert case.x.shape[1] == case.config.features
    assert (case.context is None) == (case.config.context_features == 0)
    y, ld = case.transform.double()(case.x, case.context)
    # Randomized parameters: the zero-initialised last layer moved, so the scales are not 1.
    assert float(ld.detach().abs().min()) > 0


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "testing.md").read_text()
    example = text.split("## A complete example")[1].split("```python")[1].split("```")[0]
    exec(compile(example, "docs/testing.md", "exec"), {"__name__": "docs_example"})
    out = capsys.readouterr().out
    assert "check_transform passed for ConditionalShiftScale" in out
    assert "20 random examples passed" in out
    assert "caught: check_log_det failed for Buggy" in out or "caught: check_invertible failed for Buggy" in out
