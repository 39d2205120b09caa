"""Direct tests of StandardNormal, Flow and the glow/realnvp builders."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import flowkit
from flowkit import (
    ActNorm,
    AffineCoupling,
    ConditionalActNorm,
    Flow,
    InputError,
    Invertible1x1,
    Reverse,
    StandardNormal,
    Switch,
    glow,
    realnvp,
)


def perturb(module: nn.Module, scale: float = 0.2, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for m in module.modules():
            if isinstance(m, (ActNorm, ConditionalActNorm)):
                m.initialized.fill_(True)
    return module


def cond_flow(dtype: torch.dtype = torch.float32) -> Flow:
    torch.manual_seed(0)
    flow = glow(5, context_features=3, num_layers=2, hidden_features=16, seed=0)
    return perturb(flow.to(dtype)).eval()


# -- StandardNormal --------------------------------------------------------------------------
@pytest.mark.parametrize("std", [1.0, 0.25])
def test_standard_normal_log_prob_and_sample(std: float) -> None:
    base = StandardNormal(4, std=std).double()
    z = torch.randn(7, 4, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, std).log_prob(z).sum(-1)
    assert torch.allclose(base.log_prob(z), expected, atol=1e-12)
    assert base.log_prob(z).dtype == torch.float64
    torch.manual_seed(0)
    s = base.sample(20000)
    assert s.shape == (20000, 4) and s.dtype == torch.float64
    assert abs(s.std().item() - std) < 0.02 * std
    assert "std" in dict(base.named_buffers())
    with pytest.raises(ValueError):
        StandardNormal(4, std=0.0)
    with pytest.raises(ValueError):
        StandardNormal(0)


# -- Flow ------------------------------------------------------------------------------------
def test_flow_log_prob_is_change_of_variables() -> None:
    flow = cond_flow(torch.float64)
    x, c = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    lp = flow.log_prob(x, context=c)
    assert lp.shape == (3,) and lp.dtype == torch.float64
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda r: flow.transform(r[None], c[b : b + 1])[0][0], x[b])
        z, _ = flow.transform(x[b : b + 1], c[b : b + 1])
        expected = flow.base.log_prob(z)[0] + torch.linalg.slogdet(jac)[1]
        assert torch.allclose(lp[b], expected, atol=1e-8)
    assert torch.equal(flow(x, c), lp)


def test_flow_density_integrates_to_one_in_2d() -> None:
    # A non-trivial 2-D flow: its density on a fine grid sums to ~1.
    torch.manual_seed(3)
    flow = perturb(realnvp(2, num_layers=3, hidden_features=8, clamp="tanh"), scale=0.2).double().eval()
    samples = flow.sample(2000)
    assert samples.std(0).max() > 1.5  # clearly not the base Gaussian
    g = torch.linspace(-12, 12, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    with torch.no_grad():
        mass = flow.log_prob(pts).exp().sum().item() * (g[1] - g[0]).item() ** 2
    assert abs(mass - 1.0) < 1e-3


def test_sample_shapes_with_and_without_context() -> None:
    flow = cond_flow()
    c = torch.randn(4, 3)
    assert flow.sample(6, context=c).shape == (4, 6, 5)
    x, lp = flow.sample_and_log_prob(6, context=c)
    assert x.shape == (4, 6, 5) and lp.shape == (4, 6)
    uncond = perturb(glow(5, num_layers=2, hidden_features=16)).eval()
    assert uncond.sample(9).shape == (9, 5)
    x, lp = uncond.sample_and_log_prob(9)
    assert x.shape == (9, 5) and lp.shape == (9,)
    with pytest.raises(ValueError, match="num_samples"):
        uncond.sample(0)
    with pytest.raises(InputError):
        flow.sample(2, context=torch.randn(4))


def test_samples_use_their_context_row() -> None:
    # Sample (b, s) must be decoded with context row b (einops repeat, not tile).
    flow = cond_flow(torch.float64)
    c = torch.randn(3, 3, dtype=torch.float64)
    torch.manual_seed(11)
    x, lp = flow.sample_and_log_prob(4, context=c)
    for b in range(3):
        lp_b = flow.log_prob(x[b], context=c[b : b + 1].expand(4, 3))
        assert torch.allclose(lp_b, lp[b], atol=1e-8)


def test_sample_and_log_prob_consistent() -> None:
    flow = cond_flow(torch.float64)
    c = torch.randn(2, 3, dtype=torch.float64)
    x, lp = flow.sample_and_log_prob(5, context=c, temperature=0.7)
    again = flow.log_prob(x.reshape(10, 5), context=c.repeat_interleave(5, dim=0)).reshape(2, 5)
    assert torch.allclose(lp, again, atol=1e-8)


def test_temperature() -> None:
    flow = cond_flow(torch.float64)
    c = torch.randn(2, 3, dtype=torch.float64)
    a = flow.sample(3, context=c, temperature=0.0)
    b = flow.sample(3, context=c, temperature=0.0)
    assert torch.equal(a, b)
    mode, _ = flow.transform.inverse(torch.zeros(2, 5, dtype=torch.float64), c)
    assert torch.allclose(a, mode[:, None, :].expand(2, 3, 5), atol=1e-12)
    assert not torch.allclose(a[0, 0], a[1, 0])  # context-dependent mode
    torch.manual_seed(0)
    scaled = Flow(Reverse(3), StandardNormal(3, std=0.25)).sample(20000, temperature=0.5)
    assert abs(scaled.std().item() - 0.125) < 0.005


def test_reparameterized_gradients_reach_parameters_and_context() -> None:
    flow = cond_flow()
    c = torch.randn(4, 3, requires_grad=True)
    x = flow.sample(5, context=c)
    x.square().sum().backward()
    assert c.grad is not None and c.grad.abs().sum() > 0
    grads = {n: p.grad for n, p in flow.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert sum(g.abs().sum().item() for g in grads.values()) > 0
    coupling_grads = [g for n, g in grads.items() if "net.0.weight" in n]
    assert coupling_grads and all(g.abs().sum() > 0 for g in coupling_grads)


def test_float64_end_to_end() -> None:
    flow = cond_flow(torch.float64)
    assert all(p.dtype == torch.float64 for p in flow.parameters())
    assert all(b.dtype in (torch.float64, torch.bool, torch.long) for b in flow.buffers())
    c = torch.randn(3, 3, dtype=torch.float64)
    x = flow.sample(4, context=c)
    assert x.dtype == torch.float64
    flat, cc = x.reshape(12, 5), c.repeat_interleave(4, dim=0)
    z, ladj = flow.transform(flat, cc)
    assert ladj.dtype == torch.float64
    back, _ = flow.transform.inverse(z, cc)
    assert torch.allclose(back, flat, atol=1e-12)  # only reachable in float64
    # float64 resolves differences float32 cannot
    lp = flow.log_prob(flat, cc)
    lp_eps = flow.log_prob(flat + 1e-9, cc)
    assert (lp - lp_eps).abs().max() > 0


def test_flow_validation() -> None:
    flow = cond_flow()
    with pytest.raises(InputError, match="needs context"):
        flow.log_prob(torch.randn(2, 5))
    with pytest.raises(InputError, match=r"shape \(batch, 5\)"):
        flow.log_prob(torch.randn(2, 4), torch.randn(2, 3))
    with pytest.raises(TypeError, match="inverse"):
        Flow(nn.Linear(3, 3), StandardNormal(3))
    with pytest.raises(InputError, match="needs context"):
        flow.sample(3)


# -- builders --------------------------------------------------------------------------------
def _layer_types(flow: Flow) -> list[type]:
    return [type(t) for t in flow.transform]


def test_glow_structure() -> None:
    flow = glow(6, context_features=4, num_layers=3, hidden_features=8)
    assert isinstance(flow, Flow) and isinstance(flow.base, StandardNormal)
    assert _layer_types(flow) == [ConditionalActNorm, AffineCoupling, Invertible1x1, Switch] * 3
    assert _layer_types(glow(6, num_layers=2, hidden_features=8)) == [ActNorm, AffineCoupling, Invertible1x1, Switch] * 2
    official = glow(
        6,
        4,
        num_layers=2,
        hidden_features=8,
        conv1x1=False,
        clamp="sigmoid",
        actnorm_scale="sigmoid",
        net_layers=1,
        base_std=0.25,
    )
    assert _layer_types(official) == [ConditionalActNorm, AffineCoupling, Switch] * 2
    assert official.transform[1].clamp == "sigmoid" and official.transform[0].scale == "sigmoid"
    assert abs(official.base.std.item() - 0.25) < 1e-7
    assert _layer_types(glow(6, num_layers=1, hidden_features=8, actnorm=False, conv1x1=False)) == [AffineCoupling, Switch]
    a, b = glow(4, num_layers=2, hidden_features=8, seed=5), glow(4, num_layers=2, hidden_features=8, seed=5)
    assert torch.equal(a.transform[2].weight(), b.transform[2].weight())


def test_realnvp_structure() -> None:
    flow = realnvp(5, context_features=2, num_layers=2, hidden_features=8)
    assert _layer_types(flow) == [AffineCoupling, Switch] * 2
    alt = realnvp(5, num_layers=3, hidden_features=8, mask="alternate")
    assert _layer_types(alt) == [AffineCoupling] * 3
    assert [t.flip_mask for t in alt.transform] == [False, True, False]
    assert _layer_types(realnvp(5, num_layers=1, hidden_features=8, actnorm=True)) == [ActNorm, AffineCoupling, Switch]


@pytest.mark.parametrize(
    "build",
    [
        lambda: glow(5, 3, num_layers=2, hidden_features=8),
        lambda: glow(5, 3, num_layers=2, hidden_features=8, clamp="sigmoid", actnorm_scale="sigmoid", conv1x1=False),
        lambda: realnvp(5, 3, num_layers=2, hidden_features=8, mask="alternate"),
    ],
)
def test_builders_invertible_and_logdet(build) -> None:
    torch.manual_seed(0)
    flow = perturb(build()).double().eval()
    x, c = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    z, ladj = flow.transform(x, c)
    assert torch.allclose(flow.transform.inverse(z, c)[0], x, atol=1e-10)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda r: flow.transform(r[None], c[b : b + 1])[0][0], x[b])
        assert torch.allclose(ladj[b], torch.linalg.slogdet(jac)[1], atol=1e-8)


def test_builder_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown clamp"):
        glow(4, clamp="relu")
    with pytest.raises(ValueError, match="unknown mask"):
        realnvp(4, mask="stripes")
    with pytest.raises(ValueError, match="features"):
        glow(1)
    with pytest.raises(ValueError, match="num_layers"):
        realnvp(4, num_layers=0)
    with pytest.raises(ValueError, match="context_features"):
        glow(4, context_features=-2)
    with pytest.raises(ValueError, match="unknown scale"):
        glow(4, context_features=2, actnorm_scale="softplus")


def test_training_step_decreases_nll() -> None:
    # A quick sanity fit: a conditional flow learns x = 2 * c + noise better than at start.
    torch.manual_seed(0)
    flow = glow(2, context_features=2, num_layers=2, hidden_features=32)
    c = torch.randn(256, 2)
    x = 2 * c + 0.1 * torch.randn(256, 2)
    flowkit.data_init(flow, x, c)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    start = -flow.log_prob(x, c).mean().item()
    for _ in range(60):
        loss = -flow.log_prob(x, c).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.isfinite(loss.item()) and loss.item() < start - 0.5
