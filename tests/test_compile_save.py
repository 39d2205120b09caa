"""torch.compile (one graph, no breaks) and saving: whole-module pickle and state_dict
round trips, with ActNorm never re-initialized after loading (SPEC section 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import flowkit
from flowkit import ActNorm, ConditionalActNorm, Flow, glow, realnvp


def _fresh_glow(context_features: int) -> Flow:
    torch.manual_seed(0)
    return glow(5, context_features=context_features, num_layers=2, hidden_features=16, seed=0)


def _data(context_features: int, n: int = 32) -> tuple[torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(1)
    x = 2 + 3 * torch.randn(n, 5, generator=gen)
    c = torch.randn(n, context_features, generator=gen) if context_features else None
    return x, c


def _perturb(module: nn.Module, scale: float = 0.1) -> None:
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.mark.parametrize("context_features", [0, 3])
def test_glow_log_prob_has_no_graph_breaks(context_features: int) -> None:
    torch._dynamo.reset()
    flow = _fresh_glow(context_features)
    x, c = _data(context_features)
    flowkit.data_init(flow, x, c)
    flow.train()  # training mode too: the ActNorm check must not break the graph
    explanation = torch._dynamo.explain(flow.log_prob)(x, c)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_realnvp_alternate_and_sigmoid_have_no_graph_breaks() -> None:
    torch._dynamo.reset()
    flow = realnvp(5, 2, num_layers=2, hidden_features=8, mask="alternate", clamp="sigmoid", actnorm=True)
    x, c = torch.randn(8, 5), torch.randn(8, 2)
    flowkit.data_init(flow, x, c)
    explanation = torch._dynamo.explain(flow.log_prob)(x, c)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_log_prob_matches_eager() -> None:
    torch._dynamo.reset()
    flow = _fresh_glow(3)
    x, c = _data(3)
    flowkit.data_init(flow, x, c)
    _perturb(flow)
    compiled = torch.compile(flow.log_prob, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x, c), flow.log_prob(x, c), atol=1e-5)


@pytest.mark.parametrize("context_features", [0, 3])
def test_whole_flow_pickle_roundtrip(tmp_path: Path, context_features: int) -> None:
    flow = _fresh_glow(context_features)
    x, c = _data(context_features)
    flowkit.data_init(flow, x, c)
    _perturb(flow)
    flow.eval()
    path = tmp_path / "flow.pt"
    torch.save(flow, path)
    loaded = torch.load(path, weights_only=False)
    assert isinstance(loaded, Flow)
    loaded.eval()
    assert torch.equal(loaded.log_prob(x, c), flow.log_prob(x, c))
    # ActNorm flags travel with the module: training on new data does not re-initialize
    acts = [m for m in loaded.modules() if isinstance(m, (ActNorm, ConditionalActNorm))]
    assert acts and all(bool(m.initialized) for m in acts)
    loaded.train()
    x_new = -5 + 0.1 * torch.randn(16, 5)
    c_new = torch.randn(16, context_features) if context_features else None
    loaded.log_prob(x_new, c_new)
    for a, b in zip(loaded.state_dict().values(), flow.state_dict().values()):
        assert torch.equal(a, b)


def test_state_dict_roundtrip_with_weights_only(tmp_path: Path) -> None:
    flow = _fresh_glow(0)
    x, _ = _data(0)
    flow.train()
    flow.log_prob(x)  # ActNorm initializes on this first training forward
    _perturb(flow)
    path = tmp_path / "state.pt"
    torch.save(flow.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert all(k in state for k in ("transform.transforms.0.initialized", "transform.transforms.4.initialized"))
    fresh = _fresh_glow(0)
    torch.manual_seed(123)
    _perturb(fresh, scale=1.0)  # make sure the values really come from the checkpoint
    fresh.load_state_dict(state)
    fresh.train()
    x_new = 10 + 5 * torch.randn(64, 5)
    lp_fresh = fresh.log_prob(x_new)  # would re-initialize if the flag were not restored
    flow.train()
    assert torch.equal(lp_fresh, flow.log_prob(x_new))
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_every_layer_pickles(tmp_path: Path) -> None:
    layers = [
        flowkit.AffineCoupling(4, 2, hidden_features=8, clamp="sigmoid", mask="alternate"),
        flowkit.AdditiveCoupling(4, 2, hidden_features=8),
        flowkit.ActNorm(4),
        flowkit.ConditionalActNorm(4, 2, hidden_features=8, scale="sigmoid"),
        flowkit.ElementwiseScale(4),
        flowkit.Invertible1x1(4, seed=0),
        flowkit.Permutation(4, seed=0),
        flowkit.Reverse(4),
        flowkit.Switch(4),
        flowkit.Inverse(flowkit.AffineCoupling(4, 2, hidden_features=8)),
        flowkit.StandardNormal(4, std=0.25),
    ]
    x, c = torch.randn(5, 4), torch.randn(5, 2)
    for i, layer in enumerate(layers):
        _perturb(layer)
        layer.eval()
        path = tmp_path / f"{i}.pt"
        torch.save(layer, path)
        loaded = torch.load(path, weights_only=False)
        if isinstance(layer, flowkit.StandardNormal):
            assert torch.equal(loaded.log_prob(x), layer.log_prob(x))
        else:
            ctx = c if layer.context_features else None  # an unconditional layer refuses a context
            assert torch.equal(loaded(x, ctx)[0], layer(x, ctx)[0]), type(layer).__name__


def test_to_double_moves_everything() -> None:
    flow = _fresh_glow(3).double()
    state = flow.state_dict()
    for k, v in state.items():
        assert v.dtype in (torch.float64, torch.bool, torch.long), (k, v.dtype)


def _new_flows() -> list[Flow]:
    torch.manual_seed(0)
    flows = [
        flowkit.nsf(5, 3, num_layers=2, hidden_features=16, bins=4, base=flowkit.GaussianMixture(5, 3, 3, hidden_features=8)),
        flowkit.maf(5, 3, num_layers=2, hidden_features=16, transform="spline", bins=4, base=flowkit.DiagonalNormal(5, 3)),
        flowkit.maf(5, 3, num_layers=2, hidden_features=16),
        Flow(flowkit.Inverse(flowkit.MaskedAutoregressive(5, 3, hidden_features=16)), flowkit.GaussianMixture(5, 2)),
    ]
    for f in flows:
        _perturb(f)
    return flows


@pytest.mark.parametrize("index", [0, 1, 2, 3], ids=["nsf+mixture", "maf-spline+diag", "maf", "iaf+mixture"])
def test_new_flows_compile_without_graph_breaks(index: int) -> None:
    torch._dynamo.reset()
    flow = _new_flows()[index]
    x, c = _data(3)
    explanation = torch._dynamo.explain(flow.log_prob)(x, c)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    sampler = torch._dynamo.explain(lambda ctx: flow.sample(4, ctx, temperature=0.7))(c[:3])
    assert sampler.graph_break_count == 0, sampler.break_reasons
    if index == 0:  # the compiled density equals eager
        compiled = torch.compile(flow.log_prob, backend="eager", fullgraph=True)
        assert torch.allclose(compiled(x, c), flow.log_prob(x, c), atol=1e-5)


def test_new_flows_pickle_whole(tmp_path: Path) -> None:
    x, c = _data(3)
    for i, flow in enumerate(_new_flows()):
        flow.eval()
        torch.save(flow, tmp_path / f"{i}.pt")
        loaded = torch.load(tmp_path / f"{i}.pt", weights_only=False)
        assert torch.equal(loaded.log_prob(x, c), flow.log_prob(x, c))
        torch.manual_seed(3)
        a = loaded.sample(2, c[:2])
        torch.manual_seed(3)
        assert torch.equal(a, flow.sample(2, c[:2]))
        state = flow.state_dict()
        assert any(k.endswith("net.order") or k.endswith("transform_idx") for k in state), list(state)[:5]
