r"""More than one process: DistributedDataParallel under ``torchrun``.

``torchrun`` (``python -m torch.distributed.run``) sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in each process; :func:`init_distributed` reads them and joins the process
group (gloo on CPU, NCCL on GPU). Without them, training runs in one process.

.. code-block:: bash

    torchrun --standalone --nproc_per_node=2 -m flowkit train --data shapes --steps 1000 --out runs/a
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistributedContext",
    "all_reduce_gradients",
    "barrier",
    "broadcast_module",
    "gather_objects",
    "init_distributed",
    "is_main_process",
    "resolve_device",
    "shard",
    "shutdown_distributed",
]


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    r"""Turns ``"auto"``, ``"cpu"`` or ``"cuda"`` into a device (``cuda:LOCAL_RANK`` under torchrun).

    Arguments:
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        local_rank: The process' rank on its machine; picks the GPU.

    Example:
        >>> resolve_device("auto")
        device(type='cpu')
    """

    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device '{device}' was asked for, but CUDA is not available (torch {torch.__version__})")
        if device == "cuda":
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device(device)


@dataclass
class DistributedContext:
    r"""Where this process stands: its rank, the world size and its device.

    Arguments:
        rank: The global rank (0 logs and saves checkpoints).
        local_rank: The rank on this machine.
        world_size: The number of processes.
        device: This process' device.
        initialized_here: Whether :func:`init_distributed` created the process group (and so
            :func:`shutdown_distributed` destroys it).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    r"""Whether this process is rank 0 (``RANK`` unset or 0), known before any process group is joined.

    Example:
        >>> is_main_process() == (os.environ.get("RANK", "0") == "0")
        True
    """
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device: str | torch.device = "auto", timeout_s: float = 600.0) -> DistributedContext:
    r"""Joins the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Uses gloo on CPU and NCCL on GPU. A process group created earlier by the caller is reused.

    Arguments:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        timeout_s: The collective timeout.

    Example:
        >>> ctx = init_distributed("cpu")   # a single process: ctx.world_size == 1
    """

    from datetime import timedelta

    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistributedContext(dist.get_rank(), local_rank, dist.get_world_size(), dev, False)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistributedContext(0, 0, 1, dev, False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        if key not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world_size} but {key} is not set: launch with torchrun")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistributedContext(dist.get_rank(), local_rank, dist.get_world_size(), dev, True)


def shutdown_distributed(ctx: DistributedContext) -> None:
    r"""Waits for every rank (barrier) and destroys the process group if this module created it."""

    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        if ctx.initialized_here:
            dist.destroy_process_group()


def barrier(ctx: DistributedContext) -> None:
    r"""A barrier across ranks; nothing in a single process."""

    if ctx.distributed and dist.is_initialized():
        dist.barrier()


def shard(indices: Tensor, rank: int, world_size: int) -> Tensor:
    r"""This rank's share of an index order, as :class:`torch.utils.data.DistributedSampler` does.

    The order is padded by wrapping around to a multiple of ``world_size``, then rank ``r``
    takes every ``world_size``-th index starting at ``r``.

    Arguments:
        indices: The global order, a 1-d integer tensor.
        rank: This process' rank.
        world_size: The number of processes.

    Example:
        >>> shard(torch.arange(5), 1, 2)
        tensor([1, 3, 0])
    """

    if world_size <= 1:
        return indices
    n = len(indices)
    total = -(-n // world_size) * world_size
    if total > n:
        reps = -(-(total - n) // max(n, 1))
        indices = torch.cat([indices, indices.repeat(reps)[: total - n]])
    return indices[rank:total:world_size]


def all_reduce_gradients(params: Iterable[nn.Parameter], world_size: int) -> None:
    r"""Averages gradients over ranks (for parameters stepped outside DDP, e.g. a discriminator)."""

    if world_size <= 1 or not dist.is_initialized():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world_size)


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0, parameters: bool = True) -> None:
    r"""Copies rank ``src``'s parameters (optional) and buffers to every rank.

    Data-dependent initializations (ActNorm) run on each rank's own batch, and BatchNorm
    running statistics follow each rank's last batch; broadcasting makes the replicas identical
    again (DDP itself broadcasts rank 0's buffers before every forward).

    Arguments:
        module: The (unwrapped) model.
        src: The rank whose values win.
        parameters: Also broadcast the parameters, not only the buffers.
    """

    if not dist.is_initialized() or dist.get_world_size() <= 1:
        return
    tensors = (list(module.parameters()) if parameters else []) + list(module.buffers())
    for t in tensors:
        dist.broadcast(t.data, src=src)


def gather_objects(obj: Any, ctx: DistributedContext) -> list[Any]:
    r"""Every rank's ``obj`` as a list indexed by rank (``[obj]`` in a single process)."""

    if not ctx.distributed or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
