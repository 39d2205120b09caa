"""The CUDA paths of the flow layers: the test kit on the GPU in float64 for every registered
layer and base distribution, and the layer's log-det against the same layer's on the CPU.

Skipped without CUDA (CI has none); ``benchmarks/gpu_check.py`` runs these checks and the
training paths on a GPU machine. A device mismatch inside the kit itself was found this way
(``check_shared_context`` drew its noise on the CPU)."""

from __future__ import annotations

import pytest
import torch

from flowkit.testing import check_base, check_transform
from flowkit.testing.registry import registered_bases, registered_layers

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.py runs these)")
CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize("name", sorted(registered_layers()))
def test_layer_on_cuda_matches_cpu(name: str) -> None:
    spec = registered_layers()[name]
    c = 3 if spec.accepts_context else 0
    layer = spec.build(6, c, seed=0).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    ctx = torch.randn(16, c, generator=g, dtype=torch.float64) if c else None
    with torch.no_grad():
        y_cpu, ld_cpu = layer(x, ctx) if c else layer(x)
    on = layer.to(CUDA)
    check_transform(on, x.to(CUDA), None if ctx is None else ctx.to(CUDA))
    with torch.no_grad():
        y, ld = on(x.to(CUDA), ctx.to(CUDA)) if c else on(x.to(CUDA))
    torch.testing.assert_close(y.cpu(), y_cpu, atol=1e-10, rtol=0)
    torch.testing.assert_close(ld.cpu(), ld_cpu, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", sorted(registered_bases()))
def test_base_on_cuda(name: str) -> None:
    spec = registered_bases()[name]
    c = 2 if spec.accepts_context else 0
    base = spec.build(2, c, seed=0).double().to(CUDA)
    z = torch.randn(8, 2, dtype=torch.float64, device=CUDA)
    check_base(base, z, torch.randn(8, c, dtype=torch.float64, device=CUDA) if c else None)
