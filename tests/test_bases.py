"""DiagonalNormal and GaussianMixture: log_prob against direct computations, conditional
parameters, temperature, reparameterized samples, inside Flow; check_base catches a bad base."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import flowkit
from flowkit import DiagonalNormal, GaussianMixture
from flowkit.testing import CheckFailed, check_base, randomize_parameters


def _direct_mixture_log_prob(z: Tensor, log_w: Tensor, means: Tensor, log_std: Tensor) -> Tensor:
    # sum_k w_k prod_i N(z_i; mu_ki, sigma_ki), by plain loops in float64.
    out = torch.empty(z.shape[0], dtype=torch.float64)
    for b in range(z.shape[0]):
        total = 0.0
        for k in range(means.shape[-2]):
            dens = math.exp(float(log_w[b, k]))
            for i in range(z.shape[1]):
                mu, s = float(means[b, k, i]), math.exp(float(log_std[b, k, i]))
                dens *= math.exp(-0.5 * ((float(z[b, i]) - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))
            total += dens
        out[b] = math.log(total)
    return out


@pytest.mark.parametrize("context_features", [0, 2])
def test_mixture_log_prob_against_a_direct_computation(context_features: int) -> None:
    torch.manual_seed(0)
    base = randomize_parameters(GaussianMixture(3, 4, context_features, hidden_features=8), seed=1).double()
    z = torch.randn(6, 3, dtype=torch.float64)
    c = torch.randn(6, context_features, dtype=torch.float64) if context_features else None
    log_w, means, log_std = (t.detach() for t in base.params(c))
    b = z.shape[0]
    expected = _direct_mixture_log_prob(z, log_w.expand(b, -1), means.expand(b, -1, -1), log_std.expand(b, -1, -1))
    assert torch.allclose(base.log_prob(z, c), expected, atol=1e-12)
    # and torch.distributions agrees
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=log_w),
        torch.distributions.Independent(torch.distributions.Normal(means, log_std.exp()), 1),
    )
    assert torch.allclose(base.log_prob(z, c), ref.log_prob(z), atol=1e-12)


def test_diagonal_normal_log_prob_and_standard_start() -> None:
    base = DiagonalNormal(4, 3, hidden_features=8)
    z, c = torch.randn(5, 4), torch.randn(5, 3)
    assert torch.allclose(base.log_prob(z, c), flowkit.StandardNormal(4).log_prob(z), atol=1e-6)  # N(0, I) at init
    randomize_parameters(base, seed=2)
    loc, log_std = base.params(c)
    ref = torch.distributions.Normal(loc[:, 0], log_std[:, 0].exp()).log_prob(z).sum(-1)
    assert torch.allclose(base.log_prob(z, c), ref, atol=1e-5)


def test_temperature_and_reparameterized_samples() -> None:
    torch.manual_seed(0)
    base = randomize_parameters(DiagonalNormal(2, 2, hidden_features=8), seed=3)
    c = torch.randn(3, 2, requires_grad=True)
    s0 = base.sample(5, c, temperature=0.0)
    loc, _ = base.params(c)
    assert torch.allclose(s0, loc.expand(-1, 5, -1))  # T = 0: the mean
    s = base.sample(4000, c.detach(), temperature=0.5)
    _, log_std = base.params(c.detach())
    assert torch.allclose(s.std(dim=1), 0.5 * log_std[:, 0].exp(), rtol=0.1)
    base.sample(3, c).sum().backward()  # gradients reach the context and the parameters
    assert c.grad is not None and c.grad.abs().sum() > 0
    mix = randomize_parameters(GaussianMixture(2, 3, 2, hidden_features=8), seed=4)
    c.grad = None
    mix.sample(3, c).sum().backward()
    assert c.grad.abs().sum() > 0
    # T = 0: every sample is one of the component means
    torch.manual_seed(1)
    s0 = mix.sample(50, c.detach(), temperature=0.0)
    _, means, _ = mix.params(c.detach())
    dist = (s0.unsqueeze(2) - means.unsqueeze(1)).abs().sum(-1).min(-1).values
    assert dist.max() < 1e-6


def test_mixture_samples_follow_the_weights() -> None:
    torch.manual_seed(0)
    mix = GaussianMixture(1, 2, log_std_bound=5.0)
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.0, math.log(3.0)]))
        mix.means.copy_(torch.tensor([[-10.0], [10.0]]))
    s = mix.sample(20000)
    assert abs(float((s > 0).float().mean()) - 0.75) < 0.02


@pytest.mark.parametrize("builder", [flowkit.nsf, flowkit.maf])
@pytest.mark.parametrize("base_kind", ["diag", "mixture"])
def test_flows_with_conditional_bases(builder, base_kind: str) -> None:
    torch.manual_seed(0)
    base = DiagonalNormal(3, 2, hidden_features=8) if base_kind == "diag" else GaussianMixture(3, 4, 2, hidden_features=8)
    flow = builder(3, 2, num_layers=2, hidden_features=16, base=base)
    randomize_parameters(flow, seed=5, scale=0.3)
    flow = flow.double()
    c = torch.randn(4, 2, dtype=torch.float64)
    x, lp = flow.sample_and_log_prob(6, c, temperature=0.8)
    assert x.shape == (4, 6, 3) and lp.shape == (4, 6)
    assert torch.allclose(lp.reshape(-1), flow.log_prob(x.reshape(-1, 3), c.repeat_interleave(6, 0)), atol=1e-9)
    with pytest.raises(flowkit.InputError, match="needs context"):
        flow.base.log_prob(torch.randn(2, 3, dtype=torch.float64))


def test_check_base_catches_an_unnormalized_density() -> None:
    class Unnormalized(DiagonalNormal):
        def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
            return super()._log_prob(z, context) + 0.1

    with pytest.raises(CheckFailed, match="integrates to 1.10"):
        check_base(Unnormalized(2), torch.randn(3, 2))
    assert check_base(DiagonalNormal(2), torch.randn(3, 2))


def test_errors() -> None:
    with pytest.raises(ValueError, match="components"):
        GaussianMixture(2, 0)
    with pytest.raises(ValueError, match="features"):
        DiagonalNormal(0)
    with pytest.raises(flowkit.InputError, match="shape"):
        DiagonalNormal(2).log_prob(torch.randn(3, 4))
    with pytest.raises(flowkit.InputError, match="context_repeats"):
        GaussianMixture(2, 2, 1).log_prob(torch.randn(6, 2), torch.randn(2, 1), context_repeats=2)
