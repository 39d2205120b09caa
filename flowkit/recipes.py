r"""Recipes: a model, its training step and the engine, joined.

The engine (:mod:`flowkit.training`) knows no model; a model package defines its step without
importing the engine (:class:`flowkit.models.lnfmm.step.LNFMMStep`). This module sits above
both and wires them:

* :func:`train`: build an LNFMM for the data and train it (``flowkit.training.train`` is this
  function under its old name);
* :func:`train_run`: the same from the options of ``flowkit train``, in a run folder, with the
  resume rules of the command (options left out come from the checkpoint);
* :func:`train_flow` with :class:`DensityStep`: maximum likelihood for a plain
  :class:`~flowkit.Flow` (or any module whose ``forward(x, context)`` is a log-density).

Example:
    >>> import tempfile
    >>> import torch
    >>> import flowkit
    >>> from flowkit.training import TrainSettings, seed_everything
    >>> x = torch.randn(256, 2) * torch.tensor([2.0, 0.5])
    >>> seed_everything(0); flow = flowkit.realnvp(2, 0, num_layers=2, hidden_features=16)
    >>> settings = TrainSettings(steps=60, batch_size=64, progress=False, device="cpu")
    >>> trainer = train_flow(flow, [{"x": v} for v in x], settings, out=tempfile.mkdtemp(), lr=1e-2)
    >>> rows = flowkit.training.read_csv_log(trainer.out)
    >>> rows[-1]["loss"] < rows[0]["loss"]
    True
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.utils.data import Dataset

from flowkit.data.loading import DATA_DEFAULTS, load_data_from_options
from flowkit.io import CHECKPOINT_NAME, checkpoint_path, load_checkpoint
from flowkit.models.lnfmm import LNFMM, LNFMMConfig, LNFMMStep, adapt_config
from flowkit.models.lnfmm.pretraining import initialize_image_encoder
from flowkit.training.trainer import Trainer, TrainSettings, seed_everything

__all__ = ["PRESET_BATCH_SIZES", "DensityStep", "train", "train_flow", "train_run"]

#: The batch size of each LNFMM preset when none is given (``flowkit train``).
PRESET_BATCH_SIZES: dict[str, int] = {"small": 32, "paper": 128}


def train(
    config: LNFMMConfig,
    data: Any,
    settings: TrainSettings,
    *,
    out: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    validate: Callable[[nn.Module], Mapping[str, float]] | None = None,
) -> Trainer:
    r"""Builds an LNFMM for the data and trains it with :class:`~flowkit.models.lnfmm.LNFMMStep`.

    The config is adapted to the data (:func:`~flowkit.models.lnfmm.adapt_config`: vocabulary
    size, caption length, image input), the seeds are set, the model is built and its image
    encoder initialized (new runs only: a resumed run's checkpoint holds the weights), then
    trained in the run folder under its lock.

    Arguments:
        config: An :class:`~flowkit.models.LNFMMConfig`.
        data: A :class:`~flowkit.data.CaptionData`.
        settings: A :class:`~flowkit.training.TrainSettings`.
        out: The run folder.
        resume: A run folder or checkpoint to continue from exactly.
        meta: Free JSON-able facts saved with the checkpoint (the CLI stores the data options).
        validate: A validation function for the :class:`~flowkit.training.Trainer` (e.g.
            :func:`flowkit.evaluation.diagnostics.caption_validator`), run every
            ``settings.validate_every`` steps.

    Returns:
        The trainer (``trainer.module`` is the trained model), after it closed.

    Example:
        >>> from flowkit.data import load_caption_data
        >>> data = load_caption_data("shapes", sizes={"train": 2, "val": 1, "test": 1}, max_len=8)
        >>> cfg = LNFMMConfig.small(image_encoder_init="random", freeze_image_trunk=False, shared_dim=8, fs_layers=1, fv_layers=1, ft_layers=1)
        >>> trainer = train(cfg, data, TrainSettings(steps=2, batch_size=4, progress=False, device="cpu"))
        >>> trainer.step, {"loss", "kl_t", "rec_t"} <= set(trainer.last_terms)
        (2, True)
    """
    config = adapt_config(config, data)
    seed_everything(settings.seed)
    model = LNFMM(config)
    if resume is None:
        initialize_image_encoder(model, progress=settings.progress)
    vocab = data.vocab.to_dict()
    trainer = Trainer(model, data.train, settings, step=LNFMMStep(), out=out, config=config, vocab=vocab, meta=meta, validate=validate)
    return trainer.run(resume)


class DensityStep:
    r"""Maximum likelihood: the loss is the mean negative log-density of a batch.

    For the engine's :class:`~flowkit.training.Step` protocol: the model is called as
    ``model(x, context)`` (a :class:`~flowkit.Flow`'s ``forward`` is its ``log_prob``), so that
    DistributedDataParallel synchronizes the gradients.

    Arguments:
        lr: Adam's learning rate of the model's parameters.
        clip_value: Gradient value clip (None: no clip).
        x: The batch entry holding the data, ``(B, D)``.
        context: The batch entry holding the context, ``(B, C)``; a batch without it is
            unconditional.

    Example:
        >>> import torch
        >>> import flowkit
        >>> flow = flowkit.glow(2, 0, num_layers=2, hidden_features=8)
        >>> DensityStep()(flow, {"x": torch.randn(4, 2)})["loss"].shape
        torch.Size([])
    """

    def __init__(self, lr: float = 1e-3, clip_value: float | None = None, x: str = "x", context: str = "context") -> None:
        self.lr, self.clip_value, self.x, self.context = lr, clip_value, x, context

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        r"""``{"loss": -mean log p(x | context)}``.

        Arguments:
            model: The density model (or its DistributedDataParallel wrapper).
            batch: The collated batch.
        """
        context = batch[self.context] if self.context in batch else None
        return {"loss": -model(batch[self.x], context).mean()}

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        r"""One group: every parameter at ``lr`` with ``clip_value``.

        Arguments:
            model: The density model.
        """
        return [{"name": "flow", "params": list(model.parameters()), "lr": self.lr, "clip_value": self.clip_value}]


def train_flow(
    flow: nn.Module,
    dataset: Dataset,
    settings: TrainSettings,
    *,
    out: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    lr: float = 1e-3,
    clip_value: float | None = None,
    validate: Callable[[nn.Module], Mapping[str, float]] | None = None,
) -> Trainer:
    r"""Trains a density model by maximum likelihood with the engine (:class:`DensityStep`).

    Seed before building the flow (``seed_everything(settings.seed)``) so that its
    initialization is reproducible; the data order and training randomness follow
    ``settings.seed``.

    Arguments:
        flow: A :class:`~flowkit.Flow` (or any module whose ``forward(x, context)`` is a log-density).
        dataset: Items ``{"x": (D,)}`` or ``{"x": (D,), "context": (C,)}``.
        settings: A :class:`~flowkit.training.TrainSettings`.
        out: The run folder (None: nothing is written).
        resume: A run folder or checkpoint to continue from exactly.
        lr: Adam's learning rate.
        clip_value: Gradient value clip (None: no clip).
        validate: ``validate(flow) -> {name: number}``, run every ``settings.validate_every`` steps.

    Returns:
        The trainer (``trainer.module`` is the trained flow), after it closed.

    Example:
        >>> import torch
        >>> import flowkit
        >>> from flowkit.training import TrainSettings, seed_everything
        >>> seed_everything(0); flow = flowkit.glow(2, 0, num_layers=2, hidden_features=8)
        >>> data = [{"x": v} for v in torch.randn(64, 2)]
        >>> train_flow(flow, data, TrainSettings(steps=3, batch_size=16, progress=False, device="cpu")).step
        3
    """
    trainer = Trainer(flow, dataset, settings, step=DensityStep(lr, clip_value), out=out, validate=validate)
    return trainer.run(resume)


# -- flowkit train: options, checkpoint, defaults ------------------------------------------


def _data_options(given: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    # As given, else the checkpoint's, else the default; on resume a given value must match.
    saved = dict((stored.get("meta") or {}).get("data", {})) if stored else {}
    opts, mismatches = {}, []
    for key, default in DATA_DEFAULTS.items():
        kept = saved.get(key, default)
        if stored and given.get(key) is not None and given[key] != kept:
            mismatches.append(f"--{key.replace('_', '-')}: checkpoint {kept!r}, now {given[key]!r}")
        opts[key] = kept if stored or given.get(key) is None else given[key]
    if mismatches:
        raise ValueError("--resume: the data differs from the checkpoint's:\n  - " + "\n  - ".join(mismatches))
    if opts["data"] == "coco" and opts["coco_root"] is None:
        raise ValueError("--data coco needs --coco-root PATH (a COCO-format folder)")
    if opts["data"] == "shapes" and opts["coco_root"] is not None:
        raise ValueError("--coco-root is for --data coco")
    return opts


def _config(preset: str | None, overrides: Mapping[str, Any], stored: Mapping[str, Any]) -> tuple[str, LNFMMConfig]:
    # The checkpoint's config when resuming with no model option, else the preset's with the
    # overrides (the trainer names every field that differs from the checkpoint's).
    saved = (stored.get("meta") or {}).get("preset") if stored else None
    name = preset or saved or "small"
    if stored and preset is None and not overrides:
        return name, LNFMMConfig.from_dict(stored["config"])
    return name, getattr(LNFMMConfig, name)(**overrides)


def _settings(given: Mapping[str, Any], stored: Mapping[str, Any], preset: str) -> TrainSettings:
    # Each setting as given, else the checkpoint's (on resume), else the default.
    saved = stored.get("training", {}) if stored else {}
    defaults = {**TrainSettings().to_dict(), "batch_size": PRESET_BATCH_SIZES[preset]}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown training settings {unknown}; known: {sorted(defaults)}")
    return TrainSettings(**{k: given[k] if given.get(k) is not None else saved.get(k, d) for k, d in defaults.items()})


def _check_out(out: Path, resume: Path | None, overwrite: bool) -> None:
    # Runs under the run-folder lock, so no other process can write a checkpoint meanwhile.
    existing = out / CHECKPOINT_NAME
    if not existing.exists() or overwrite:
        return
    if resume is None:
        raise ValueError(f"'{out}' already holds a checkpoint: pass --resume {out} to continue it, or --overwrite to start over")
    if existing.resolve() != resume.resolve():
        raise ValueError(
            f"--out '{out}' already holds another run's checkpoint, which continuing --resume {resume.parent} there "
            f"would replace: pass another --out, or --overwrite to replace it"
        )


def train_run(
    out: str | os.PathLike[str] | None = None,
    *,
    resume: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Trainer:
    r"""Trains LNFMM in a run folder from the options of ``flowkit train``.

    Every option left out (None) is taken from the checkpoint when resuming, else from its
    default (:class:`~flowkit.training.TrainSettings`, :data:`PRESET_BATCH_SIZES`,
    :data:`~flowkit.data.loading.DATA_DEFAULTS`, the ``small`` preset). On resume, data
    options that are given must match the checkpoint's, and the trainer names every config
    field or setting that would make the resume inexact. The run folder is locked from the
    first check of its content to the end of training; continuing into another folder copies
    the run's ``log.csv`` there first.

    Arguments:
        out: The run folder (default: the ``resume`` run's folder).
        resume: A run folder or checkpoint to continue from exactly.
        overwrite: Start a new run in an ``out`` that already holds a checkpoint.
        preset: ``"small"`` or ``"paper"`` (:class:`~flowkit.models.LNFMMConfig` presets).
        overrides: Config fields replacing the preset's.
        data: Data options (keys of :data:`~flowkit.data.loading.DATA_DEFAULTS`).
        settings: :class:`~flowkit.training.TrainSettings` fields.

    Returns:
        The trainer, after it closed.

    Example:
        >>> import tempfile
        >>> tiny = dict(image_encoder_init="random", freeze_image_trunk=False, shared_dim=8, fs_layers=1, fv_layers=1, ft_layers=1)
        >>> opts = dict(sizes={"train": 2, "val": 1, "test": 1}, max_len=8)
        >>> run = Path(tempfile.mkdtemp()) / "run"
        >>> train_run(run, overrides=tiny, data=opts, settings=dict(steps=2, batch_size=4, progress=False)).step
        2
        >>> train_run(resume=run, settings=dict(steps=3, progress=False)).step
        3
    """
    from flowkit.training.distributed import is_main_process
    from flowkit.training.safety import RunLock

    if out is None and resume is None:
        raise ValueError("--out DIR is required (or --resume DIR to continue a run)")
    try:
        resume_path = checkpoint_path(resume) if resume is not None else None
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--resume {resume}: {e}") from None
    out = Path(out) if out is not None else resume_path.parent  # type: ignore[union-attr]
    with RunLock(out) if is_main_process() else nullcontext():
        _check_out(out, resume_path, overwrite)
        stored: dict[str, Any] = load_checkpoint(resume_path) if resume_path is not None else {}
        data_opts = _data_options(data or {}, stored)
        preset, config = _config(preset, overrides or {}, stored)
        run_settings = _settings(settings or {}, stored, preset)
        captions = load_data_from_options(data_opts)
        if resume_path is not None and out.resolve() != resume_path.parent.resolve():
            # Continuing into another folder: carry the log over so it stays one history.
            out.mkdir(parents=True, exist_ok=True)
            old_log = resume_path.parent / "log.csv"
            if old_log.is_file() and not (out / "log.csv").exists():
                shutil.copyfile(old_log, out / "log.csv")
        return train(config, captions, run_settings, out=out, resume=resume_path, meta={"data": data_opts, "preset": preset})
