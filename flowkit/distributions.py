r"""Base distributions and the :class:`Flow` (a transform pushed onto a base distribution)."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from flowkit.transforms.base import InputError, apply_transform

__all__ = ["StandardNormal", "Flow"]


# The base noise is drawn by PyTorch's own generator even inside torch.compile: inductor
# would otherwise lower randn to its own RNG, which (a) gives other samples than eager for
# the same seed and (b) on CPU costs ~10x eager's randn (about 30 ms of a 240 ms sampling
# run in benchmarks/flows.py). The tag keeps the compiler from merging two draws into one.
@torch.library.custom_op("flowkit::standard_normal", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def _standard_normal(rows: int, features: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.randn(rows, features, dtype=dtype, device=device)


@_standard_normal.register_fake
def _(rows: int, features: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.empty(rows, features, dtype=dtype, device=device)


class StandardNormal(nn.Module):
    r"""An isotropic Gaussian :math:`\mathcal{N}(0, \sigma^2 I)` over D features.

    The official LNFMM code uses :math:`\sigma = 0.25`. :math:`\sigma` is a buffer, so the
    distribution follows ``.to(device)`` and ``.double()``.

    Arguments:
        features: The number of features D.
        std: The standard deviation :math:`\sigma > 0`.

    Example:
        >>> base = StandardNormal(3)
        >>> base.sample(5).shape, base.log_prob(torch.zeros(2, 3)).shape
        (torch.Size([5, 3]), torch.Size([2]))
    """

    std: Tensor

    def __init__(self, features: int, std: float = 1.0) -> None:
        super().__init__()
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive int, got {features!r}")
        if not float(std) > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.features = features
        self.register_buffer("std", torch.tensor(float(std), dtype=torch.get_default_dtype()))

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Returns :math:`\log \mathcal{N}(z; 0, \sigma^2 I)` of shape (B,); ``context`` is ignored."""
        std = self.std.to(z.dtype)
        return -0.5 * (z / std).square().sum(dim=-1) - self.features * (torch.log(std) + 0.5 * math.log(2 * math.pi))

    def sample(self, num_samples: int, context: Tensor | None = None) -> Tensor:
        r"""Returns ``num_samples`` reparameterized samples, shape (num_samples, D)."""
        eps = _standard_normal(num_samples, self.features, self.std.dtype, self.std.device)
        return eps * self.std

    def extra_repr(self) -> str:
        return f"features={self.features}, std={self.std.item():g}"


class Flow(nn.Module):
    r"""A normalizing flow :math:`p(x | c) = p_Z(f(x; c)) \, |\det J_f(x; c)|`.

    ``transform`` maps data to latent (``z, ladj = transform(x, context)``); sampling draws
    :math:`z` from the base (scaled by ``temperature``) and runs ``transform.inverse``. Samples
    are reparameterized: gradients flow to the parameters and to the context.

    Arguments:
        transform: A transform with the flowkit/nflows protocol.
        base: The base distribution, with ``log_prob(z)`` and ``sample(n)`` (e.g.
            :class:`StandardNormal`).

    Example:
        >>> flow = Flow(Sequential(AffineCoupling(2, 3, hidden_features=16), Switch(2)), StandardNormal(2))
        >>> c = torch.randn(4, 3)
        >>> flow.log_prob(torch.randn(4, 2), context=c).shape, flow.sample(10, context=c).shape
        (torch.Size([4]), torch.Size([4, 10, 2]))
    """

    def __init__(self, transform: nn.Module, base: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(transform, "inverse", None)):
            raise TypeError(f"transform must have an inverse method, got {type(transform).__name__}")
        t_features, b_features = getattr(transform, "features", None), getattr(base, "features", None)
        if isinstance(t_features, int) and isinstance(b_features, int) and t_features != b_features:
            raise ValueError(
                f"Flow: the transform works on {t_features} features but the base distribution on {b_features}; "
                f"build the base with features={t_features}"
            )
        self.transform = transform
        self.base = base
        self.features = b_features

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Same as :meth:`log_prob`."""
        return self.log_prob(x, context)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Returns :math:`\log p(x | c)` of shape (B,)."""
        z, ladj = self.transform(x, context)
        return self.base.log_prob(z) + ladj

    def _inverse_of_base_samples(
        self, num_samples: int, context: Tensor | None, temperature: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        # Returns (x, z, ladj of the inverse) for S base samples per context row, ordered (b s).
        # flowkit transforms take the context once per row (context_repeats=S), so their
        # context networks run B times instead of B * S.
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if context is None:
            z = self.base.sample(num_samples) * temperature
            x, ladj = self.transform.inverse(z, None)
            return x, z, ladj
        if context.dim() != 2:
            raise InputError(f"Flow.sample: expected context of shape (batch, C), got {tuple(context.shape)}")
        z = self.base.sample(context.shape[0] * num_samples) * temperature
        x, ladj = apply_transform(self.transform, z, context, num_samples, inverse=True)
        return x, z, ladj

    def _reshape(self, x: Tensor, context: Tensor | None, num_samples: int) -> Tensor:
        return x if context is None else rearrange(x, "(b s) d -> b s d", s=num_samples)

    def sample(self, num_samples: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        r"""Draws samples: ``(B, S, D)`` with a context of B rows, ``(S, D)`` without.

        Arguments:
            num_samples: The number of samples S (per context row).
            context: The context ``(B, C)``, or None.
            temperature: Scales the base samples; 0 gives the image of the base's mode.
        """
        x, _, _ = self._inverse_of_base_samples(num_samples, context, temperature)
        return self._reshape(x, context, num_samples)

    def sample_and_log_prob(
        self, num_samples: int, context: Tensor | None = None, temperature: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        r"""Returns samples as :meth:`sample` and their log-densities under the flow
        (``(B, S)`` with context, ``(S,)`` without)."""
        x, z, ladj = self._inverse_of_base_samples(num_samples, context, temperature)
        log_prob = self.base.log_prob(z) - ladj
        if context is None:
            return x, log_prob
        return self._reshape(x, context, num_samples), rearrange(log_prob, "(b s) -> b s", s=num_samples)
