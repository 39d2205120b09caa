"""Direct tests of the core layers: exact inverses, log-dets against autograd Jacobians,
identity at initialization, masks, ActNorm initialization semantics, input validation."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import flowkit
from flowkit import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ConditionalActNorm,
    ElementwiseScale,
    InputError,
    Inverse,
    Invertible1x1,
    Permutation,
    Reverse,
    Sequential,
    Switch,
)
from flowkit.nn import MLP, soft_log_scale
from flowkit.transforms.coupling import coupling_indices

D, C, B = 5, 3, 4


# -- helpers ---------------------------------------------------------------------------------
def perturb(module: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Moves every parameter away from its (often identity) initialization and marks
    ActNorm layers initialized, so the tests exercise a generic layer."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for m in module.modules():
            if isinstance(m, (ActNorm, ConditionalActNorm)):
                m.initialized.fill_(True)
    return module


def jacobian_logdet(t: nn.Module, x: Tensor, context: Tensor | None) -> Tensor:
    """log|det J| of each row by autograd: one (D, D) Jacobian per sample."""
    out = []
    for b in range(x.shape[0]):
        ctx = None if context is None else context[b : b + 1]

        def f(row: Tensor) -> Tensor:
            return t(row.unsqueeze(0), ctx)[0].squeeze(0)

        jac = torch.autograd.functional.jacobian(f, x[b])
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


# name -> (factory, context_features); every factory builds a float32 module
LAYERS: dict[str, tuple[Callable[[], nn.Module], int]] = {}
for _clamp in ("atan", "tanh", "sigmoid"):
    for _mask in ("half", "alternate"):
        for _ctx in (0, C):
            LAYERS[f"affine-{_clamp}-{_mask}-c{_ctx}"] = (
                lambda clamp=_clamp, mask=_mask, ctx=_ctx: AffineCoupling(D, ctx, hidden_features=16, num_layers=2, clamp=clamp, mask=mask),
                _ctx,
            )
for _mask in ("half", "alternate"):
    for _ctx in (0, C):
        LAYERS[f"additive-{_mask}-c{_ctx}"] = (
            lambda mask=_mask, ctx=_ctx: AdditiveCoupling(D, ctx, hidden_features=16, num_layers=1, mask=mask),
            _ctx,
        )
LAYERS.update(
    {
        "affine-even-flip": (lambda: AffineCoupling(6, C, hidden_features=16, flip_mask=True), C),
        "affine-1-feature": (lambda: AffineCoupling(1, C, hidden_features=8), C),
        "affine-1-feature-noctx": (lambda: AffineCoupling(1, hidden_features=8), 0),
        "actnorm": (lambda: ActNorm(D), 0),
        "cond-actnorm-exp": (lambda: ConditionalActNorm(D, C, hidden_features=16), C),
        "cond-actnorm-sigmoid": (lambda: ConditionalActNorm(D, C, hidden_features=16, scale="sigmoid"), C),
        "elementwise-scale": (lambda: ElementwiseScale(D, offset=5.0), 0),
        "invertible1x1": (lambda: Invertible1x1(D, seed=0), 0),
        "permutation": (lambda: Permutation(D, seed=3), 0),
        "reverse": (lambda: Reverse(D), 0),
        "switch": (lambda: Switch(D), 0),
        "switch-even": (lambda: Switch(6), 0),
        "inverse-affine": (lambda: Inverse(AffineCoupling(D, C, hidden_features=16)), C),
        "sequential": (
            lambda: Sequential(
                ConditionalActNorm(D, C, hidden_features=16),
                AffineCoupling(D, C, hidden_features=16, clamp="tanh"),
                Invertible1x1(D, seed=1),
                Switch(D),
                ActNorm(D),
                AdditiveCoupling(D, hidden_features=16),
                ElementwiseScale(D),
                Reverse(D),
            ),
            C,
        ),
    }
)


def make(name: str, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor | None]:
    factory, ctx = LAYERS[name]
    torch.manual_seed(seed)
    t = perturb(factory().double(), seed=seed).eval()
    features = t.features
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, features, generator=gen, dtype=torch.float64)
    context = torch.randn(B, ctx, generator=gen, dtype=torch.float64) if ctx else None
    return t, x, context


# -- exactness -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_inverse_exact_float64(name: str) -> None:
    t, x, context = make(name)
    y, ladj = t(x, context)
    assert y.shape == x.shape and y.dtype == torch.float64
    assert ladj.shape == (B,) and ladj.dtype == torch.float64
    x2, ladj_inv = t.inverse(y, context)
    assert torch.allclose(x2, x, atol=1e-10, rtol=0), (x2 - x).abs().max()
    assert torch.allclose(ladj_inv, -ladj, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_log_det_matches_jacobian(name: str) -> None:
    t, x, context = make(name, seed=5)
    _, ladj = t(x, context)
    expected = jacobian_logdet(t, x, context)
    assert torch.allclose(ladj, expected, atol=1e-8, rtol=0), (ladj, expected)
    # and the inverse's log-det is that of the inverse map
    y, _ = t(x, context)
    _, ladj_inv = t.inverse(y, context)
    expected_inv = jacobian_logdet(Inverse(t), y, context)
    assert torch.allclose(ladj_inv, expected_inv, atol=1e-8, rtol=0)


def test_perturbation_makes_layers_non_trivial() -> None:
    # Guards the two tests above: the perturbed layers are not the identity.
    for name in ("affine-atan-half-c3", "additive-half-c0", "cond-actnorm-exp", "invertible1x1", "actnorm"):
        t, x, context = make(name)
        y, ladj = t(x, context)
        assert not torch.allclose(y, x, atol=1e-3), name


def test_float32_logdet_dtype() -> None:
    for name in sorted(LAYERS):
        factory, ctx = LAYERS[name]
        t = perturb(factory()).eval()
        x = torch.randn(3, t.features)
        context = torch.randn(3, ctx) if ctx else None
        y, ladj = t(x, context)
        assert y.dtype == torch.float32 and ladj.dtype == torch.float32 and ladj.shape == (3,), name


# -- identity at initialization --------------------------------------------------------------
@pytest.mark.parametrize("clamp", ["atan", "tanh"])
@pytest.mark.parametrize("mask", ["half", "alternate"])
@pytest.mark.parametrize("features", [1, 4, 7])
def test_fresh_affine_coupling_is_identity(clamp: str, mask: str, features: int) -> None:
    t = AffineCoupling(features, C, hidden_features=16, clamp=clamp, mask=mask)
    x, c = torch.randn(6, features), torch.randn(6, C)
    y, ladj = t(x, c)
    assert torch.equal(y, x)
    assert torch.equal(ladj, torch.zeros(6))


def test_fresh_sigmoid_coupling_scales_by_sigmoid_two() -> None:
    t = AffineCoupling(4, hidden_features=16, clamp="sigmoid")
    x = torch.randn(6, 4)
    y, ladj = t(x)
    s = torch.sigmoid(torch.tensor(2.0))
    assert torch.equal(y[:, :2], x[:, :2])
    assert torch.allclose(y[:, 2:], x[:, 2:] * s)
    assert torch.allclose(ladj, torch.full((6,), 2 * math.log(s.item())))


def test_fresh_additive_and_conditional_actnorm_are_identity() -> None:
    x, c = torch.randn(6, D), torch.randn(6, C)
    for t in (AdditiveCoupling(D, C, hidden_features=16), ConditionalActNorm(D, C, hidden_features=16)):
        y, ladj = t(x, c)
        assert torch.equal(y, x) and torch.equal(ladj, torch.zeros(6))


def test_mlp_zero_last_and_depth() -> None:
    net = MLP(3, 4, hidden_features=8, num_layers=1)
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear]
    assert torch.equal(net(torch.randn(5, 3)), torch.zeros(5, 4))
    assert len(MLP(3, 4, 8, num_layers=3)) == 7
    assert net(torch.randn(5, 3)).shape == (5, 4)
    assert MLP(3, 4, 8, zero_last=False)(torch.randn(5, 3)).abs().sum() > 0
    with pytest.raises(ValueError):
        MLP(3, 4, 8, num_layers=0)


# -- masks -----------------------------------------------------------------------------------
def test_mask_indices_odd_features() -> None:
    ident, trans = coupling_indices(5, "half")
    assert ident.tolist() == [0, 1] and trans.tolist() == [2, 3, 4]
    ident, trans = coupling_indices(5, "alternate")
    assert ident.tolist() == [1, 3] and trans.tolist() == [0, 2, 4]
    ident, trans = coupling_indices(5, "alternate", flip=True)
    assert ident.tolist() == [0, 2, 4] and trans.tolist() == [1, 3]


@pytest.mark.parametrize("features", range(2, 10))
def test_switch_alternates_coupling_halves(features: int) -> None:
    # coupling -> Switch -> coupling transforms every original feature, odd D included.
    coupling, switch = AffineCoupling(features, hidden_features=4), Switch(features)
    first = set(coupling.transform_idx.tolist())
    second = {switch.indices[i].item() for i in coupling.transform_idx.tolist()}
    assert first | second == set(range(features))
    # and the same through actual dependence: perturb, then check the Jacobian is dense
    chain = perturb(Sequential(coupling, switch, AffineCoupling(features, hidden_features=4), Switch(features))).double()
    x = torch.randn(features, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda r: chain(r[None])[0][0], x)
    # each input feature is moved (not only passed through) by some coupling
    assert all(jac[:, j].abs().sum() > 0 for j in range(features))
    assert not torch.allclose(jac, torch.eye(features, dtype=torch.float64).index_select(0, switch.indices))


def test_masks_and_permutations_are_buffers() -> None:
    t = AffineCoupling(5, hidden_features=4)
    buffers = dict(t.named_buffers())
    assert {"identity_idx", "transform_idx", "inverse_idx"} <= set(buffers)
    assert all(b.dtype == torch.long for b in buffers.values())
    assert "indices" in dict(Switch(5).named_buffers())
    lin = Invertible1x1(4, seed=0)
    assert {"perm", "sign"} <= set(dict(lin.named_buffers()))
    assert {"lower", "upper", "log_s"} == set(dict(lin.named_parameters()))
    assert lin.double().perm.dtype == torch.float64


def test_permutation_variants() -> None:
    x = torch.arange(6.0).reshape(1, 6)
    assert Reverse(6)(x)[0].tolist() == [[5, 4, 3, 2, 1, 0]]
    assert Switch(6)(x)[0].tolist() == [[3, 4, 5, 0, 1, 2]]
    p = Permutation(6, indices=torch.tensor([1, 0, 2, 5, 4, 3]))
    assert p(x)[0].tolist() == [[1, 0, 2, 5, 4, 3]]
    assert torch.equal(Permutation(6, seed=7).indices, Permutation(6, seed=7).indices)
    assert not all(torch.equal(Permutation(16, seed=s).indices, torch.arange(16)) for s in range(3))
    with pytest.raises(ValueError, match="permutation"):
        Permutation(3, indices=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="permutation"):
        Permutation(3, indices=torch.tensor([0, 1]))


def test_invertible1x1_seeded_rotation_and_float32_inverse() -> None:
    a, b = Invertible1x1(8, seed=3), Invertible1x1(8, seed=3)
    assert torch.equal(a.weight(), b.weight())
    w = a.weight().double()
    assert torch.allclose(w @ w.T, torch.eye(8, dtype=torch.float64), atol=1e-5)  # a rotation
    assert a.log_s.sum().abs() < 1e-5  # |det| = 1
    t = perturb(Invertible1x1(64, seed=0), scale=0.05)
    x = torch.randn(16, 64)
    y, _ = t(x)
    assert torch.allclose(t.inverse(y)[0], x, atol=1e-4)


# -- ActNorm ---------------------------------------------------------------------------------
def test_actnorm_initializes_on_first_training_forward() -> None:
    t = ActNorm(4)
    assert not bool(t.initialized)
    x = 3.0 + 2.0 * torch.randn(512, 4, dtype=torch.float64)
    t.double().train()
    y, ladj = t(x)
    assert bool(t.initialized)
    assert torch.allclose(y.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(y.std(0, unbiased=False), torch.ones(4, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(ladj, -torch.log(x.std(0, unbiased=False)).sum().expand(512), atol=1e-5)
    bias = t.bias.detach().clone()
    t(torch.randn(64, 4, dtype=torch.float64) * 10)  # not re-initialized
    assert torch.equal(t.bias.detach(), bias)


def test_actnorm_no_init_in_eval_or_inverse() -> None:
    t = ActNorm(3).eval()
    x = 5 + torch.randn(8, 3)
    y, _ = t(x)
    assert torch.equal(y, x) and not bool(t.initialized)
    t.train()
    t.inverse(x)
    assert not bool(t.initialized)
    with pytest.raises(InputError, match="at least 2 rows"):
        t(torch.randn(1, 3))


def test_actnorm_not_reinitialized_after_load_state_dict() -> None:
    t = ActNorm(3).train()
    t(2 + 3 * torch.randn(100, 3))
    state = t.state_dict()
    assert "initialized" in state and bool(state["initialized"])
    fresh = ActNorm(3)
    fresh.load_state_dict(state)
    fresh.train()
    x = torch.randn(50, 3) * 7 - 4
    y, _ = fresh(x)
    assert torch.equal(fresh.bias, t.bias) and torch.equal(fresh.log_scale, t.log_scale)
    assert torch.allclose(y, t(x)[0])


def test_data_init_glow_normalizes_in_order() -> None:
    torch.manual_seed(0)
    flow = flowkit.glow(6, num_layers=3, hidden_features=16, clamp="tanh", seed=0).eval()
    perturb(flow)  # make the couplings non-trivial, so later ActNorms see non-normal inputs
    for m in flow.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(False)
    x = 4 + 3 * torch.randn(256, 6, dtype=torch.float64)
    flow.double()
    outputs: list[Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: outputs.append(out[0])) for m in flow.modules() if isinstance(m, ActNorm)]
    assert flowkit.data_init(flow, x) is flow
    assert not flow.training  # mode kept
    flow.log_prob(x)
    for h in hooks:
        h.remove()
    acts = [m for m in flow.modules() if isinstance(m, ActNorm)]
    assert len(acts) == 3 and all(bool(m.initialized) for m in acts)
    for out in outputs[-3:]:  # the check pass after data_init
        assert torch.allclose(out.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-8)
        assert torch.allclose(out.std(0, unbiased=False), torch.ones(6, dtype=torch.float64), atol=1e-4)


@pytest.mark.parametrize("scale", ["exp", "sigmoid"])
def test_data_init_conditional_actnorm(scale: str) -> None:
    torch.manual_seed(1)
    t = Sequential(ConditionalActNorm(4, C, hidden_features=16, scale=scale), Switch(4)).double()
    x = -2 + 5 * torch.randn(300, 4, dtype=torch.float64)
    c = torch.randn(300, C, dtype=torch.float64)
    flowkit.data_init(t, x, c)
    assert bool(t[0].initialized)
    y, _ = t[0](x, c)
    assert torch.allclose(y.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(y.std(0, unbiased=False), torch.ones(4, dtype=torch.float64), atol=1e-3)
    # it sets only the last layer's bias, and the layer stays exactly invertible
    y, _ = t(x, c)
    assert torch.allclose(t.inverse(y, c)[0], x, atol=1e-10)


def test_data_init_needs_context_for_conditional() -> None:
    flow = flowkit.glow(4, context_features=2, num_layers=1, hidden_features=8)
    with pytest.raises(InputError, match="context"):
        flowkit.data_init(flow, torch.randn(10, 4))


# -- extreme inputs --------------------------------------------------------------------------
@pytest.mark.parametrize("clamp", ["atan", "tanh", "sigmoid"])
def test_extreme_inputs_are_finite(clamp: str) -> None:
    torch.manual_seed(2)
    t = perturb(AffineCoupling(6, C, hidden_features=32, clamp=clamp), scale=1.0)
    x = 1e4 * torch.randn(64, 6)
    c = 1e4 * torch.randn(64, C)
    y, ladj = t(x, c)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    raw = torch.tensor([-1e30, -1e4, -50.0, 0.0, 50.0, 1e4, 1e30])
    log_s = soft_log_scale(raw, clamp)
    assert torch.isfinite(log_s).all() and (log_s <= (0 if clamp == "sigmoid" else 2.0)).all()
    if clamp != "sigmoid":  # bounded scale: the inverse stays finite too
        assert (log_s >= -2.0).all()
        x2, ladj2 = t.inverse(y, c)
        assert torch.isfinite(x2).all() and torch.isfinite(ladj2).all()
    flow = perturb(flowkit.glow(6, C, num_layers=2, hidden_features=16, clamp=clamp, actnorm_scale="sigmoid"))
    assert torch.isfinite(flow.log_prob(x, c)).all()


def test_soft_clamps_bounds_and_slope() -> None:
    r = torch.linspace(-1e3, 1e3, 2001, dtype=torch.float64)
    for clamp in ("atan", "tanh"):
        ls = soft_log_scale(r, clamp, bound=3.0)
        assert ls.abs().max() <= 3.0 and ls.abs().max() > 2.9
        small = torch.tensor([1e-4], dtype=torch.float64)
        assert torch.allclose(soft_log_scale(small, clamp, 3.0), small, rtol=1e-6)
    moderate = torch.linspace(-30, 30, 61, dtype=torch.float64)
    assert torch.allclose(soft_log_scale(moderate, "sigmoid"), torch.log(torch.sigmoid(moderate + 2)), atol=1e-12)
    assert torch.allclose(soft_log_scale(torch.tensor([-1e4]), "sigmoid"), torch.tensor([-1e4 + 2]))
    assert torch.allclose(soft_log_scale(torch.tensor([0.0]), "sigmoid"), torch.log(torch.sigmoid(torch.tensor([2.0]))))


# -- validation ------------------------------------------------------------------------------
def test_bad_inputs_raise_input_error() -> None:
    t = AffineCoupling(4, C, hidden_features=8)
    x, c = torch.randn(5, 4), torch.randn(5, C)
    with pytest.raises(InputError, match=r"shape \(batch, 4\)"):
        t(torch.randn(5, 3), c)
    with pytest.raises(InputError, match=r"shape \(batch, 4\)"):
        t(torch.randn(4), c)
    with pytest.raises(InputError, match="needs context"):
        t(x)
    with pytest.raises(InputError, match=r"context of shape \(5, 3\)"):
        t(x, torch.randn(5, 2))
    with pytest.raises(InputError, match=r"context of shape \(5, 3\)"):
        t(x, torch.randn(4, C))
    bad = x.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        t(bad, c)
    with pytest.raises(InputError, match="NaN"):
        t.inverse(bad, c)
    bad_c = c.clone()
    bad_c[2, 0] = float("inf")
    with pytest.raises(InputError, match="context contains NaN"):
        t(x, bad_c)
    with pytest.raises(InputError):
        Sequential(ActNorm(4), Switch(4))(torch.randn(5, 6))
    assert issubclass(InputError, ValueError)


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="unknown clamp 'exp'"):
        AffineCoupling(4, clamp="exp")
    with pytest.raises(ValueError, match="unknown mask 'checker'"):
        AffineCoupling(4, mask="checker")
    with pytest.raises(ValueError, match="unknown mask"):
        AdditiveCoupling(4, mask="checker")
    with pytest.raises(ValueError, match="features"):
        AffineCoupling(0)
    with pytest.raises(ValueError, match="context_features"):
        AffineCoupling(4, context_features=-1)
    with pytest.raises(ValueError, match="clamp_bound"):
        AffineCoupling(4, clamp_bound=0.0)
    with pytest.raises(ValueError, match="ActNorm without context"):
        ConditionalActNorm(4, 0)
    with pytest.raises(ValueError, match="unknown scale"):
        ConditionalActNorm(4, 2, scale="softplus")
    with pytest.raises(ValueError, match="no feature to transform"):
        AffineCoupling(1, mask="half", flip_mask=True)
    with pytest.raises(TypeError, match="expected a transform"):
        Sequential(ActNorm(3), nn.Linear(3, 3))


def test_sequential_and_inverse_compose() -> None:
    t = perturb(Sequential(AffineCoupling(4, hidden_features=8), Switch(4), ActNorm(4))).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    y, ladj = t(x)
    parts = torch.zeros(3, dtype=torch.float64)
    h = x
    for layer in t:
        h, layer_ladj = layer(h)
        parts = parts + layer_ladj
    assert torch.allclose(y, h) and torch.allclose(ladj, parts)
    inv = Inverse(t)
    x2, ladj2 = inv(y)
    assert torch.allclose(x2, x, atol=1e-12) and torch.allclose(ladj2, -ladj)
    assert torch.allclose(inv.inverse(x)[0], y)
    assert len(t) == 3 and isinstance(t[1], Switch) and t.features == 4
    assert Sequential([Switch(2), Reverse(2)]).features == 2


def test_sequential_accepts_nflows_transforms() -> None:
    nflows_transforms = pytest.importorskip("nflows.transforms")
    nt = nflows_transforms.ReversePermutation(4)
    t = Sequential(AffineCoupling(4, C, hidden_features=8), nt, Switch(4)).double()
    perturb(t)
    x, c = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, C, dtype=torch.float64)
    y, ladj = t(x, c)
    assert torch.allclose(t.inverse(y, c)[0], x, atol=1e-10)
    assert torch.allclose(ladj, jacobian_logdet(t, x, c), atol=1e-8)
