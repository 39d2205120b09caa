"""Text-to-image metrics on cases with known answers."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from flowkit.metrics import inception_score, ivom, lpips_diversity, pixel_diversity


# -- Inception score ----------------------------------------------------------------------------
def test_inception_score_uniform_and_one_hot() -> None:
    k = 5
    uniform = torch.full((40, k), 1.0 / k)
    assert inception_score(uniform, splits=4) == pytest.approx((1.0, 0.0), abs=1e-12)
    one_hot = torch.eye(k).repeat(8, 1)  # each class equally often in every split
    mean, std = inception_score(one_hot, splits=2)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    # Logits are detected and soft-maxed: very confident logits give nearly K.
    mean, _ = inception_score(40.0 * torch.eye(k).repeat(8, 1) - 20.0, splits=1)
    assert mean == pytest.approx(k, rel=1e-6)


def test_inception_score_hand_case_and_classifier() -> None:
    # Two samples, p(y|x) = (1, 0) and (0.5, 0.5); p(y) = (0.75, 0.25).
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    kl1 = math.log(1 / 0.75)
    kl2 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert inception_score(p, splits=1)[0] == pytest.approx(math.exp((kl1 + kl2) / 2), rel=1e-12)
    # Through a classifier returning logits, in batches.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    images = torch.rand(10, 3, 2, 2)
    with torch.no_grad():
        expected = inception_score(torch.softmax(net(images).double(), 1), splits=2)
    # float32 logits from batches of 3 vs one batch differ in the last bits.
    assert inception_score(images, net, splits=2, batch_size=3) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="splits"):
        inception_score(p, splits=3)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        inception_score(torch.rand(4))


# -- IvOM ---------------------------------------------------------------------------------------
class LinearGenerator(nn.Module):
    """code (B, 3) -> images (B, 2, 4, 4) in [0, 1]; injective, so a target has one exact code."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.weight = nn.Parameter(torch.randn(3, 32, generator=g))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(code @ self.weight).view(-1, 2, 4, 4)


def test_ivom_recovers_reachable_targets() -> None:
    gen = LinearGenerator().train()
    true_codes = torch.tensor([[0.5, -1.0, 0.3], [1.2, 0.1, -0.7], [-0.4, 0.8, 0.9], [0.0, 0.0, 0.0], [2.0, -0.5, 0.1]])
    with torch.no_grad():
        targets = gen(true_codes)
    out = ivom(gen, targets, latent_dim=3, restarts=2, steps=150, lr=0.1, batch_size=2)
    assert out["per_image"].shape == (5,)
    assert out["mse"] < 1e-6
    torch.testing.assert_close(out["best_codes"], true_codes, atol=2e-2, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(gen(out["best_codes"]), targets, atol=2e-3, rtol=0)
    assert gen.training and gen.weight.grad is None  # mode restored, generator untouched


def test_ivom_flow_noise_and_context_variant() -> None:
    gen = LinearGenerator()
    shift = torch.tensor([[0.3, -0.2, 0.1], [-0.5, 0.4, 0.0]])
    scale = torch.tensor([2.0, 0.5, 1.5])

    def code_fn(eps: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:  # an invertible "flow" given a context
        return eps * scale + ctx

    def generator(code: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return gen(code - 0.1 * ctx)

    eps_true = torch.tensor([[0.2, -0.4, 0.6], [-0.3, 0.5, 0.1]])
    with torch.no_grad():
        targets = generator(code_fn(eps_true, shift), shift)
    out = ivom(generator, targets, latent_dim=3, code_fn=code_fn, context=shift, restarts=1, steps=400, lr=0.05)
    assert out["mse"] < 1e-6
    torch.testing.assert_close(out["best_eps"], eps_true, atol=2e-2, rtol=0)
    torch.testing.assert_close(out["best_codes"], code_fn(out["best_eps"], shift), atol=1e-6, rtol=0)


def test_ivom_keeps_best_restart_and_value_range() -> None:
    gen = LinearGenerator()
    targets = torch.rand(3, 2, 4, 4)
    starts = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(0))
    # steps=0: nothing moves, so IvOM is the per-image minimum over the given starts.
    out = ivom(gen, targets, starts, restarts=4, steps=0)
    with torch.no_grad():
        errors = torch.stack([(gen(s) - targets).pow(2).flatten(1).mean(1) for s in starts])
    torch.testing.assert_close(out["per_image"], errors.min(0).values.double())
    torch.testing.assert_close(out["best_codes"], starts[errors.argmin(0), torch.arange(3)])
    # In [-1, 1] the same images have twice the pixel distance, i.e. the [0, 1] MSE is unchanged.
    out2 = ivom(lambda z: 2 * gen(z) - 1, 2 * targets - 1, starts, restarts=4, steps=0, value_range=(-1.0, 1.0))
    torch.testing.assert_close(out2["per_image"], out["per_image"])
    # Optimising lowers the error; the returned error is the best seen.
    out3 = ivom(gen, targets, starts, restarts=4, steps=50)
    assert (out3["per_image"] <= out["per_image"] + 1e-12).all() and out3["mse"] < out["mse"]
    with pytest.raises(ValueError, match="init_codes or latent_dim"):
        ivom(gen, targets)
    with pytest.raises(ValueError, match="shape"):
        ivom(lambda z: gen(z)[:, :1], targets, latent_dim=3, steps=1)


# -- LPIPS and its pixel-space stand-in --------------------------------------------------------
def test_pixel_diversity_hand_values() -> None:
    zeros = torch.zeros(3, 4, 4)
    half = torch.zeros(3, 4, 4)
    half[:, :2] = 1.0  # half of the pixels differ by 1
    samples = torch.stack([torch.stack([zeros, half]), torch.stack([zeros, zeros])])  # (2, 2, 3, 4, 4)
    assert pixel_diversity(samples, "l2") == pytest.approx((math.sqrt(0.5) + 0.0) / 2)
    assert pixel_diversity(samples, "l1") == pytest.approx((0.5 + 0.0) / 2)
    three = torch.stack([zeros, torch.ones(3, 4, 4), torch.full((3, 4, 4), 0.5)])[None]
    assert pixel_diversity(three) == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        pixel_diversity(torch.rand(2, 1, 3, 4, 4))


def test_lpips_diversity_raises_clear_error_without_lpips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError, as on this CPU machine
    with pytest.raises(ImportError, match=r"(?s)lpips.*torchvision.*pixel_diversity"):
        lpips_diversity(torch.rand(2, 3, 3, 16, 16))


def test_lpips_diversity_with_lpips() -> None:
    try:
        import lpips  # noqa: F401
    except Exception as e:  # a CUDA torchvision beside CPU torch raises RuntimeError, not ImportError
        pytest.skip(f"lpips unavailable: {type(e).__name__}: {e}")
    same = torch.rand(1, 1, 3, 64, 64).expand(2, 3, 3, 64, 64)
    try:
        zero = lpips_diversity(same)
    except RuntimeError as e:  # backbone weights not downloadable offline
        pytest.skip(str(e))
    assert zero == pytest.approx(0.0, abs=1e-6)
    assert lpips_diversity(torch.rand(2, 3, 3, 64, 64)) > 0.05
