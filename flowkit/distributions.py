r"""Base distributions and the :class:`Flow` (a transform pushed onto a base distribution).

:class:`StandardNormal` is the fixed isotropic Gaussian; :class:`DiagonalNormal` and
:class:`GaussianMixture` are learned and optionally conditional (their parameters come from
the context), both :class:`BaseDistribution` subclasses, which :class:`Flow` passes the context
and the sampling temperature.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from flowkit._validation import check_positive_int
from flowkit.nn import MLP, soft_log_scale
from flowkit.transforms.base import InputError, _is_compiling, apply_transform

__all__ = ["StandardNormal", "Flow", "BaseDistribution", "DiagonalNormal", "GaussianMixture"]


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


# The mixture's component draws, for the same reasons as the base noise above.
@torch.library.custom_op("flowkit::uniform", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def _uniform(rows: int, columns: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.rand(rows, columns, dtype=dtype, device=device)


@_uniform.register_fake
def _(rows: int, columns: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.empty(rows, columns, dtype=dtype, device=device)


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
        features = check_positive_int("features", features)
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
        >>> from flowkit import AffineCoupling, Sequential, Switch
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
        return self._base_log_prob(z, context) + ladj

    def _base_log_prob(self, z: Tensor, context: Tensor | None, repeats: int = 1) -> Tensor:
        # A BaseDistribution takes the context (and a context shared by `repeats` rows).
        if isinstance(self.base, BaseDistribution):
            return self.base.log_prob(z, context, context_repeats=repeats)
        return self.base.log_prob(z)

    def _base_sample(self, num_samples: int, context: Tensor | None, temperature: float) -> Tensor:
        # (S, D) without a context, (B * S, D) ordered (b s) with one.
        if isinstance(self.base, BaseDistribution):
            z = self.base.sample(num_samples, context, temperature=temperature)
            return z if context is None else z.reshape(-1, z.shape[-1])
        rows = num_samples if context is None else context.shape[0] * num_samples
        return self.base.sample(rows) * temperature

    def _inverse_of_base_samples(self, num_samples: int, context: Tensor | None, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
        # Returns (x, z, ladj of the inverse) for S base samples per context row, ordered (b s).
        # flowkit transforms take the context once per row (context_repeats=S), so their
        # context networks run B times instead of B * S.
        num_samples = check_positive_int("num_samples", num_samples)
        if context is None:
            z = self._base_sample(num_samples, None, temperature)
            x, ladj = self.transform.inverse(z, None)
            return x, z, ladj
        if context.dim() != 2:
            raise InputError(f"Flow.sample: expected context of shape (batch, C), got {tuple(context.shape)}")
        z = self._base_sample(num_samples, context, temperature)
        x, ladj = apply_transform(self.transform, z, context, num_samples, inverse=True)
        return x, z, ladj

    def _reshape(self, x: Tensor, context: Tensor | None, num_samples: int) -> Tensor:
        return x if context is None else rearrange(x, "(b s) d -> b s d", s=num_samples)

    def sample(self, num_samples: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        r"""Draws samples: ``(B, S, D)`` with a context of B rows, ``(S, D)`` without.

        Arguments:
            num_samples: The number of samples S (per context row).
            context: The context ``(B, C)``, or None.
            temperature: Scales the base samples (for a :class:`BaseDistribution`: its noise
                around the mean, see its ``sample``); 0 gives the image of the base's mode.
        """
        x, _, _ = self._inverse_of_base_samples(num_samples, context, temperature)
        return self._reshape(x, context, num_samples)

    def sample_and_log_prob(self, num_samples: int, context: Tensor | None = None, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        r"""Returns samples as :meth:`sample` and their log-densities under the flow
        (``(B, S)`` with context, ``(S,)`` without)."""
        x, z, ladj = self._inverse_of_base_samples(num_samples, context, temperature)
        log_prob = self._base_log_prob(z, context, num_samples) - ladj
        if context is None:
            return x, log_prob
        return self._reshape(x, context, num_samples), rearrange(log_prob, "(b s) -> b s", s=num_samples)


_LOG_2PI = math.log(2 * math.pi)


def _check_sizes(features: int, context_features: int) -> None:
    features = check_positive_int("features", features)
    if not isinstance(context_features, int) or isinstance(context_features, bool) or context_features < 0:
        raise ValueError(f"context_features must be a non-negative int, got {context_features!r}")


class BaseDistribution(nn.Module):
    r"""Base class of learned, optionally conditional base distributions of a :class:`Flow`.

    Public methods validate, then call the private ``_log_prob`` / ``_sample`` on *grouped*
    tensors: ``G`` groups (the context rows, or 1 without a context) of ``S`` rows each, so
    a context shared by ``S`` rows is used once per row (``context_repeats``, as for
    transforms). :class:`Flow` passes these bases the context and the temperature.

    Arguments:
        features: The number of features D.
        context_features: The number of context features C (0: unconditional).
    """

    def __init__(self, features: int, context_features: int = 0) -> None:
        super().__init__()
        _check_sizes(features, context_features)
        self.features = features
        self.context_features = context_features

    # -- validation -------------------------------------------------------------------------
    def _check_context(self, context: Tensor | None, rows: int | None, repeats: int) -> None:
        name = type(self).__name__
        repeats = check_positive_int("context_repeats", repeats, where=name, error=InputError)
        if self.context_features == 0 or _is_compiling():
            return
        if context is None:
            raise InputError(
                f"{name} is conditional (context_features={self.context_features}) and needs "
                f"context=<tensor of shape (batch, {self.context_features})>"
            )
        if context.dim() != 2 or context.shape[1] != self.context_features:
            raise InputError(f"{name}: expected context of shape (batch, {self.context_features}), got {tuple(context.shape)}")
        if rows is not None and context.shape[0] * repeats != rows:
            raise InputError(
                f"{name}: z has {rows} rows, expected {context.shape[0] * repeats} "
                f"({context.shape[0]} context rows x context_repeats={repeats})"
            )

    # -- public API -------------------------------------------------------------------------
    def log_prob(self, z: Tensor, context: Tensor | None = None, *, context_repeats: int = 1) -> Tensor:
        r"""Returns :math:`\log p(z | c)` of shape (N,) in z's dtype.

        Arguments:
            z: The points ``(N, D)``.
            context: The context ``(N / context_repeats, C)``, or None (ignored when unconditional).
            context_repeats: The number of consecutive rows of ``z`` each context row serves.
        """
        if not _is_compiling() and (not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.features):
            raise InputError(
                f"{type(self).__name__}: expected z of shape (batch, {self.features}), got "
                f"{tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__}"
            )
        self._check_context(context, z.shape[0], context_repeats)
        if self.context_features == 0:
            return self._log_prob(z.unsqueeze(0), None).reshape(z.shape[0])
        assert context is not None
        return self._log_prob(z.view(context.shape[0], -1, z.shape[1]), context).reshape(z.shape[0])

    def sample(self, num_samples: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        r"""Draws samples: ``(B, S, D)`` with a context of B rows, ``(S, D)`` without.

        Arguments:
            num_samples: The number of samples S (per context row).
            context: The context ``(B, C)``, or None.
            temperature: Scales the noise around the mean (see the subclass).
        """
        num_samples = check_positive_int("num_samples", num_samples)
        self._check_context(context, None, 1)
        if context is None:
            return self._sample(1, num_samples, None, temperature)[0]
        if self.context_features == 0:  # the context only sets the number of groups
            return self._sample(1, context.shape[0] * num_samples, None, temperature).view(context.shape[0], num_samples, self.features)
        return self._sample(context.shape[0], num_samples, context, temperature)

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:  # abstract: (G, S, D) -> (G, S)
        raise NotImplementedError

    def _sample(self, groups: int, num_samples: int, context: Tensor | None, temperature: float) -> Tensor:  # abstract
        raise NotImplementedError

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def extra_repr(self) -> str:
        s = f"features={self.features}"
        return s + (f", context_features={self.context_features}" if self.context_features else "")


class DiagonalNormal(BaseDistribution):
    r"""A Gaussian with diagonal covariance :math:`\mathcal{N}(\mu, \mathrm{diag}(\sigma^2))`,
    learned, or with :math:`(\mu, \log\sigma)` from the context.

    .. math::

        \log p(z | c) = -\textstyle\sum_i \left[ \tfrac12 \big(\tfrac{z_i - \mu_i}{\sigma_i}\big)^2
        + \log \sigma_i + \tfrac12 \log 2\pi \right], \qquad
        \log \sigma = \tfrac{2b}{\pi} \arctan\!\big(\tfrac{\pi r}{2b}\big) ,

    with :math:`(\mu, r)` parameters, or :math:`(\mu, r) = \mathrm{MLP}(c)` (last layer zero at
    init): it starts as :math:`\mathcal{N}(0, I)`. The soft clamp (bound :math:`b`) keeps
    :math:`\sigma \in (e^{-b}, e^{b})`. Samples :math:`z = \mu + T \sigma \epsilon` with
    temperature :math:`T` are reparameterized (gradients reach :math:`\mu`, :math:`\sigma`
    and the context).

    Arguments:
        features: The number of features D.
        context_features: The number of context features C (0: learned parameters).
        hidden_features: The width of the context MLP's hidden layers.
        num_layers: The number of hidden layers of the context MLP.
        log_std_bound: The bound :math:`b` of the log-std's soft clamp.

    Example:
        >>> base = DiagonalNormal(3, context_features=2, hidden_features=16)
        >>> c = torch.randn(4, 2)
        >>> base.sample(5, c).shape, base.log_prob(torch.zeros(4, 3), c).shape
        (torch.Size([4, 5, 3]), torch.Size([4]))
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden_features: int = 64,
        num_layers: int = 1,
        log_std_bound: float = 5.0,
    ) -> None:
        super().__init__(features, context_features)
        if not log_std_bound > 0:
            raise ValueError(f"log_std_bound must be > 0, got {log_std_bound}")
        self.log_std_bound = float(log_std_bound)
        if context_features > 0:
            self.net = MLP(context_features, 2 * features, hidden_features, num_layers, zero_last=True)
        else:
            self.loc = nn.Parameter(torch.zeros(features))
            self.log_std_raw = nn.Parameter(torch.zeros(features))

    def params(self, context: Tensor | None = None, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        r"""Returns ``(mu, log_std)``: ``(G, 1, D)`` each, G = context rows (1 without a context)."""
        dtype = dtype or self._dtype()
        if self.context_features > 0 and context is not None:
            loc, raw = self.net(context.to(dtype)).chunk(2, dim=-1)
        else:
            loc, raw = self.loc.to(dtype).unsqueeze(0), self.log_std_raw.to(dtype).unsqueeze(0)
        return loc.unsqueeze(1), soft_log_scale(raw, "atan", self.log_std_bound).unsqueeze(1)

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        loc, log_std = self.params(context, z.dtype)
        u = (z - loc) * torch.exp(-log_std)
        return -(0.5 * u.square() + log_std).sum(dim=-1) - 0.5 * self.features * _LOG_2PI

    def _sample(self, groups: int, num_samples: int, context: Tensor | None, temperature: float) -> Tensor:
        loc, log_std = self.params(context)
        eps = _standard_normal(groups * num_samples, self.features, loc.dtype, loc.device)
        return loc + temperature * torch.exp(log_std) * eps.view(groups, num_samples, self.features)


class GaussianMixture(BaseDistribution):
    r"""A mixture of K diagonal Gaussians, learned, or with weights, means and log-stds from the context.

    .. math::

        \log p(z | c) = \log \textstyle\sum_k \pi_k \, \mathcal{N}\big(z; \mu_k, \mathrm{diag}(\sigma_k^2)\big),
        \qquad \pi = \mathrm{softmax}(\ell) ,

    computed with ``logsumexp``; :math:`\log \sigma_k` goes through the same soft clamp as in
    :class:`DiagonalNormal`. Unconditional: :math:`\ell`, :math:`\mu_k`, :math:`r_k` are
    parameters; conditional: :math:`(\ell, \mu, r) = \mathrm{MLP}(c)`. At initialization the
    weights are equal, the log-stds 0 and the means drawn from :math:`\mathcal{N}(0, I)` (the
    MLP's last bias, its weight zero), so the components are spread.

    Sampling draws a component :math:`k \sim \pi` (by inverting the CDF of a uniform draw), then
    :math:`z = \mu_k + T \sigma_k \epsilon`. The samples are reparameterized with respect to
    the means, the stds and the context through them, **not** with respect to the weights
    :math:`\pi`: the component choice is discrete, so no gradient reaches :math:`\ell` through
    a sample (train the weights by maximum likelihood, or use :meth:`log_prob`). Temperature
    :math:`T` scales the noise within a component; the weights are unchanged (:math:`T = 0`
    gives the means of the drawn components).

    Arguments:
        features: The number of features D.
        components: The number of components K.
        context_features: The number of context features C (0: learned parameters).
        hidden_features: The width of the context MLP's hidden layers.
        num_layers: The number of hidden layers of the context MLP.
        log_std_bound: The bound of the log-stds' soft clamp.

    Example:
        >>> base = GaussianMixture(2, components=4)
        >>> base.sample(6).shape, base.log_prob(torch.zeros(3, 2)).shape
        (torch.Size([6, 2]), torch.Size([3]))
    """

    def __init__(
        self,
        features: int,
        components: int,
        context_features: int = 0,
        hidden_features: int = 64,
        num_layers: int = 1,
        log_std_bound: float = 5.0,
    ) -> None:
        super().__init__(features, context_features)
        components = check_positive_int("components", components)
        if not log_std_bound > 0:
            raise ValueError(f"log_std_bound must be > 0, got {log_std_bound}")
        self.components = components
        self.log_std_bound = float(log_std_bound)
        k, d = components, features
        means = torch.randn(k, d)
        if context_features > 0:
            self.net = MLP(context_features, k + 2 * k * d, hidden_features, num_layers, zero_last=True)
            with torch.no_grad():
                self.net.last.bias[k : k + k * d].copy_(means.flatten())
        else:
            self.logits = nn.Parameter(torch.zeros(k))
            self.means = nn.Parameter(means)
            self.log_std_raw = nn.Parameter(torch.zeros(k, d))

    def params(self, context: Tensor | None = None, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor]:
        r"""Returns ``(log_weights (G, K), means (G, K, D), log_stds (G, K, D))``; G = context rows or 1."""
        dtype = dtype or self._dtype()
        k, d = self.components, self.features
        if self.context_features > 0 and context is not None:
            out = self.net(context.to(dtype))
            logits, means, raw = out[:, :k], out[:, k : k + k * d], out[:, k + k * d :]
            means, raw = means.reshape(-1, k, d), raw.reshape(-1, k, d)
        else:
            logits, means, raw = (p.to(dtype).unsqueeze(0) for p in (self.logits, self.means, self.log_std_raw))
        # logits - logsumexp, not torch.log_softmax: see flowkit.transforms.spline._softmax.
        log_w = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        return log_w, means, soft_log_scale(raw, "atan", self.log_std_bound)

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        log_w, means, log_std = self.params(context, z.dtype)
        u = (z.unsqueeze(2) - means.unsqueeze(1)) * torch.exp(-log_std).unsqueeze(1)  # (G, S, K, D)
        per_component = -(0.5 * u.square() + log_std.unsqueeze(1)).sum(dim=-1) - 0.5 * self.features * _LOG_2PI
        return torch.logsumexp(per_component + log_w.unsqueeze(1), dim=-1)

    def _sample(self, groups: int, num_samples: int, context: Tensor | None, temperature: float) -> Tensor:
        log_w, means, log_std = self.params(context)
        n, k, d = num_samples, self.components, self.features
        cdf = torch.cumsum(torch.exp(log_w), dim=-1)  # (G, K)
        u = _uniform(groups, n, means.dtype, means.device)
        # The drawn component: how many CDF steps below 1 lie under u (0 .. K - 1).
        idx = (u.unsqueeze(-1) > cdf[:, None, :-1]).sum(dim=-1)  # (G, S)
        pick = idx.unsqueeze(-1).expand(groups, n, d)
        if means.shape[0] != groups:
            means, log_std = means.expand(groups, k, d), log_std.expand(groups, k, d)
        mu = means.gather(1, pick)
        sigma = torch.exp(log_std.gather(1, pick))
        eps = _standard_normal(groups * n, d, means.dtype, means.device).view(groups, n, d)
        return mu + temperature * sigma * eps

    def extra_repr(self) -> str:
        return super().extra_repr() + f", components={self.components}"
