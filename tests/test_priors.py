"""LNFMM's flow priors are flowkit.glow: the same layers, parameters and densities as the
hand-written step they replaced, so old checkpoints load unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flowkit.distributions import Flow, StandardNormal
from flowkit.models.lnfmm.priors import build_prior_flow
from flowkit.transforms import AffineCoupling, ConditionalActNorm, Invertible1x1, Sequential, Switch


def hand_written_prior(features: int, context: int, layers: int, hidden: int, conv1x1: bool, clamp: str) -> Flow:
    # build_prior_flow as it was written before it called glow (commit a6e76b2).
    scale = "sigmoid" if clamp == "sigmoid" else "exp"
    steps: list[nn.Module] = []
    for _ in range(layers):
        steps.append(ConditionalActNorm(features, context, hidden_features=hidden, num_layers=1, scale=scale))
        steps.append(AffineCoupling(features, context, hidden_features=hidden, num_layers=1, clamp=clamp))
        if conv1x1:
            steps.append(Invertible1x1(features))
        steps.append(Switch(features))
    return Flow(Sequential(*steps), StandardNormal(features, std=0.25))


@pytest.mark.parametrize("conv1x1", [False, True])
@pytest.mark.parametrize("clamp", ["sigmoid", "atan"])
def test_prior_flow_is_unchanged(conv1x1: bool, clamp: str) -> None:
    torch.manual_seed(0)
    old = hand_written_prior(6, 5, 3, 16, conv1x1, clamp)
    torch.manual_seed(0)
    new = build_prior_flow(6, 5, layers=3, hidden=16, conv1x1=conv1x1, clamp=clamp)
    assert repr(new) == repr(old)
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(new_state) == list(old_state)  # same keys: old checkpoints load as they are
    assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)  # same init for the same seed

    g = torch.Generator().manual_seed(1)
    z, c = torch.randn(7, 6, generator=g), torch.randn(7, 5, generator=g)
    # a trained-looking state dict: perturb everything, load it into a fresh prior, compare densities
    state = {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in old_state.items()}
    old.load_state_dict(state)
    fresh = build_prior_flow(6, 5, layers=3, hidden=16, conv1x1=conv1x1, clamp=clamp)
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh.log_prob(z, context=c), old.log_prob(z, context=c), rtol=0, atol=0)


def test_prior_flow_needs_a_context() -> None:
    with pytest.raises(ValueError, match="context_features .* must be a positive int, got 0"):
        build_prior_flow(4, 0, layers=1, hidden=8)
