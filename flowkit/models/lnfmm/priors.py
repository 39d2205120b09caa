r"""The three flows of LNFMM, built from flowkit layers.

* :math:`f_s`: an unconditional bijection of the shared code, image space -> text space.
  Official code: per step four NICE additive sub-couplings (alternating halves) + a global
  scale :math:`\sigma(s + 5)` + Switch. Paper text: affine coupling + Switch.
* :math:`f_v`, :math:`f_t`: conditional flow priors :math:`p(z' | z_s)` over the specific codes;
  step = ConditionalActNorm -> conditional AffineCoupling -> (Invertible1x1) -> Switch, base
  :math:`\mathcal{N}(0, 0.25^2 I)`.
* :class:`ConditionalGaussian`: the CVAE baseline's prior :math:`\mathcal{N}(\mu(z_s), \sigma(z_s)^2)`
  with the same ``log_prob`` / ``sample`` interface as :class:`flowkit.Flow`.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from flowkit._validation import check_positive_int
from flowkit.builders import glow
from flowkit.distributions import Flow
from flowkit.nn import MLP
from flowkit.transforms.composition import Sequential
from flowkit.transforms.coupling import AdditiveCoupling, AffineCoupling
from flowkit.transforms.normalization import ElementwiseScale
from flowkit.transforms.permutations import Switch

__all__ = ["build_fs", "build_prior_flow", "ConditionalGaussian"]


def build_fs(features: int, layers: int, hidden: int, coupling: str = "additive", clamp: str = "sigmoid") -> Sequential:
    r"""Builds :math:`f_s`, the shared-code bijection (image space -> text space).

    Arguments:
        features: The shared code size (A.1: 992).
        layers: The number of steps (A.1: 12).
        hidden: The coupling nets' hidden width (official: 1024; nets are Linear-ReLU-Linear).
        coupling: ``"additive"`` (official: 4 additive sub-couplings + global scale + Switch per
            step; log-det from the scale only) or ``"affine"`` (paper: affine coupling + Switch).
        clamp: The affine scale clamp (``"affine"`` only).

    Example:
        >>> fs = build_fs(8, layers=2, hidden=16)
        >>> y, ladj = fs(torch.randn(3, 8))
        >>> y.shape, ladj.shape
        (torch.Size([3, 8]), torch.Size([3]))
    """
    steps: list[nn.Module] = []
    for _ in range(layers):
        if coupling == "additive":
            # The official step: x2 += m1(x1); x1 += m2(x2); x2 += m3(x1); x1 += m4(x2); scale.
            for k in range(4):
                steps.append(AdditiveCoupling(features, hidden_features=hidden, num_layers=1, flip_mask=bool(k % 2)))
            steps.append(ElementwiseScale(features, offset=5.0))
        elif coupling == "affine":
            steps.append(AffineCoupling(features, hidden_features=hidden, num_layers=1, clamp=clamp))
        else:
            raise ValueError(f"unknown f_s coupling {coupling!r}; choose 'additive' or 'affine'")
        steps.append(Switch(features))
    return Sequential(*steps)


def build_prior_flow(
    features: int,
    context_features: int,
    layers: int,
    hidden: int,
    conv1x1: bool = False,
    clamp: str = "sigmoid",
    base_std: float = 0.25,
) -> Flow:
    r"""Builds a conditional flow prior :math:`p(z' | z_s)` (:math:`f_v` or :math:`f_t`) with :func:`flowkit.glow`.

    Step: ConditionalActNorm (MLP of the context; official ``sigmoid(logs + 2)`` scale when
    ``clamp="sigmoid"``) -> AffineCoupling with the context concatenated to the net's input
    -> optional Invertible1x1 -> Switch. Base: :math:`\mathcal{N}(0, \text{base\_std}^2 I)`.

    Arguments:
        features: The specific code size (A.1: 64 for z'_v, 32 for z'_t).
        context_features: The shared code size (A.1: 992).
        layers: The number of steps (A.1: 16).
        hidden: The hidden width of the nets (A.1: 512 for f_v, 1024 for f_t).
        conv1x1: Whether to add the invertible 1x1 (A.1 for f_t: yes; official: no).
        clamp: The coupling's scale clamp.
        base_std: The base distribution's std (official: 0.25).

    Example:
        >>> fv = build_prior_flow(4, 6, layers=2, hidden=16)
        >>> c = torch.randn(3, 6)
        >>> fv.log_prob(torch.randn(3, 4), context=c).shape, fv.sample(5, context=c).shape
        (torch.Size([3]), torch.Size([3, 5, 4]))
    """
    context_features = check_positive_int("context_features (a prior p(z' | z_s) needs one)", context_features)
    return glow(
        features,
        context_features,
        num_layers=layers,
        hidden_features=hidden,
        conv1x1=conv1x1,
        clamp=clamp,
        base_std=base_std,
        net_layers=1,
        actnorm_scale="sigmoid" if clamp == "sigmoid" else "exp",
    )


class ConditionalGaussian(nn.Module):
    r"""A conditional diagonal Gaussian :math:`\mathcal{N}(\mu(c), \mathrm{diag}\,\sigma(c)^2)`.

    The CVAE baseline's prior; it exposes :class:`flowkit.Flow`'s ``log_prob(z, context)`` and
    ``sample(num_samples, context, temperature)``. It starts as :math:`\mathcal{N}(0, \text{std}^2 I)`
    (the MLP's last layer is zero, the log-std bias is ``log std``).

    Arguments:
        features: The number of features D.
        context_features: The number of context features C.
        hidden: The hidden width of the MLP.
        std: The initial standard deviation.

    Example:
        >>> p = ConditionalGaussian(4, 6, hidden=16, std=0.25)
        >>> c = torch.randn(3, 6)
        >>> p.log_prob(torch.zeros(3, 4), c).shape, p.sample(5, c).shape
        (torch.Size([3]), torch.Size([3, 5, 4]))
    """

    def __init__(self, features: int, context_features: int, hidden: int = 256, std: float = 1.0) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.features = features
        self.context_features = context_features
        self.net = MLP(context_features, 2 * features, hidden_features=hidden, num_layers=1, zero_last=True)
        with torch.no_grad():
            self.net.last.bias[features:] = math.log(std)

    def _moments(self, context: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_std = rearrange(self.net(context), "b (two d) -> two b d", two=2)
        # a soft floor keeps exp(-log_std) finite when the net pushes the std to zero
        log_std = torch.clamp(log_std, min=-10.0)
        return mu, log_std

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Returns :math:`\log p(z | c)` of shape (B,)."""
        if context is None:
            raise ValueError("ConditionalGaussian needs a context of shape (batch, context_features)")
        mu, log_std = self._moments(context.to(z.dtype))
        return (-0.5 * ((z - mu) * torch.exp(-log_std)).square() - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)

    def sample(self, num_samples: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        r"""Returns reparameterized samples of shape (B, S, D)."""
        if context is None:
            raise ValueError("ConditionalGaussian needs a context of shape (batch, context_features)")
        mu, log_std = self._moments(context)
        eps = torch.randn(mu.shape[0], num_samples, self.features, dtype=mu.dtype, device=mu.device)
        return repeat(mu, "b d -> b s d", s=num_samples) + temperature * eps * repeat(torch.exp(log_std), "b d -> b s d", s=num_samples)

    def extra_repr(self) -> str:
        return f"features={self.features}, context_features={self.context_features}"
