r"""Normalization layers: ActNorm (Glow), its conditional variant, and a global per-feature scale.

ActNorm's data-dependent initialization is tracked by a registered boolean buffer
``initialized``: it is saved in ``state_dict`` and restored by ``load_state_dict``, so loading a
checkpoint into a fresh module never re-initializes it (SPEC section 6).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from flowkit._validation import check_positive_int
from flowkit.nn import MLP
from flowkit.transforms.base import InputError, Transform, _is_compiling

__all__ = ["ActNorm", "ConditionalActNorm", "ElementwiseScale", "data_init", "ACTNORM_SCALES"]

#: The names accepted by ``ConditionalActNorm(scale=...)``.
ACTNORM_SCALES: tuple[str, ...] = ("exp", "sigmoid")

_EPS = 1e-6


def _moments(x: Tensor, name: str) -> tuple[Tensor, Tensor]:
    if x.shape[0] < 2:
        raise InputError(
            f"{name}: data-dependent initialization needs a batch of at least 2 rows, got {x.shape[0]}; "
            f"call flowkit.data_init(flow, x) with a larger batch"
        )
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    return mean, std


class ActNorm(Transform):
    r"""Activation normalization (Glow) with data-dependent initialization.

    .. math::

        y = (x + b) \odot e^{\log s}, \quad \log |\det J| = \textstyle\sum_i \log s_i .

    On the first forward call in training mode, if the layer is not yet initialized, it sets
    :math:`b = -\mathrm{mean}(x)` and :math:`\log s = -\log(\mathrm{std}(x) + \epsilon)` over
    the batch, so that this batch comes out zero-mean and unit-variance, then sets the
    ``initialized`` buffer to ``True``. In eval mode and in the inverse direction no
    initialization happens. ``load_state_dict`` restores the flag: a loaded layer is never
    re-initialized. :func:`flowkit.data_init` runs the initialization explicitly.

    ``torch.compile`` skips the initialization check (no graph break), so compile a flow
    after its ActNorm layers are initialized (run :func:`flowkit.data_init` or one training
    step first).

    Arguments:
        features: The number of features D.

    Example:
        >>> t = ActNorm(3)
        >>> y, ladj = t(5 + 2 * torch.randn(256, 3))
        >>> bool(t.initialized), y.mean(0).abs().max().item() < 1e-5
        (True, True)
    """

    shares_context = True  # unconditional: the context is never used

    initialized: Tensor

    def __init__(self, features: int) -> None:
        super().__init__(features)
        self.bias = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        r"""Sets bias and log-scale from the batch ``x`` and marks the layer initialized."""
        mean, std = _moments(x.detach(), type(self).__name__)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + _EPS))
        self.initialized.fill_(True)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.training and not _is_compiling() and not bool(self.initialized):
            self.initialize(x)
        y = (x + self.bias) * torch.exp(self.log_scale)
        return y, self.log_scale.sum().to(x.dtype).expand(x.shape[0])

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x = y * torch.exp(-self.log_scale) - self.bias
        return x, (-self.log_scale.sum()).to(y.dtype).expand(y.shape[0])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", initialized={bool(self.initialized)}"


def _group(x: Tensor, context: Tensor) -> Tensor:
    # (B * S, D) -> (B, S, D) for a context of B rows (S = 1 when the rows match).
    return x.reshape(context.shape[0], -1, x.shape[1])


def _ungroup(per_row: Tensor, grouped: Tensor) -> Tensor:
    # A per-context-row log-det (B,) -> one per row of x (B * S,).
    return per_row.unsqueeze(1).expand(grouped.shape[:2]).reshape(-1)


class ConditionalActNorm(Transform):
    r"""ActNorm whose shift and log-scale are functions of the context (official LNFMM code).

    With :math:`(t, r) = \mathrm{MLP}(c)`,

    .. math::

        \text{exp}: \ y = (x + t) \odot e^{r}, \quad
        \text{sigmoid}: \ y = (x + t) \odot \sigma(r + 2), \quad
        \log |\det J| = \textstyle\sum_i \log s_i .

    The MLP's last layer starts at zero, so with ``scale="exp"`` (default) a fresh layer is
    exactly the identity; ``scale="sigmoid"`` is the official code's form (a fresh layer scales
    by :math:`\sigma(2) \approx 0.881`; :math:`\log s \in (-\infty, 0)`, finite for any input).
    The layer does not initialize itself; :func:`flowkit.data_init` sets the bias of the MLP's
    last layer so that the initial outputs are normalized over the batch (for ``"sigmoid"``
    the scale can only shrink, so features with std < 1 keep scale ~ 1).

    Arguments:
        features: The number of features D.
        context_features: The number of context features C (> 0).
        hidden_features: The width of the MLP's hidden layers.
        num_layers: The number of hidden layers of the MLP (1 is ``Linear-ReLU-Linear``).
        scale: ``"exp"`` or ``"sigmoid"``.

    Example:
        >>> t = ConditionalActNorm(4, context_features=6, hidden_features=32)
        >>> x, c = torch.randn(5, 4), torch.randn(5, 6)
        >>> y, ladj = t(x, context=c)
        >>> torch.equal(y, x), ladj.abs().max().item()
        (True, 0.0)
    """

    initialized: Tensor

    def __init__(
        self,
        features: int,
        context_features: int,
        hidden_features: int = 256,
        num_layers: int = 1,
        scale: str = "exp",
    ) -> None:
        context_features = check_positive_int(
            "context_features (use ActNorm without context)", context_features, where="ConditionalActNorm"
        )
        if scale not in ACTNORM_SCALES:
            raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(map(repr, ACTNORM_SCALES))}")
        super().__init__(features, context_features)
        self.scale = scale
        self.net = MLP(context_features, 2 * features, hidden_features, num_layers, zero_last=True)
        self.register_buffer("initialized", torch.tensor(False))

    def _log_scale(self, raw: Tensor) -> Tensor:
        if self.scale == "sigmoid":
            return F.logsigmoid(raw + 2.0)
        return raw

    def _shift_log_scale(self, context: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        shift, raw = rearrange(self.net(context.to(dtype)), "b (two d) -> two b d", two=2)
        return shift, self._log_scale(raw)

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> None:
        r"""Sets the bias of the MLP's last layer so that ``x`` comes out normalized on average."""
        if context is None:
            raise InputError("ConditionalActNorm.initialize needs the context")
        mean, std = _moments(x.detach(), type(self).__name__)
        target_shift = -mean
        target_log_s = -torch.log(std + _EPS)
        if self.scale == "sigmoid":
            # log sigmoid(r + 2) = log s  <=>  r = logit(s) - 2; s < 1 only.
            s = torch.exp(target_log_s).clamp(max=1.0 - 1e-3)
            target_raw = torch.logit(s) - 2.0
        else:
            target_raw = target_log_s
        last = self.net.last
        hidden = self.net.hidden(context.detach().to(last.weight.dtype))
        mean_out = (hidden @ last.weight.T).mean(dim=0)  # the bias makes up the rest
        target = torch.cat([target_shift, target_raw]).to(last.bias.dtype)
        last.bias.copy_(target - mean_out)
        self.initialized.fill_(True)

    # A context shared by S rows: the MLP runs once per context row and the result broadcasts.
    shares_context = True

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        assert context is not None
        shift, log_s = self._shift_log_scale(context, x.dtype)
        xs = _group(x, context)
        y = (xs + shift.unsqueeze(1)) * torch.exp(log_s).unsqueeze(1)
        return y.reshape(x.shape), _ungroup(log_s.sum(dim=1), xs)

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        assert context is not None
        shift, log_s = self._shift_log_scale(context, y.dtype)
        ys = _group(y, context)
        x = ys * torch.exp(-log_s).unsqueeze(1) - shift.unsqueeze(1)
        return x.reshape(y.shape), _ungroup(-log_s.sum(dim=1), ys)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale!r}"


