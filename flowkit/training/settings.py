r"""The engine's settings, its error for a diverged run, and the seeded pieces of exact resume:
seeds, the data order and the labeled subset (pure functions of the seed).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["NonFiniteLossError", "TrainSettings", "derive_seed", "epoch_order", "labeled_mask", "seed_everything"]


class NonFiniteLossError(FloatingPointError):
    r"""A loss term (or a gradient) turned NaN or infinite.

    Nothing is saved when it is raised: the last checkpoint on disk is the last good state.

    Arguments:
        step: The step (1-based) whose loss was not finite.
        terms: Every term's value at that step.
        bad: The names of the non-finite terms (or ``"grad:<group>"`` for gradients).
    """

    def __init__(self, step: int, terms: Mapping[str, float], bad: Sequence[str]) -> None:
        self.step = step
        self.terms = dict(terms)
        self.bad = list(bad)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.terms.items())
        super().__init__(
            f"non-finite value in {', '.join(repr(b) for b in self.bad)} at step {step} "
            f"(terms: {shown}); nothing was saved, the last checkpoint is the last good state. "
            f"Lower the learning rate or the loss weights, or tighten the gradient clip values"
        )


@dataclass
class TrainSettings:
    r"""How to train (the model's own hyper-parameters live in its config).

    Arguments:
        steps: The total number of optimizer steps (a resumed run continues up to it).
        batch_size: Pairs per step and process.
        seed: Seeds the model's initialization, the training randomness and the data order.
        labeled_fraction: Semi-supervised training: this fraction of the training items (a
            fixed subset chosen by the seed) is labeled, and each batch carries a boolean
            ``"labeled"`` entry for the step; 1.0 is fully supervised (no such entry).
        checkpoint_every: Save every that many steps (0: only at the end); a run killed at any
            point loses at most that many steps.
        log_every: Write a log row every that many steps (and at the last step).
        log: ``"csv"`` (always written), ``"tensorboard"`` or ``"both"``: CSV plus TensorBoard.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        amp: Mixed precision on CUDA: ``"auto"`` (bf16 where supported, else fp16 with a grad
            scaler), ``"bf16"``, ``"fp16"`` or ``"off"``. Ignored on CPU.
        progress: Show a tqdm progress bar (rank 0 only).
        num_workers: DataLoader worker processes.
        find_unused_parameters: Passed to DistributedDataParallel: set it for a model that
            leaves some trainable parameters without a gradient in a step.
        validate_every: Run the trainer's ``validate`` function every that many steps (and
            at the last step) and write its metrics to ``validation.csv`` (0: never).
        lr_schedule: ``"constant"``, or ``"cosine"``: every group's learning rate follows
            :math:`\mathrm{lr}_0 \cdot \tfrac12 (1 + \cos(\pi (t - 1) / T))` at step
            :math:`t` of :math:`T` = ``steps`` (a pure function of the step, so resume stays
            exact; resuming with other ``steps`` stretches the curve from there on).

    Example:
        >>> TrainSettings(steps=100, batch_size=16, seed=1).to_dict()["steps"]
        100
    """

    steps: int = 1000
    batch_size: int = 128
    seed: int = 0
    labeled_fraction: float = 1.0
    checkpoint_every: int = 500
    log_every: int = 1
    log: str = "csv"
    device: str = "auto"
    amp: str = "auto"
    progress: bool = True
    num_workers: int = 0
    find_unused_parameters: bool = False
    validate_every: int = 0
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        errors = []
        for name in ("steps", "checkpoint_every", "num_workers", "validate_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                errors.append(f"{name} must be an int >= 0, got {v!r}")
        for name in ("batch_size", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                errors.append(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.labeled_fraction, (int, float)) or not 0.0 < self.labeled_fraction <= 1.0:
            errors.append(f"labeled_fraction must be in (0, 1], got {self.labeled_fraction!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            errors.append(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.log not in ("csv", "tensorboard", "both"):
            errors.append(f"log must be 'csv', 'tensorboard' or 'both', got {self.log!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            errors.append(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {self.amp!r}")
        if errors:
            raise ValueError("invalid TrainSettings:\n  - " + "\n  - ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        r"""The settings as a JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainSettings:
        r"""Settings from a dict (e.g. a checkpoint's ``training`` entry); unknown keys are ignored.

        Arguments:
            d: Field values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# -- seeds and data order -------------------------------------------------------------------


def derive_seed(*keys: int) -> int:
    r"""A 63-bit seed from a tuple of ints (numpy ``SeedSequence``): independent streams per key.

    Example:
        >>> derive_seed(0, 1) != derive_seed(1, 0)
        True
    """

    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, dtype=np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    r"""Seeds torch (CPU and CUDA), numpy and Python's ``random``.

    Arguments:
        seed: Any int.
    """

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    r"""The shuffled order of ``n`` indices in an epoch: a pure function of ``(seed, epoch)``.

    Example:
        >>> torch.equal(epoch_order(10, 0, 3), epoch_order(10, 0, 3))
        True
    """

    g = torch.Generator().manual_seed(derive_seed(seed, epoch, 0x0DA7A))
    return torch.randperm(n, generator=g)


def labeled_mask(n: int, fraction: float, seed: int) -> Tensor:
    r"""A fixed, seeded subset of ``round(fraction * n)`` labeled pairs (at least one).

    Arguments:
        n: The number of training pairs.
        fraction: The labeled fraction in (0, 1].
        seed: The training seed.

    Example:
        >>> labeled_mask(10, 0.3, 0).sum().item()
        3
    """

    mask = torch.zeros(n, dtype=torch.bool)
    k = max(1, round(fraction * n))
    g = torch.Generator().manual_seed(derive_seed(seed, 0x1ABE1))
    mask[torch.randperm(n, generator=g)[:k]] = True
    return mask
