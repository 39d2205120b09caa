r"""Invertible linear maps."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowkit.transforms.base import Transform

__all__ = ["Invertible1x1"]


class Invertible1x1(Transform):
    r"""LU-parameterized invertible linear map (Glow's invertible 1x1 convolution on vectors).

    .. math::

        y = W x, \quad W = P L (U + \mathrm{diag}(\mathrm{sign} \odot e^{\log s})), \quad
        \log |\det J| = \textstyle\sum_i \log s_i ,

    with a fixed permutation matrix :math:`P` (buffer), a unit lower-triangular :math:`L`
    and a strictly upper-triangular :math:`U` (parameters), fixed signs (buffer) and
    :math:`\log s` (parameter). It starts as a random rotation (QR of a Gaussian matrix,
    seeded by ``seed``; ``None`` uses torch's global generator). The inverse uses two
    triangular solves, computed in float64 when the input is float32 and cast back.

    Arguments:
        features: The number of features D.
        seed: The seed of the initial rotation, or None.

    Example:
        >>> t = Invertible1x1(4, seed=0)
        >>> x = torch.randn(3, 4)
        >>> y, ladj = t(x)
        >>> torch.allclose(t.inverse(y)[0], x, atol=1e-5)
        True
    """

    shares_context = True  # unconditional: the context is never used

    def __init__(self, features: int, seed: int | None = None) -> None:
        super().__init__(features)
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        w = torch.randn(features, features, generator=gen, dtype=torch.float64)
        q, _ = torch.linalg.qr(w)
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        dtype = torch.get_default_dtype()
        self.register_buffer("perm", p.to(dtype))
        self.register_buffer("sign", torch.sign(diag).to(dtype))
        self.register_buffer("lower_mask", torch.tril(torch.ones(features, features, dtype=dtype), -1))
        self.register_buffer("eye", torch.eye(features, dtype=dtype))
        self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(diag.abs()).to(dtype))

    def _factors(self) -> tuple[Tensor, Tensor]:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * torch.exp(self.log_s))
        return lower, upper

    def weight(self) -> Tensor:
        r"""The matrix :math:`W = P L U`."""
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        y = x @ self.weight().T.to(x.dtype)
        return y, self.log_s.sum().to(x.dtype).expand(x.shape[0])

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        # Row form: x W^T = y with W^T = U^T L^T P^T, so x U^T L^T = y P.
        work = torch.float64 if y.dtype in (torch.float32, torch.float16, torch.bfloat16) else y.dtype
        lower, upper = self._factors()
        lower, upper, perm = lower.to(work), upper.to(work), self.perm.to(work)
        rhs = y.to(work) @ perm
        w = torch.linalg.solve_triangular(lower.T, rhs, upper=True, left=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper.T, w, upper=False, left=False)
        return x.to(y.dtype), (-self.log_s.sum()).to(y.dtype).expand(y.shape[0])