class ElementwiseScale(Transform):
    r"""A learned global per-feature scale :math:`y = x \odot \sigma(s + o)`.

    This is the global scale of the official LNFMM :math:`f_s` (``offset=5``). With ``s``
    initialized at zero the scale starts at :math:`\sigma(o)` (0.9933 for ``o = 5``).

    .. math::

        \log |\det J| = \textstyle\sum_i \log \sigma(s_i + o) .

    Arguments:
        features: The number of features D.
        offset: The offset ``o``.

    Example:
        >>> t = ElementwiseScale(3, offset=5.0)
        >>> y, ladj = t(torch.ones(2, 3))
        >>> round(y[0, 0].item(), 4)
        0.9933
    """

    shares_context = True  # unconditional: the context is never used

    def __init__(self, features: int, offset: float = 5.0) -> None:
        super().__init__(features)
        self.offset = float(offset)
        self.log_scale_raw = nn.Parameter(torch.zeros(features))

    def _log_scale(self, dtype: torch.dtype) -> Tensor:
        return F.logsigmoid(self.log_scale_raw + self.offset).to(dtype)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        log_s = self._log_scale(x.dtype)
        return x * torch.exp(log_s), log_s.sum().expand(x.shape[0])

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        log_s = self._log_scale(y.dtype)
        return y * torch.exp(-log_s), (-log_s.sum()).expand(y.shape[0])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", offset={self.offset}"


def data_init(flow_or_transform: nn.Module, x: Tensor, context: Tensor | None = None) -> nn.Module:
    r"""Runs the data-dependent initialization of every (Conditional)ActNorm, in order.

    The batch ``x`` is pushed through the flow (no gradients); each :class:`ActNorm` and
    :class:`ConditionalActNorm` is (re-)initialized from the input it actually receives,
    so later layers see the already normalized outputs of earlier ones. All are then marked
    initialized. Modules keep their train/eval mode.

    Arguments:
        flow_or_transform: A :class:`flowkit.Flow` (anything with ``log_prob`` and
            ``transform``) or a transform called as ``t(x, context)``.
        x: A batch of data, ``(B, D)`` with ``B >= 2``.
        context: The context ``(B, C)``, or None.

    Returns:
        The same module, initialized.

    Example:
        >>> import flowkit
        >>> flow = flowkit.glow(4, num_layers=2, hidden_features=16)
        >>> _ = flowkit.data_init(flow, torch.randn(64, 4))
    """
    layers = [m for m in flow_or_transform.modules() if isinstance(m, (ActNorm, ConditionalActNorm))]
    handles = [m.register_forward_pre_hook(_init_hook, with_kwargs=True) for m in layers]
    try:
        with torch.no_grad():
            if hasattr(flow_or_transform, "log_prob") and hasattr(flow_or_transform, "transform"):
                flow_or_transform.log_prob(x, context)  # type: ignore[operator]
            else:
                flow_or_transform(x, context)
    finally:
        for h in handles:
            h.remove()
    missed = [m for m in layers if not bool(m.initialized)]
    if missed:
        raise RuntimeError(f"data_init: {len(missed)} normalization layer(s) were not reached by the forward pass")
    return flow_or_transform


def _init_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    x = args[0] if args else kwargs["x"]
    context = args[1] if len(args) > 1 else kwargs.get("context")
    module._check(x, context)  # type: ignore[operator]
    module.initialize(x, context)  # type: ignore[operator]
