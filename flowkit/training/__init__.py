r"""Training: the engine (:class:`Trainer`, :func:`train`), atomic checkpoints, DDP helpers and logs.

Example:
    >>> from flowkit.training import TrainSettings, train
    >>> trainer = train(LNFMMConfig.small(), load_caption_data("shapes"), TrainSettings(steps=100), out="runs/a")
"""

from __future__ import annotations

from flowkit.training.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    atomic_write_text,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from flowkit.training.distributed import DistributedContext, init_distributed, shard
from flowkit.training.logging import CSVLogger, RunLogger, read_csv_log
from flowkit.training.pretraining import attribute_targets, initialize_image_encoder, pretrain_shapes_encoder
from flowkit.training.trainer import (
    NonFiniteLossError,
    Trainer,
    TrainSettings,
    adapt_config,
    derive_seed,
    epoch_order,
    labeled_mask,
    seed_everything,
    train,
)

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
