r"""The training engine: it trains any ``nn.Module`` with a *step* that turns a batch into loss
terms; it knows no model.

The engine owns everything around the step: seeded data order, Adam per parameter group with
per-group gradient value clipping, extra optimizer updates a step asks for (a GAN's
discriminator), mixed precision on CUDA, DistributedDataParallel under ``torchrun``, logs,
validation every N steps, the learning-rate schedule, non-finite detection, atomic checkpoints
and exact resume. The step (see :class:`Step`) is a function or small object: LNFMM's is
:class:`flowkit.models.lnfmm.step.LNFMMStep`, a density flow's
:class:`flowkit.recipes.DensityStep`; :mod:`flowkit.recipes` joins a model, its step and this
engine.

Exact resume means: ``N`` steps, a checkpoint, and ``N`` more steps in a new process give the
same weights, bit for bit on CPU, as ``2N`` steps straight. It holds because everything a step
depends on is either in the checkpoint or a pure function of it:

* weights, Adam moments (and those of every extra update), the AMP grad scalers;
* the RNG states (torch CPU/CUDA, numpy, Python) of every rank;
* the data position (epoch, batch): epoch ``e``'s order is ``randperm`` keyed by
  ``(seed, e)``, so the batches already consumed are skipped by index, never loaded.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from flowkit.io import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, write_run_metadata
from flowkit.training.checkpoint import get_rng_state, set_rng_state
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
from flowkit.training.settings import NonFiniteLossError, TrainSettings, derive_seed, epoch_order, labeled_mask, seed_everything
from flowkit.training.step import (
    Step,
    _adam,
    _clip,
    _collate,
    _DeviceBatch,
    _fill_empty_groups,
    _grads_finite,
    _Indexed,
    _param_groups,
    _Update,
)

__all__ = [
    "NonFiniteLossError",
    "Step",
    "TrainSettings",
    "Trainer",
    "derive_seed",
    "epoch_order",
    "labeled_mask",
    "seed_everything",
]

# Settings that change what a step computes: a resume with other values cannot be exact.
RESUME_KEYS: tuple[str, ...] = ("batch_size", "seed", "labeled_fraction", "lr_schedule")


def _config_dict(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    return config.to_dict()


def _config_fields(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    # {"loss": {"rec_t": 1}} -> {"loss.rec_t": 1}: a config of groups compared field by field
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and key != "notes":
            out.update(_config_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _amp_dtype(settings: TrainSettings, device: torch.device) -> torch.dtype | None:
    r"""Mixed precision on CUDA only: bf16 (no scaler needed) where supported or asked for,
    else fp16 (with a GradScaler); None in float32."""
    if device.type == "cuda" and settings.amp != "off":
        if settings.amp == "bf16" or (settings.amp == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16
    if settings.amp in ("bf16", "fp16"):
        warnings.warn(f"amp={settings.amp!r} is for CUDA; training in float32 on {device}", stacklevel=3)
    return None


class Trainer:
    r"""Trains ``model`` with ``step`` on ``dataset``: the engine (it knows no model).

    Every optimizer step takes the step's extra updates first (e.g. a GAN's discriminator, see
    :class:`Step`), then calls ``step(model, batch)`` and updates the step's param groups with
    Adam, gradient values clipped per group. Under ``torchrun`` the model is wrapped in
    DistributedDataParallel; rank 0 logs and saves.

    Seed before building the model (``seed_everything(settings.seed)``, as
    :func:`flowkit.recipes.train` does), so that its initialization is reproducible.

    Arguments:
        model: The model (moved to the settings' device).
        dataset: Training items: dicts of tensors (and numbers), collated into batches.
        settings: A :class:`TrainSettings`.
        step: The :class:`Step`: ``step(model, batch) -> {name: scalar tensor}`` with a ``"loss"``.
        out: The run folder (``checkpoint.pt``, ``training.json``, ``config.json``,
            ``vocab.json``, ``log.csv``); None trains without writing anything.
        config: The model config (a dataclass with ``to_dict()`` or a dict), saved in
            checkpoints; by default ``model.config`` when the model has one.
        vocab: The vocabulary dict (``Vocabulary.to_dict()``), saved beside the weights.
        meta: Free JSON-able facts about the run (e.g. the data options), saved as ``meta``.
        validate: ``validate(model) -> {name: number}``, run on rank 0 every
            ``settings.validate_every`` steps in eval mode, without gradients and on a forked
            RNG (so it changes nothing of the training: resume stays exact); a learning
            curve a user can watch in ``validation.csv`` / TensorBoard.

    Example:
        >>> x = torch.randn(64, 2)
        >>> data = [{"x": x[i], "y": x[i].sum(0, keepdim=True)} for i in range(64)]
        >>> def mse(model, batch):
        ...     return {"loss": (model(batch["x"]) - batch["y"]).pow(2).mean()}
        >>> seed_everything(0)
        >>> trainer = Trainer(nn.Linear(2, 1), data, TrainSettings(steps=100, batch_size=16, progress=False, device="cpu"), step=mse)
        >>> first = trainer.fit(steps=1)["loss"]
        >>> trainer.fit()["loss"] < first, trainer.step
        (True, 100)
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        settings: TrainSettings,
        *,
        step: Step | None = None,
        out: str | os.PathLike[str] | None = None,
        config: Any = None,
        vocab: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        validate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    ) -> None:
        if step is None or not callable(step):
            raise TypeError(
                f"Trainer needs step=: a function step(model, batch) -> {{'loss': tensor, ...}}, got {step!r}; "
                f"e.g. flowkit.recipes.DensityStep() for a Flow, flowkit.models.lnfmm.LNFMMStep() for LNFMM, "
                f"or train through flowkit.recipes.train, which picks the model's step"
            )
        self.settings = settings
        self.step_fn = step
        self.validate = validate
        self.meta = dict(meta or {})
        self.ctx: DistributedContext = init_distributed(settings.device)
        self.device = self.ctx.device
        self.out = None if out is None else Path(out)
        config = config if config is not None else getattr(model, "config", None)
        self.config = _config_dict(config)
        # reads a checkpoint's config as this config's class does (e.g. an older layout); None: as saved
        self._read_config = getattr(type(config), "from_dict", None) if not isinstance(config, Mapping) else None
        self.vocab = None if vocab is None else dict(vocab)
        self.module = model.to(self.device)
        self.module.train()
        self._setup_data(dataset)
        self._setup_optimizers()
        self.net: nn.Module = self._wrap(self.module)
        self.step = 0
        self.epoch = 0
        self.batch = 0
        self.elapsed = 0.0
        self.resumed_from: int | None = None
        self.last_terms: dict[str, float] = {}
        # The training randomness (noise, dropout) gets its own stream per rank, independent
        # of the stream that initialized the model.
        seed_everything(derive_seed(settings.seed, self.ctx.rank, 0x7EA1))

    def _setup_data(self, dataset: Dataset) -> None:
        self.dataset = dataset
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("the training set is empty")
        per_rank = -(-n // self.ctx.world_size)
        if self.settings.batch_size > per_rank:
            warnings.warn(
                f"batch size {self.settings.batch_size} is larger than the {per_rank} training items per process: "
                f"every step uses those {per_rank}; pass a batch size <= {per_rank} (or more data)",
                stacklevel=3,
            )
        fraction = self.settings.labeled_fraction
        self.mask = labeled_mask(n, fraction, self.settings.seed) if fraction < 1.0 else None

    def _setup_optimizers(self) -> None:
        # Extra updates (a discriminator) get an Adam each; their parameters are kept out of
        # the main groups.
        self.amp_dtype = _amp_dtype(self.settings, self.device)
        use_scaler = self.amp_dtype == torch.float16
        extras = list(self.step_fn.extra_updates(self.module)) if hasattr(self.step_fn, "extra_updates") else []
        self.updates: list[_Update] = []
        for spec in extras:
            group = {"clip_value": None, **spec["group"]}
            group["params"] = [p for p in group["params"] if p.requires_grad]
            group.setdefault("name", spec["name"])
            self.updates.append(
                _Update(
                    spec["name"],
                    spec["loss"],
                    _adam([group]),
                    torch.amp.GradScaler("cuda", enabled=use_scaler),
                    dict(spec.get("state", {})),
                )
            )
        excluded = {id(p) for u in self.updates for p in u.params}
        self.optimizer = _adam(_param_groups(self.step_fn, self.module, excluded))
        self.groups = self.optimizer.param_groups
        for g in self.groups:
            g.setdefault("base_lr", g["lr"])  # the schedule scales this; saved with the optimizer
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.ctx.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(
            module,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.settings.find_unused_parameters,
        )

    def base_lr(self) -> float:
        r"""The largest current learning rate of the main param groups (the schedule's factor
        included), the ``lr`` column of the logs."""
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

    def _device_batch(self, batch: Mapping[str, Any]) -> _DeviceBatch:
        data = dict(batch)
        index = data.pop("index")
        if self.mask is not None:
            data["labeled"] = self.mask[index]
        return _DeviceBatch(data, self.device)

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
    def _diverged_as_nonfinite(self, step: int, batch: _DeviceBatch) -> Iterator[None]:
        # Weights turned non-finite by the previous update make a layer refuse its NaN input;
        # report that as the diverged run it is, with the hint, not as an input error.
        from flowkit.transforms.base import InputError

        try:
            yield
        except InputError as e:
            if "NaN or inf" not in str(e) or not batch.all_finite():
                raise
            bad = [
                f"weights:{g['name']}" for g in self.optimizer.param_groups if not all(bool(torch.isfinite(p).all()) for p in g["params"])
            ]
            raise NonFiniteLossError(step, self.last_terms, bad or [f"activations ({e})"]) from e

    def _optimize(
        self,
        loss: Tensor,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        step: int,
        terms: dict[str, float],
        reduce: Sequence[nn.Parameter] = (),
    ) -> None:
        scaler.scale(loss).backward()
        all_reduce_gradients(reduce, self.ctx.world_size)
        scaler.unscale_(optimizer)
        if not scaler.is_enabled():
            # With fp16 the scaler skips steps with inf/NaN gradients by design; otherwise a
            # non-finite gradient would silently turn the weights to NaN.
            bad = _grads_finite(optimizer.param_groups)
            if bad:
                raise NonFiniteLossError(step, terms, bad)
        _fill_empty_groups(optimizer.param_groups)
        _clip(optimizer.param_groups)
        scaler.step(optimizer)
        scaler.update()

    def _extra_update(self, update: _Update, batch: _DeviceBatch, step: int) -> Tensor:
        # On the unwrapped module (its parameters are not DDP's): gradients are all-reduced here.
        update.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = update.loss(self.module, batch)
        loss = out["loss"] if isinstance(out, Mapping) else out
        floats = self._check(step, {f"{update.name}_loss": loss})
        self._optimize(loss, update.optimizer, update.scaler, step, floats, reduce=update.params)
        return loss.detach()

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        r"""One optimizer step (the step's extra updates first) on a collated batch.

        Arguments:
            batch: A collated batch of dataset items with their dataset ``index``.

        Returns:
            The loss terms as floats (each extra update's ``<name>_loss`` last).
        """
        step = self.step + 1
        device_batch = self._device_batch(batch)
        extra = {f"{u.name}_loss": self._extra_update(u, device_batch, step) for u in self.updates}
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast(), self._diverged_as_nonfinite(step, device_batch):
            out = self.step_fn(self.net, device_batch)
        if not isinstance(out, Mapping) or "loss" not in out:
            raise TypeError(f"the step must return a dict with a scalar 'loss', got {type(out).__name__}")
        terms = {k: v for k, v in out.items() if isinstance(v, Tensor) and v.numel() == 1}
        floats = self._check(step, {**terms, **extra})
        self._optimize(out["loss"], self.optimizer, self.scaler, step, floats)
        for u in self.updates:
            # the main loss may write gradients into an extra update's parameters (a GAN's
            # generator loss into the discriminator): they are not kept
            u.optimizer.zero_grad(set_to_none=True)
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
            "data": {
                "epoch": self.epoch,
                "batch": self.batch,
                "batches_per_epoch": self.batches_per_epoch(),
                "dataset_size": len(self.dataset),
            },  # type: ignore[arg-type]
            "rng": rngs,
            "elapsed": self.elapsed,
            "meta": self.meta,
        }
        if self.vocab is not None:
            state["vocab"] = self.vocab
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        for u in self.updates:
            state.update({key: module.state_dict() for key, module in u.state.items()})
            state[f"optimizer_{u.name}"] = u.optimizer.state_dict()
            if u.scaler.is_enabled():
                state[f"scaler_{u.name}"] = u.scaler.state_dict()
        return state

    def save(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        r"""Saves a checkpoint atomically (rank 0 writes; collective under DDP).

        Arguments:
            path: The file; ``OUT/checkpoint.pt`` by default.
        """

        state = self.state_dict()
        target = Path(path) if path is not None else (None if self.out is None else self.out / CHECKPOINT_NAME)
        if target is not None and self.ctx.is_main:
            save_checkpoint(target, state)
        return target

    def _resume_problems(self, state: Mapping[str, Any]) -> list[str]:
        # What makes an exact resume from `state` impossible.
        problems = []
        if self.config is not None and state.get("config"):
            saved = dict(state["config"])
            if self._read_config is not None:
                try:
                    saved = self._read_config(saved).to_dict()
                except (TypeError, ValueError) as e:
                    problems.append(f"config: the checkpoint's config cannot be read: {e}")
            now, saved = _config_fields(self.config), _config_fields(saved)
            diff = sorted(k for k in set(now) | set(saved) if now.get(k) != saved.get(k) and k != "notes")
            problems += [f"config.{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in diff]
        saved = state.get("training", {})
        for k in RESUME_KEYS:
            if k in saved and saved[k] != getattr(self.settings, k):
                problems.append(f"{k}: checkpoint {saved[k]!r}, now {getattr(self.settings, k)!r}")
        data = state.get("data", {})
        if "dataset_size" in data and data["dataset_size"] != len(self.dataset):  # type: ignore[arg-type]
            problems.append(f"training set size: checkpoint {data['dataset_size']}, now {len(self.dataset)}")  # type: ignore[arg-type]
        if self.vocab is not None and state.get("vocab") is not None and dict(state["vocab"]) != self.vocab:
            problems.append("vocabulary: the data's vocabulary differs from the checkpoint's")
        return problems

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        r"""Restores a checkpoint (weights, optimizers, RNG states, data position) for an exact resume.

        Arguments:
            state: A checkpoint dict (:meth:`state_dict`, or one written by an older flowkit).

        Raises:
            ValueError: The config or a setting that changes the computation (batch size,
                seed, labeled fraction, schedule) differs from the checkpoint's, the data
                changed, or the checkpoint lacks an extra update's optimizer.
        """

        problems = self._resume_problems(state)
        if problems:
            raise ValueError("cannot resume exactly, the run differs from the checkpoint:\n  - " + "\n  - ".join(problems))
        for u in self.updates:
            if f"optimizer_{u.name}" not in state:
                raise ValueError(
                    f"the step has the extra update {u.name!r} (e.g. a GAN's discriminator) but the checkpoint has no "
                    f"'optimizer_{u.name}': it was trained without it; resume with the config it was trained with"
                )
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        for u in self.updates:
            u.optimizer.load_state_dict(state[f"optimizer_{u.name}"])
            if f"scaler_{u.name}" in state and u.scaler.is_enabled():
                u.scaler.load_state_dict(state[f"scaler_{u.name}"])
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self._restore_position(state)
        self.resumed_from = self.step

    def _restore_position(self, state: Mapping[str, Any]) -> None:
        # The data position and the RNG states of this rank.
        data = state.get("data", {})
        saved_world = int(state.get("training", {}).get("world_size", 1))
        if data and data.get("batches_per_epoch") == self.batches_per_epoch() and saved_world == self.ctx.world_size:
            self.epoch, self.batch = int(data["epoch"]), int(data["batch"])
        else:
            # Another process count or batch count: keep the step count, continue from the
            # position the steps imply in the new sharding (not bit-exact, warned about).
            self.epoch, self.batch = divmod(self.step, self.batches_per_epoch())
            if data:
                warnings.warn(
                    f"checkpoint written with world_size={saved_world}; resuming with {self.ctx.world_size} "
                    f"processes continues from step {self.step} but not bit-exactly",
                    stacklevel=3,
                )
        rngs = state.get("rng")
        if isinstance(rngs, Mapping):
            rngs = [rngs]
        if rngs and self.ctx.rank < len(rngs) and saved_world == self.ctx.world_size:
            set_rng_state(rngs[self.ctx.rank])
        else:
            seed_everything(derive_seed(self.settings.seed, self.ctx.rank, self.step, 0x7EA1))

    def load(self, path: str | os.PathLike[str]) -> None:
        r"""Loads ``path`` (a checkpoint or a run folder) and resumes from it.

        Arguments:
            path: A checkpoint file or a run folder holding ``checkpoint.pt``.
        """

        self.load_state_dict(load_checkpoint(path, map_location="cpu"))

    def _write_metadata(self) -> None:
        if self.out is None or not self.ctx.is_main:
            return
        training = {**self.settings.to_dict(), "world_size": self.ctx.world_size, "meta": self.meta}
        write_run_metadata(self.out, training, config=self.config, vocab=self.vocab)

    # -- the loop ---------------------------------------------------------------------------
    def run(self, resume: str | os.PathLike[str] | None = None) -> Trainer:
        r"""Trains in the run folder under its lock: resumes from ``resume`` when given, fits,
        then leaves the process group (:meth:`close`), also on errors.

        Arguments:
            resume: A run folder or checkpoint to continue from exactly.

        Returns:
            This trainer.
        """
        from flowkit.training.safety import RunLock

        lock = RunLock(self.out) if self.out is not None and self.ctx.is_main else nullcontext()
        try:
            with lock:  # one training process per run folder (re-entrant under flowkit train)
                if resume is not None:
                    self.load(resume)
                self.fit()
        finally:
            self.close()
        return self

    def fit(self, steps: int | None = None) -> dict[str, float]:
        r"""Trains up to ``steps`` (default: ``settings.steps``) total steps, then saves and cleans up.

        Arguments:
            steps: Stop after this many steps in total (the schedule still spans ``settings.steps``).

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
        show = self.settings.progress and self.ctx.is_main
        bar = tqdm(total=total, initial=min(self.step, total), desc="train", disable=not show, dynamic_ncols=True)
        batches = self._batches()
        ok = False
        try:
            self._loop(total, batches, bar, logger)
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

    def _loop(self, total: int, batches: Iterator[tuple[int, int, dict[str, Any]]], bar: Any, logger: RunLogger | None) -> None:
        fresh = self.step == 0
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
            raise ValueError("this trainer has no validate function: pass Trainer(..., validate=fn)")
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
