r"""Fixed feature permutations (volume preserving). Indices are buffers."""

from __future__ import annotations

import torch
from torch import Tensor

from flowkit.transforms.base import Transform

__all__ = ["Permutation", "Reverse", "Switch"]


class Permutation(Transform):
    r"""A fixed permutation of the features, :math:`y_i = x_{\pi(i)}`, :math:`\log |\det J| = 0`.

    Arguments:
        features: The number of features D.
        seed: The seed of a random permutation (None uses torch's global generator).
        indices: An explicit permutation of ``range(D)`` (overrides ``seed``).

    Example:
        >>> t = Permutation(3, indices=torch.tensor([2, 0, 1]))
        >>> t(torch.tensor([[10.0, 11.0, 12.0]]))[0]
        tensor([[12., 10., 11.]])
    """

    shares_context = True  # unconditional: the context is never used

    indices: Tensor
    inverse_indices: Tensor

    def __init__(self, features: int, seed: int | None = None, indices: Tensor | None = None) -> None:
        super().__init__(features)
        if indices is None:
            gen = None if seed is None else torch.Generator().manual_seed(int(seed))
            indices = torch.randperm(features, generator=gen)
        indices = torch.as_tensor(indices, dtype=torch.long).flatten()
        if indices.numel() != features or not torch.equal(torch.sort(indices).values, torch.arange(features)):
            raise ValueError(f"indices must be a permutation of range({features}), got {indices.tolist()}")
        self.register_buffer("indices", indices.clone())
        self.register_buffer("inverse_indices", torch.argsort(indices))

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.indices), x.new_zeros(x.shape[0])

    def _inverse(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return y.index_select(1, self.inverse_indices), y.new_zeros(y.shape[0])


class Reverse(Permutation):
    r"""Reverses the order of the features.

    Example:
        >>> Reverse(3)(torch.tensor([[1.0, 2.0, 3.0]]))[0]
        tensor([[3., 2., 1.]])
    """

    def __init__(self, features: int) -> None:
        super().__init__(features, indices=torch.arange(features - 1, -1, -1))


class Switch(Permutation):
    r"""Swaps the two halves: ``y = cat(x[D//2:], x[:D//2])``.

    For odd D the first half is the ``D // 2`` features a ``"half"`` coupling keeps and the
    second the ``ceil(D / 2)`` it transforms, so coupling -> Switch -> coupling transforms
    every feature within two steps.

    Example:
        >>> Switch(5)(torch.arange(5.0)[None])[0]
        tensor([[2., 3., 4., 0., 1.]])
    """

    def __init__(self, features: int) -> None:
        h = features // 2
        super().__init__(features, indices=torch.cat([torch.arange(h, features), torch.arange(0, h)]))
