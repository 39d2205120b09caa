r"""The training engine: seeded data order, Adam per parameter group, value clipping, GAN
alternation, mixed precision on CUDA, logs, atomic checkpoints and exact resume.

Exact resume means: ``N`` steps, a checkpoint, and ``N`` more steps in a new process give the
same weights, bit for bit on CPU, as ``2N`` steps straight. It holds because everything a step
depends on is either in the checkpoint or a pure function of it:

* weights, Adam moments (and the GAN discriminator's), the AMP grad scaler;
* the RNG states (torch CPU/CUDA, numpy, Python) of every rank;
* the data position (epoch, batch): epoch ``e``'s order is ``randperm`` keyed by
  ``(seed, e)``, so the batches already consumed are skipped by index, never loaded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from flowkit.training.checkpoint import (
    CHECKPOINT_NAME,
    atomic_write_text,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from flowkit.training.distributed import (
    DistributedContext,
    all_reduce_gradients,
    barrier,
    broadcast_module,
    gather_objects,
    init_distributed,
    shard,
    shutdown_distributed,
)
from flowkit.training.logging import RunLogger, format_terms

__all__ = [
    "NonFiniteLossError",
    "TrainSettings",
    "Trainer",
    "adapt_config",
    "derive_seed",
    "epoch_order",
    "labeled_mask",
    "seed_everything",
    "train",
]

# Settings that change what a step computes: a resume with other values cannot be exact.
RESUME_KEYS: tuple[str, ...] = ("batch_size", "seed", "labeled_fraction", "lr_schedule")


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
        labeled_fraction: Semi-supervised training: this fraction of the training pairs (a
            fixed subset chosen by the seed) is labeled; 1.0 is fully supervised.
        checkpoint_every: Save every that many steps (0: only at the end).
        log_every: Write a log row every that many steps (and at the last step).
        log: ``"csv"`` (always written), ``"tensorboard"`` or ``"both"``: CSV plus TensorBoard.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        amp: Mixed precision on CUDA: ``"auto"`` (bf16 where supported, else fp16 with a grad
            scaler), ``"bf16"``, ``"fp16"`` or ``"off"``. Ignored on CPU.
        progress: Show a tqdm progress bar (rank 0 only).
        num_workers: DataLoader worker processes.
        find_unused_parameters: Passed to DistributedDataParallel: set it for a model that
            leaves some trainable parameters without a gradient in a step (LNFMM does not).
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
    checkpoint_every: int = 0
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
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainSettings:
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


class _Indexed(Dataset):
    # Adds the dataset index to each item, so the labeled mask follows the pair.
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if isinstance(item, Mapping):
            item = dict(item)
        elif isinstance(item, (tuple, list)) and len(item) >= 2:
            item = {"image": item[0], "caption": item[1]}
        else:
            raise TypeError(f"dataset items must be dicts with 'image' and 'caption' (or pairs), got {type(item).__name__}")
        item["index"] = i
        return item


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return default_collate(items)


# -- the model's side -----------------------------------------------------------------------


def adapt_config(config: Any, data: Any) -> Any:
    r"""The model config adjusted to the data: vocabulary size, caption length, image input.

    Arguments:
        config: An :class:`~flowkit.models.LNFMMConfig`.
        data: A :class:`~flowkit.data.CaptionData` (``vocab``, ``train``, ``image_kind``,
            ``image_shape``).

    Example:
        >>> cfg = adapt_config(LNFMMConfig.small(), load_caption_data("shapes"))
    """

    changes: dict[str, Any] = {"vocab_size": len(data.vocab)}
    names = {f.name for f in dataclasses.fields(config)}
    max_len = getattr(data, "max_len", None)
    if max_len is None and len(data.train) > 0:
        max_len = int(data.train[0]["caption"].shape[-1])
    if max_len is not None:
        changes["max_caption_len"] = int(max_len)
    shape = tuple(data.image_shape)
    if data.image_kind == "features":
        changes["image_encoder"] = "features"
        changes["image_feature_dim"] = int(shape[-1])
        # the conv trunk's pre-training (small()) has no place in a features encoder
        changes["image_encoder_init"] = "random"
        changes["freeze_image_trunk"] = False
        if "gan" in names and config.gan:
            raise ValueError("gan=True needs pixel images, but the data holds image features")
    elif data.image_kind == "pixels":
        if config.image_encoder == "features":
            changes["image_encoder"] = "conv"
        if "image_size" in names:
            changes["image_size"] = int(shape[-1])
    else:
        raise ValueError(f"unknown image kind {data.image_kind!r} (expected 'pixels' or 'features')")
    changes = {k: v for k, v in changes.items() if k in names}
    return dataclasses.replace(config, **changes)


def _config_dict(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    return config.to_dict()


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


def _generator_groups(model: nn.Module, exclude: set[int]) -> list[dict[str, Any]]:
    if hasattr(model, "optimizer_groups"):
        groups = [dict(g) for g in model.optimizer_groups()]
    else:
        lr = getattr(getattr(model, "config", None), "lr", 1e-3)
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr, "name": "all", "clip_value": None}]
    out = []
    for g in groups:
        g["params"] = [p for p in g["params"] if id(p) not in exclude and p.requires_grad]
        g.setdefault("name", f"group{len(out)}")
        g.setdefault("clip_value", None)
        if g["params"]:
            out.append(g)
    if not out:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return out


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


class Trainer:
    r"""Trains a model that returns a dict of loss terms with a scalar ``"loss"``.

    The model is called as ``model(images, captions)`` (plus ``labeled=mask`` when
    ``labeled_fraction < 1``). Optional hooks: ``model.optimizer_groups()`` (param groups with
    ``lr``, ``name`` and ``clip_value``: gradient values are clipped per group) and, when
    ``model.config.gan``, ``model.discriminator_parameters()`` and
    ``model.discriminator_loss(images, captions)``: each step is a discriminator step, then a
    generator step (the discriminator's param group from ``model.discriminator_group()`` when
    present). Under ``torchrun`` the model is wrapped in DistributedDataParallel; rank 0
    logs and saves.

    Seed before building the model (``seed_everything(settings.seed)``, as :func:`train` does),
    so that its initialization is reproducible.

    Arguments:
        model: The model (moved to the settings' device).
        dataset: Training items: dicts with ``image`` and ``caption`` tensors.
        settings: A :class:`TrainSettings`.
        out: The run folder (``checkpoint.pt``, ``config.json``, ``vocab.json``, ``log.csv``);
            None trains without writing anything.
        config: The model config (a dataclass with ``to_dict()`` or a dict), saved in checkpoints.
        vocab: The vocabulary dict (``Vocabulary.to_dict()``), saved beside the weights.
        meta: Free JSON-able facts about the run (e.g. the data options), saved as ``meta``.
        validate: ``validate(model) -> {name: number}``, run on rank 0 every
            ``settings.validate_every`` steps in eval mode, without gradients and on a forked
            RNG (so it changes nothing of the training: resume stays exact); a learning
            curve a user can watch in ``validation.csv`` / TensorBoard.

    Example:
        >>> seed_everything(0); model = LNFMM(config)
        >>> trainer = Trainer(model, data.train, TrainSettings(steps=100), out="runs/a", config=config)
        >>> trainer.fit()
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        settings: TrainSettings,
        *,
        out: str | os.PathLike | None = None,
        config: Any = None,
        vocab: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        validate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    ) -> None:
        self.settings = settings
        self.validate = validate
        self.meta = dict(meta or {})
        self.ctx: DistributedContext = init_distributed(settings.device)
        self.device = self.ctx.device
        self.out = None if out is None else Path(out)
        self.config = _config_dict(config if config is not None else getattr(model, "config", None))
        self.vocab = None if vocab is None else dict(vocab)
        self.dataset = dataset
        self.module = model.to(self.device)
        self.module.train()
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("the training set is empty")
        per_rank = -(-n // self.ctx.world_size)
        if settings.batch_size > per_rank:
            warnings.warn(
                f"batch size {settings.batch_size} is larger than the {per_rank} training pairs per process: "
                f"every step uses those {per_rank}; pass a batch size <= {per_rank} (or more data)",
                stacklevel=2,
            )

        # GAN: a separate Adam for the discriminator; its parameters are kept out of the
        # generator's groups.
        cfg = getattr(model, "config", None)
        self.gan = bool(getattr(cfg, "gan", False)) and hasattr(model, "discriminator_loss")
        d_params: list[nn.Parameter] = []
        if self.gan:
            d_params = [p for p in model.discriminator_parameters() if p.requires_grad]
        self.groups = _generator_groups(model, {id(p) for p in d_params})
        self.optimizer = _adam(self.groups)
        self.groups = self.optimizer.param_groups
        for g in self.groups:
            g.setdefault("base_lr", g["lr"])  # the schedule scales this; saved with the optimizer
        self.optimizer_d: torch.optim.Optimizer | None = None
        if self.gan:
            if hasattr(model, "discriminator_group"):
                group_d = dict(model.discriminator_group())
                group_d["params"] = [p for p in group_d["params"] if p.requires_grad]
            else:
                lr_d = getattr(cfg, "discriminator_lr", None) or self.groups[0]["lr"]
                group_d = {"params": d_params, "lr": lr_d, "clip_value": getattr(cfg, "grad_clip", None)}
            group_d.setdefault("name", "discriminator")
            group_d.setdefault("clip_value", None)
            self.optimizer_d = _adam([group_d])

        # Mixed precision on CUDA only: bf16 needs no scaler; fp16 gets a GradScaler.
        self.amp_dtype: torch.dtype | None = None
        if self.device.type == "cuda" and settings.amp != "off":
            if settings.amp == "bf16" or (settings.amp == "auto" and torch.cuda.is_bf16_supported()):
                self.amp_dtype = torch.bfloat16
            else:
                self.amp_dtype = torch.float16
        elif settings.amp in ("bf16", "fp16") and self.device.type != "cuda":
            warnings.warn(f"amp={settings.amp!r} is for CUDA; training in float32 on {self.device}", stacklevel=2)
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=use_scaler and self.gan)

        self.net: nn.Module = self.module
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(
                self.module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=settings.find_unused_parameters,
            )

        self.mask = labeled_mask(n, settings.labeled_fraction, settings.seed) if settings.labeled_fraction < 1.0 else None
        self.step = 0
        self.epoch = 0
        self.batch = 0
        self.elapsed = 0.0
        self.resumed_from: int | None = None
        self.last_terms: dict[str, float] = {}
        # The training randomness (noise, dropout) gets its own stream per rank, independent
        # of the stream that initialized the model.
        seed_everything(derive_seed(settings.seed, self.ctx.rank, 0x7EA1))

    def base_lr(self) -> float:
        r"""The largest current learning rate of the generator's groups (``config.lr`` for
        LNFMM, times the schedule's factor), the ``lr`` column of the logs."""
        return max(float(g["lr"]) for g in self.optimizer.param_groups)

    # -- data -------------------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        r"""Steps per epoch for this process (full batches; one short batch for a tiny set)."""
        per_rank = len(shard(torch.arange(len(self.dataset)), self.ctx.rank, self.ctx.world_size))  # type: ignore[arg-type]
        return max(1, per_rank // self.settings.batch_size)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        order = shard(epoch_order(len(self.dataset), self.settings.seed, epoch), self.ctx.rank, self.ctx.world_size)  # type: ignore[arg-type]
        bs = self.settings.batch_size
        return [order[i * bs : (i + 1) * bs].tolist() for i in range(self.batches_per_epoch())]

    def _batches(self) -> Iterator[tuple[int, int, dict[str, Any]]]:
        epoch, start = self.epoch, self.batch
        indexed = _Indexed(self.dataset)
        while True:
            # Skipped batches are dropped by index: nothing before `start` is loaded.
            batches = self._epoch_batches(epoch)[start:]
            loader = DataLoader(
                indexed,
                batch_sampler=batches,
                num_workers=self.settings.num_workers,
                collate_fn=_collate,
                pin_memory=self.device.type == "cuda",
                # Its own generator, keyed by (seed, epoch, rank): a DataLoader otherwise draws
                # a base seed from the global RNG at every epoch, which would shift the
                # training noise on resume.
                generator=torch.Generator().manual_seed(derive_seed(self.settings.seed, epoch, self.ctx.rank, 0x10AD)),
            )
            for i, batch in enumerate(loader):
                yield epoch, start + i, batch
            epoch, start = epoch + 1, 0

    # -- one step ---------------------------------------------------------------------------
    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _check(self, step: int, terms: dict[str, Tensor]) -> dict[str, float]:
        names = list(terms)
        values = torch.stack([terms[k].detach().float().reshape(()) for k in names])
        if self.ctx.distributed:
            # The mean over ranks: logs show the global batch, and a NaN on one rank stops
            # every rank at the same step (instead of leaving the others in a collective).
            import torch.distributed as dist

            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values = values / self.ctx.world_size
        values = values.cpu()
        floats = dict(zip(names, values.tolist()))
        bad = [k for k in names if not math.isfinite(floats[k])]
        if bad:
            raise NonFiniteLossError(step, floats, bad)
        return floats

    @contextmanager
    def _diverged_as_nonfinite(self, step: int, images: Tensor) -> Iterator[None]:
        # Weights turned non-finite by the previous update make a layer refuse its NaN input;
        # report that as the diverged run it is, with the hint, not as an input error.
        from flowkit.transforms.base import InputError

        try:
            yield
        except InputError as e:
            if "NaN or inf" not in str(e) or not bool(torch.isfinite(images).all()):
                raise
            bad = [f"weights:{g['name']}" for g in self.optimizer.param_groups if not all(bool(torch.isfinite(p).all()) for p in g["params"])]
            raise NonFiniteLossError(step, self.last_terms, bad or [f"activations ({e})"]) from e

    def _optimize(self, loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, step: int, terms: dict[str, float], reduce: Sequence[nn.Parameter] = ()) -> None:
        scaler.scale(loss).backward()
        all_reduce_gradients(reduce, self.ctx.world_size)
        scaler.unscale_(optimizer)
        if not scaler.is_enabled():
            # With fp16 the scaler skips steps with inf/NaN gradients by design; otherwise a
            # non-finite gradient would silently turn the weights to NaN.
            bad = _grads_finite(optimizer.param_groups)
            if bad:
                raise NonFiniteLossError(step, terms, bad)
        _clip(optimizer.param_groups)
        scaler.step(optimizer)
        scaler.update()

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        r"""One optimizer step (a discriminator step first when GAN) on a collated batch.

        Returns:
            The loss terms as floats (``d_loss`` included when GAN).
        """

        step = self.step + 1
        images = batch["image"].to(self.device, non_blocking=True)
        captions = batch["caption"].to(self.device, non_blocking=True)
        kwargs: dict[str, Any] = {}
        if self.mask is not None:
            kwargs["labeled"] = self.mask[batch["index"]].to(self.device)
        floats: dict[str, float] = {}
        if self.gan:
            assert self.optimizer_d is not None
            self.optimizer_d.zero_grad(set_to_none=True)
            with self._autocast():
                d_out = self.module.discriminator_loss(images, captions)
            d_loss = d_out["loss"] if isinstance(d_out, Mapping) else d_out
            d_floats = self._check(step, {"d_loss": d_loss})
            params_d = [p for g in self.optimizer_d.param_groups for p in g["params"]]
            self._optimize(d_loss, self.optimizer_d, self.scaler_d, step, d_floats, reduce=params_d)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast(), self._diverged_as_nonfinite(step, images):
            out = self.net(images, captions, **kwargs)
        if not isinstance(out, Mapping) or "loss" not in out:
            raise TypeError(f"{type(self.module).__name__} must return a dict with a scalar 'loss', got {type(out).__name__}")
        terms = {k: v for k, v in out.items() if isinstance(v, Tensor) and v.numel() == 1}
        if self.gan:
            terms["d_loss"] = d_loss.detach()
        floats = self._check(step, terms)
        self._optimize(out["loss"], self.optimizer, self.scaler, step, floats)
        if self.gan:
            self.optimizer_d.zero_grad(set_to_none=True)  # type: ignore[union-attr]
        return floats

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        r"""The checkpoint dict (collective under DDP: every rank must call it)."""

        from flowkit import __version__

        rngs = gather_objects(get_rng_state(), self.ctx)
        state: dict[str, Any] = {
            "format": "flowkit.checkpoint/1",
            "flowkit_version": __version__,
            "torch_version": str(torch.__version__),
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "config": self.config if self.config is not None else {},
            "training": {**self.settings.to_dict(), "world_size": self.ctx.world_size},
            "data": {"epoch": self.epoch, "batch": self.batch, "batches_per_epoch": self.batches_per_epoch(), "dataset_size": len(self.dataset)},  # type: ignore[arg-type]
            "rng": rngs,
            "elapsed": self.elapsed,
            "meta": self.meta,
        }
        if self.vocab is not None:
            state["vocab"] = self.vocab
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if self.gan:
            assert self.optimizer_d is not None
            disc = getattr(self.module, "discriminator", None)
            if isinstance(disc, nn.Module):
                state["discriminator"] = disc.state_dict()
            state["optimizer_d"] = self.optimizer_d.state_dict()
            if self.scaler_d.is_enabled():
                state["scaler_d"] = self.scaler_d.state_dict()
        return state

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        r"""Saves a checkpoint atomically (rank 0 writes; collective under DDP).

        Arguments:
            path: The file; ``OUT/checkpoint.pt`` by default.
        """

        state = self.state_dict()
        target = Path(path) if path is not None else (None if self.out is None else self.out / CHECKPOINT_NAME)
        if target is not None and self.ctx.is_main:
            save_checkpoint(target, state)
        return target

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        r"""Restores a checkpoint (weights, optimizers, RNG states, data position) for an exact resume.

        Raises:
            ValueError: The config or a setting that changes the computation (batch size,
                seed, labeled fraction) differs from the checkpoint's, or the data changed.
        """

        problems = []
        if self.config is not None and state.get("config"):
            diff = sorted(k for k in set(self.config) | set(state["config"]) if self.config.get(k) != state["config"].get(k) and k != "notes")
            problems += [f"config.{k}: checkpoint {state['config'].get(k)!r}, now {self.config.get(k)!r}" for k in diff]
        saved = state.get("training", {})
        for k in RESUME_KEYS:
            if k in saved and saved[k] != getattr(self.settings, k):
                problems.append(f"{k}: checkpoint {saved[k]!r}, now {getattr(self.settings, k)!r}")
        data = state.get("data", {})
        if "dataset_size" in data and data["dataset_size"] != len(self.dataset):  # type: ignore[arg-type]
            problems.append(f"training set size: checkpoint {data['dataset_size']}, now {len(self.dataset)}")  # type: ignore[arg-type]
        if self.vocab is not None and state.get("vocab") is not None and dict(state["vocab"]) != self.vocab:
            problems.append("vocabulary: the data's vocabulary differs from the checkpoint's")
        if problems:
            raise ValueError("cannot resume exactly, the run differs from the checkpoint:\n  - " + "\n  - ".join(problems))
        if self.gan and "optimizer_d" not in state:
            raise ValueError("the model is a GAN but the checkpoint has no 'optimizer_d' (it was trained without gan)")

        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.gan:
            self.optimizer_d.load_state_dict(state["optimizer_d"])  # type: ignore[union-attr]
            if "scaler_d" in state and self.scaler_d.is_enabled():
                self.scaler_d.load_state_dict(state["scaler_d"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        saved_world = int(saved.get("world_size", 1))
        if data and data.get("batches_per_epoch") == self.batches_per_epoch() and saved_world == self.ctx.world_size:
            self.epoch, self.batch = int(data["epoch"]), int(data["batch"])
        else:
            # Another process count or batch count: keep the step count, continue from the
            # position the steps imply in the new sharding (not bit-exact, warned about).
            per = self.batches_per_epoch()
            self.epoch, self.batch = divmod(self.step, per)
            if data:
                warnings.warn(
                    f"checkpoint written with world_size={saved_world}; resuming with {self.ctx.world_size} "
                    f"processes continues from step {self.step} but not bit-exactly",
                    stacklevel=2,
                )
        rngs = state.get("rng")
        if isinstance(rngs, Mapping):
            rngs = [rngs]
        if rngs and self.ctx.rank < len(rngs) and saved_world == self.ctx.world_size:
            set_rng_state(rngs[self.ctx.rank])
        else:
            seed_everything(derive_seed(self.settings.seed, self.ctx.rank, self.step, 0x7EA1))
        self.resumed_from = self.step

    def load(self, path: str | os.PathLike) -> None:
        r"""Loads ``path`` (a checkpoint or a run folder) and resumes from it."""

        self.load_state_dict(load_checkpoint(path, map_location="cpu"))

    def _write_metadata(self) -> None:
        import json

        if self.out is None or not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if self.config is not None:
            atomic_write_text(self.out / "config.json", json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        if self.vocab is not None:
            atomic_write_text(self.out / "vocab.json", json.dumps(self.vocab) + "\n")
        atomic_write_text(
            self.out / "training.json",
            json.dumps({**self.settings.to_dict(), "world_size": self.ctx.world_size, "meta": self.meta}, indent=2, sort_keys=True) + "\n",
        )

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, steps: int | None = None) -> dict[str, float]:
        r"""Trains up to ``steps`` (default: ``settings.steps``) total steps, then saves and cleans up.

        Raises:
            NonFiniteLossError: A loss term or gradient turned NaN/inf (nothing is saved then).

        Returns:
            The last step's loss terms.
        """

        from tqdm.auto import tqdm

        total = self.settings.steps if steps is None else steps
        logger = None
        if self.out is not None and self.ctx.is_main:
            self._write_metadata()
            logger = RunLogger(self.out, self.settings.log, resume_step=self.resumed_from)
        bar = tqdm(
            total=total,
            initial=min(self.step, total),
            desc="train",
            disable=not (self.settings.progress and self.ctx.is_main),
            dynamic_ncols=True,
        )
        fresh = self.step == 0
        batches = self._batches()
        ok = False
        try:
            while self.step < total:
                epoch, index, batch = next(batches)
                t0 = time.perf_counter()
                self._schedule_lr(self.step + 1, self.settings.steps)
                terms = self.train_step(batch)
                if fresh and self.ctx.distributed:
                    # Data-dependent initializations (ActNorm) ran on each rank's own batch.
                    broadcast_module(self.module)
                    fresh = False
                self.step += 1
                self.epoch, self.batch = (epoch, index + 1) if index + 1 < self.batches_per_epoch() else (epoch + 1, 0)
                self.elapsed += time.perf_counter() - t0
                self.last_terms = terms
                bar.update(1)
                bar.set_postfix(format_terms(terms), refresh=False)
                if logger is not None and (self.step % self.settings.log_every == 0 or self.step == total):
                    logger.log(self.step, terms, lr=self.base_lr(), time=self.elapsed)
                if logger is not None and self._validation_due(total):
                    metrics = self.run_validation()
                    logger.log_validation(self.step, metrics, lr=self.base_lr(), time=self.elapsed)
                    bar.write(f"[val] step {self.step}: " + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))
                every = self.settings.checkpoint_every
                if every and self.step % every == 0 and self.step < total:
                    self.save()
            if self.ctx.distributed:
                # BatchNorm running statistics follow each rank's own last batch: end with
                # rank 0's everywhere, as DDP's next forward would.
                broadcast_module(self.module, parameters=False)
            self.save()
            ok = True
        finally:
            bar.close()
            if logger is not None:
                logger.close()
            batches.close()
            if ok:
                barrier(self.ctx)
        return dict(self.last_terms)

    def _schedule_lr(self, step: int, total: int) -> None:
        if self.settings.lr_schedule == "constant":
            return
        factor = 0.5 * (1.0 + math.cos(math.pi * (step - 1) / max(total, 1)))
        for g in self.optimizer.param_groups:  # not self.groups: loading a checkpoint replaces the dicts
            g["lr"] = g["base_lr"] * factor

    def _validation_due(self, total: int) -> bool:
        every = self.settings.validate_every
        return self.validate is not None and every > 0 and (self.step % every == 0 or self.step == total)

    def run_validation(self) -> dict[str, float]:
        r"""Runs ``validate`` in eval mode, without gradients; every RNG (torch, numpy, Python)
        is restored afterwards, so validating never changes the training. Returns its metrics."""
        if self.validate is None:
            raise ValueError("this trainer has no validate function")
        rng = get_rng_state()
        self.module.eval()
        try:
            with torch.no_grad():
                metrics = {k: float(v) for k, v in self.validate(self.module).items()}
        finally:
            self.module.train()
            set_rng_state(rng)
        return metrics

    def close(self) -> None:
        r"""Waits for every rank and leaves the process group (if the trainer joined it)."""

        shutdown_distributed(self.ctx)


def train(
    config: Any,
    data: Any,
    settings: TrainSettings,
    *,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    meta: Mapping[str, Any] | None = None,
    validate: Callable[[nn.Module], Mapping[str, float]] | None = None,
) -> Trainer:
    r"""Builds an LNFMM for the data and trains it.

    The config is adapted to the data (:func:`adapt_config`: vocabulary size, caption length,
    image input), the seeds are set, the model is built, then trained.

    Arguments:
        config: An :class:`~flowkit.models.LNFMMConfig`.
        data: A :class:`~flowkit.data.CaptionData`.
        settings: A :class:`TrainSettings`.
        out: The run folder.
        resume: A run folder or checkpoint to continue from exactly.
        meta: Free JSON-able facts saved with the checkpoint (the CLI stores the data options).
        validate: A validation function for :class:`Trainer` (e.g.
            :func:`flowkit.evaluation.caption_validator`), run every ``settings.validate_every`` steps.

    Returns:
        The trainer (``trainer.module`` is the trained model), after :meth:`Trainer.close`.

    Example:
        >>> data = load_caption_data("shapes")
        >>> trainer = train(LNFMMConfig.small(), data, TrainSettings(steps=200, batch_size=32), out="runs/a")
    """

    from flowkit.models import LNFMM

    config = adapt_config(config, data)
    seed_everything(settings.seed)
    model = LNFMM(config)
    if resume is None:  # a resumed run's checkpoint already holds the (pre-trained) weights
        from flowkit.training.pretraining import initialize_image_encoder

        initialize_image_encoder(model, progress=settings.progress)
    from flowkit.training.safety import RunLock

    vocab = data.vocab.to_dict() if hasattr(data.vocab, "to_dict") else None
    trainer = Trainer(model, data.train, settings, out=out, config=config, vocab=vocab, meta=meta, validate=validate)
    lock = RunLock(out) if out is not None and trainer.ctx.is_main else nullcontext()
    try:
        with lock:  # one training process per run folder (re-entrant under flowkit train)
            if resume is not None:
                trainer.load(resume)
            trainer.fit()
    finally:
        trainer.close()
    return trainer
