r"""Training: the engine (:class:`Trainer`: a model, a step and settings), atomic checkpoints,
DDP helpers and logs. The engine knows no model; :mod:`flowkit.recipes` joins a model's step to it.

``train``, ``adapt_config``, ``initialize_image_encoder``, ``pretrain_shapes_encoder`` and
``attribute_targets`` are still importable from here under their old names; they live in
:mod:`flowkit.recipes` and :mod:`flowkit.models.lnfmm` and load on first use.

Example:
    >>> import torch
    >>> from flowkit.training import Trainer, TrainSettings
    >>> data = [{"x": torch.randn(3)} for _ in range(8)]
    >>> def step(model, batch):
    ...     return {"loss": model(batch["x"]).pow(2).mean()}
    >>> Trainer(torch.nn.Linear(3, 1), data, TrainSettings(steps=2, batch_size=4, progress=False, device="cpu"), step=step).fit()["loss"] >= 0
    True
"""

from __future__ import annotations

import importlib
from typing import Any

from flowkit.io import CHECKPOINT_NAME, CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint
from flowkit.training.checkpoint import get_rng_state, set_rng_state
from flowkit.training.distributed import DistributedContext, init_distributed, shard
from flowkit.training.logging import CSVLogger, RunLogger, read_csv_log
from flowkit.training.trainer import (
    NonFiniteLossError,
    Step,
    Trainer,
    TrainSettings,
    derive_seed,
    epoch_order,
    labeled_mask,
    seed_everything,
)

# Old names, now above the engine (it must not import a model): resolved on first use.
_MOVED: dict[str, str] = {
    "train": "flowkit.recipes",
    "adapt_config": "flowkit.models.lnfmm.step",
    "attribute_targets": "flowkit.models.lnfmm.pretraining",
    "initialize_image_encoder": "flowkit.models.lnfmm.pretraining",
    "pretrain_shapes_encoder": "flowkit.models.lnfmm.pretraining",
}

__all__ = [
    "attribute_targets",
    "initialize_image_encoder",
    "pretrain_shapes_encoder",
    "CHECKPOINT_NAME",
    "CSVLogger",
    "CheckpointError",
    "DistributedContext",
    "NonFiniteLossError",
    "RunLogger",
    "Step",
    "TrainSettings",
    "Trainer",
    "adapt_config",
    "atomic_write_text",
    "derive_seed",
    "epoch_order",
    "get_rng_state",
    "init_distributed",
    "labeled_mask",
    "load_checkpoint",
    "read_csv_log",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "shard",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'flowkit.training' has no attribute {name!r}")
