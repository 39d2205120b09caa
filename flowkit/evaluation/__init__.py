r"""Evaluation of LNFMM with the paper's protocol: Tables 1, 2, 3 (captioning) and 6
(text-to-image), exact judges on the embedded shapes data, a Markdown + JSON report with figures.

.. code-block:: python

    from flowkit.evaluation import evaluate_captioning, evaluate_text_to_image, load_run, write_report

    model, data, ckpt = load_run("runs/small")
    results = {
        "captioning": evaluate_captioning(model, data, num_samples=100),
        "text_to_image": evaluate_text_to_image(model, data),
    }
    write_report(results, "runs/small/report")

Everything runs offline; definitions of the metrics: ``docs/evaluation.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from flowkit.data.loading import DATA_DEFAULTS
from flowkit.data.loading import load_data_from_options as load_data
from flowkit.evaluation.captioning import (
    CAPTION_METRICS,
    CaptioningResult,
    CaptionSamples,
    ConsensusResult,
    DiversityResult,
    GroundTruthResult,
    OracleResult,
    caption_samples,
    consensus_table,
    diversity_table,
    encode_dataset_images,
    evaluate_captioning,
    find_split,
    generate_captions,
    ground_truth_table,
    oracle_table,
    sample_captioning,
    split_images,
    train_image_ids,
)
from flowkit.evaluation.plots import plot_captioning_result, plot_captions, plot_image_grid, plot_text_to_image_result
from flowkit.evaluation.probes import probe_image_codes, probe_text_codes
from flowkit.evaluation.report import format_captioning_table, format_text_to_image_table, run_facts, write_report
from flowkit.evaluation.results import JsonResult, to_jsonable
from flowkit.evaluation.text_to_image import (
    ImageDiversityResult,
    ImageJudgeResult,
    ImageSamples,
    IvomResult,
    TextToImageResult,
    encode_captions_text,
    evaluate_text_to_image,
    image_diversity_table,
    image_drawer,
    image_judge_table,
    ivom_table,
    sample_images_for_captions,
    sample_text_to_image,
)
from flowkit.io import CheckpointError, load_checkpoint
from flowkit.io import checkpoint_path as checkpoint_file

__all__ = [
    "CAPTION_METRICS",
    "CaptionSamples",
    "CaptioningResult",
    "ConsensusResult",
    "DATA_DEFAULTS",
    "DiversityResult",
    "GroundTruthResult",
    "ImageDiversityResult",
    "ImageJudgeResult",
    "ImageSamples",
    "IvomResult",
    "JsonResult",
    "OracleResult",
    "TextToImageResult",
    "caption_samples",
    "checkpoint_file",
    "consensus_table",
    "data_options",
    "diversity_table",
    "encode_captions_text",
    "image_drawer",
    "encode_dataset_images",
    "evaluate_captioning",
    "evaluate_text_to_image",
    "find_split",
    "format_captioning_table",
    "format_text_to_image_table",
    "generate_captions",
    "ground_truth_table",
    "image_diversity_table",
    "image_judge_table",
    "ivom_table",
    "load_data",
    "load_model",
    "load_run",
    "oracle_table",
    "plot_captioning_result",
    "plot_captions",
    "plot_image_grid",
    "plot_text_to_image_result",
    "probe_image_codes",
    "probe_text_codes",
    "run_facts",
    "sample_captioning",
    "sample_images_for_captions",
    "sample_text_to_image",
    "scenes_from_export",
    "split_images",
    "to_jsonable",
    "train_image_ids",
    "write_report",
]


def load_model(checkpoint: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    r"""Loads a trained LNFMM (eval mode) from a run folder or checkpoint file.

    Arguments:
        checkpoint: A run folder holding ``checkpoint.pt``, or the file itself.
        device: Where to put the model.

    Returns:
        ``(model, checkpoint dict)``; read with ``torch.load(..., weights_only=True)``.

    Raises:
        FileNotFoundError: No checkpoint there.
        flowkit.io.CheckpointError: The file is not a valid flowkit checkpoint.

    Example:
        >>> import tempfile
        >>> from flowkit.recipes import train_run
        >>> tiny = dict(image_encoder_init="random", freeze_image_trunk=False, shared_dim=8, fs_layers=1, fv_layers=1, ft_layers=1)
        >>> run = tempfile.mkdtemp()
        >>> train_run(run, overrides=tiny, data=dict(sizes={"train": 2, "val": 1, "test": 1}), settings=dict(steps=1, batch_size=4, progress=False)).step
        1
        >>> model, ckpt = load_model(run)
        >>> type(model).__name__, model.training, ckpt["step"]
        ('LNFMM', False, 1)
    """
    from flowkit.models import LNFMM, LNFMMConfig

    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    try:
        config = LNFMMConfig.from_dict(dict(ckpt["config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{checkpoint}' has no valid LNFMM config: {e}") from e
    model = LNFMM(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint '{checkpoint}': the weights do not fit its config: {str(e).splitlines()[0]}") from e
    return model.to(device).eval(), ckpt


def data_options(ckpt: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    r"""The data options of a run: the checkpoint's ``meta["data"]`` (written by ``flowkit
    train`` and by the examples), the defaults where missing, then ``overrides`` that are not None.

    Arguments:
        ckpt: The checkpoint dict.
        overrides: Options to replace (keys of :data:`DATA_DEFAULTS`).
    """
    unknown = sorted(set(overrides) - set(DATA_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown data options {unknown}; known: {sorted(DATA_DEFAULTS)}")
    meta = ckpt.get("meta") or {}
    saved = meta.get("data") if isinstance(meta, Mapping) else None
    opts = dict(DATA_DEFAULTS)
    if isinstance(saved, Mapping):
        opts.update({k: v for k, v in saved.items() if k in DATA_DEFAULTS})
    opts.update({k: v for k, v in overrides.items() if v is not None})
    if opts["data"] == "coco" and opts["coco_root"] is None:
        raise ValueError("the run's data is COCO but no COCO root is known: pass --coco-root PATH")
    return opts


def load_run(
    checkpoint: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    progress: bool = False,
    **data_overrides: Any,
) -> tuple[Any, Any, dict[str, Any]]:
    r"""Loads a run's model and the data it was trained on.

    The data options come from the checkpoint (see :func:`data_options`); ``data_overrides``
    (e.g. ``coco_root=``) replace them. The data's vocabulary must equal the checkpoint's.

    Returns:
        ``(model, data, checkpoint dict)``.

    Example:
        >>> import tempfile
        >>> from flowkit.recipes import train_run
        >>> tiny = dict(image_encoder_init="random", freeze_image_trunk=False, shared_dim=8, fs_layers=1, fv_layers=1, ft_layers=1)
        >>> run = tempfile.mkdtemp()
        >>> train_run(run, overrides=tiny, data=dict(sizes={"train": 2, "val": 1, "test": 1}), settings=dict(steps=1, batch_size=4, progress=False)).step
        1
        >>> model, data, ckpt = load_run(run)
        >>> ckpt["_data_options"]["sizes"], len(data.vocab) == model.config.vocab_size
        ({'train': 2, 'val': 1, 'test': 1}, True)
    """
    from flowkit.data import Vocabulary

    model, ckpt = load_model(checkpoint, device)
    opts = data_options(ckpt, **data_overrides)
    data = load_data(opts, progress=progress)
    if ckpt.get("vocab") is not None and Vocabulary.from_dict(dict(ckpt["vocab"])) != data.vocab:
        raise ValueError(
            f"the vocabulary of the data ({opts['data']}, {len(data.vocab)} tokens) differs from the checkpoint's "
            f"({len(ckpt['vocab']['itos'])} tokens): pass the data the model was trained on"
        )
    if opts["data"] == "coco" and data.scenes is None:
        data.scenes = scenes_from_export(opts["coco_root"])
    ckpt["_data_options"] = opts
    return model, data, ckpt


def scenes_from_export(root: str | os.PathLike[str]) -> dict[int, Any] | None:
    r"""The exact scenes of a COCO-format folder written by :func:`flowkit.data.shapes.export_coco`.

    The export's settings (sizes, seed, captions per image) are read from its marker file and
    the scenes regenerated, so the ground-truth judges work on data loaded through the COCO
    path. Returns None for other folders (e.g. real COCO).

    Arguments:
        root: The COCO-format folder.
    """
    from flowkit.data.shapes import ShapesCaptions

    marker = Path(root) / ".flowkit_export.json"
    if not marker.is_file():
        return None
    try:
        s = json.loads(marker.read_text())
        scenes: dict[int, Any] = {}
        for split in s["splits"]:
            ds = ShapesCaptions(split, int(s["sizes"][split]), int(s["seed"]), int(s["captions_per_image"]), float(s["p_two"]))
            scenes.update(zip(ds.image_ids, ds.scenes))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError):
        return None
    return scenes
