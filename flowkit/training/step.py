r"""The engine's side of a step: the :class:`Step` protocol, extra updates, batches that move to
the device when read, param groups, Adam, gradient clipping and checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

__all__ = ["DEFAULT_LR", "Step"]

# The learning rate of the default param group (a step without ``param_groups``).
DEFAULT_LR = 1e-3


class Step(Protocol):
    r"""What the engine calls at every step: ``step(model, batch) -> {name: scalar tensor}``.

    The dict must hold a scalar ``"loss"`` (what is minimized); its other scalar entries are
    logged. ``model`` is the module being trained (wrapped in DistributedDataParallel under
    ``torchrun``: call it, rather than its methods, so that gradients are synchronized);
    ``batch`` is the collated dict of dataset items, its tensors moved to the device when
    first read, plus ``"labeled"`` (a boolean tensor) when ``labeled_fraction < 1``.

    Optional members, used when present:

    * ``param_groups(model) -> list[dict]``: Adam param groups, each with ``params``, ``lr``
      and optionally ``name``, ``clip_value`` (gradient value clip of the group) and Adam
      options (``betas``...). Default: every trainable parameter, lr ``1e-3``, no clip.
    * ``extra_updates(model) -> list[dict]``: optimizer updates taken before the main one at
      every step, e.g. a GAN's discriminator. Each dict holds ``name`` (checkpoint keys
      ``optimizer_<name>`` and ``scaler_<name>``, logged term ``<name>_loss``), ``group``
      (one param group; its parameters are kept out of the main groups), ``loss``
      (``loss(module, batch) -> scalar tensor``, given the unwrapped module) and optionally
      ``state`` (``{key: module}`` whose state dicts each checkpoint also holds).

    Example:
        >>> def mse_step(model, batch):
        ...     return {"loss": (model(batch["x"]) - batch["y"]).pow(2).mean()}
    """

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> Mapping[str, Tensor]: ...


@dataclass
class _Update:
    # An extra optimizer update of the step (see Step), with its optimizer and scaler.
    name: str
    loss: Callable[[nn.Module, Mapping[str, Any]], Tensor]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    state: Mapping[str, nn.Module]

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]


class _DeviceBatch(Mapping[str, Any]):
    r"""A collated batch whose tensors move to the device when first read: entries the step
    never reads (image ids, ...) are never copied."""

    def __init__(self, data: dict[str, Any], device: torch.device) -> None:
        self._data = data
        self._device = device

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        if isinstance(value, Tensor) and value.device != self._device:
            value = self._data[key] = value.to(self._device, non_blocking=True)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def all_finite(self) -> bool:
        r"""Whether every floating-point tensor entry is finite."""
        return all(bool(torch.isfinite(v).all()) for v in self._data.values() if isinstance(v, Tensor) and v.is_floating_point())


class _Indexed(Dataset):
    # Adds the dataset index to each item, so that the labeled mask follows the item.
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if not isinstance(item, Mapping):
            raise TypeError(
                f"dataset items must be dicts of tensors (e.g. {{'x': x, 'context': c}}), got a {type(item).__name__}: "
                f"wrap the dataset so that its items are dicts (the step reads them by name)"
            )
        return {**item, "index": i}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return default_collate(items)


def _adam(groups: list[dict]) -> torch.optim.Adam:
    r"""Adam with the fused kernel where PyTorch has it for these parameters (CPU and CUDA
    floating point): one pass over each parameter's state instead of ~8 elementwise ops,
    0.92 -> 0.31 s of the paper config's 2.9 s train step on one CPU thread
    (``benchmarks/lnfmm_step.py --profile-train``). Falls back to the default otherwise."""
    params = [p for g in groups for p in g["params"]]
    if not params or not all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        return torch.optim.Adam(groups)
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a dtype or build without the fused kernel
        return torch.optim.Adam(groups)


def _param_groups(step: Step, model: nn.Module, exclude: set[int]) -> list[dict[str, Any]]:
    r"""The step's param groups (or one group of every trainable parameter), each with a
    ``name`` and ``clip_value``; parameters in ``exclude`` (extra updates') and frozen ones are
    left out, and so are groups left empty."""
    if hasattr(step, "param_groups"):
        groups = [dict(g) for g in step.param_groups(model)]
    else:
        groups = [{"params": list(model.parameters()), "lr": DEFAULT_LR, "name": "all"}]
    out = []
    for g in groups:
        g["params"] = [p for p in g["params"] if id(p) not in exclude and p.requires_grad]
        g.setdefault("name", f"group{len(out)}")
        g.setdefault("clip_value", None)
        if g["params"]:
            out.append(g)
    if not out:
        raise ValueError(f"{type(model).__name__} has no trainable parameters in the step's param groups")
    return out


def _fill_empty_groups(groups: Sequence[Mapping[str, Any]]) -> None:
    r"""Gives a group in which no parameter received a gradient this step zero gradients.

    PyTorch's fused Adam cannot step a group without any gradient (e.g. a decoder whose only
    loss term is weighted 0 and computed without a graph); zeros are what a 0-weighted term
    used to contribute, so the update is unchanged."""
    for g in groups:
        if all(p.grad is None for p in g["params"]):
            for p in g["params"]:
                p.grad = torch.zeros_like(p)


def _clip(groups: Sequence[Mapping[str, Any]]) -> None:
    for g in groups:
        if g.get("clip_value") is not None:
            torch.nn.utils.clip_grad_value_(g["params"], g["clip_value"])


def _grads_finite(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    bad = []
    for g in groups:
        grads = [p.grad for p in g["params"] if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(x).all() for x in grads]).all()):
            bad.append(f"grad:{g['name']}")
    return bad
