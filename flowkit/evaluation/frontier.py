r"""The accuracy-diversity frontier: how true are sampled captions at each level of coverage?

A captioner can trade accuracy for diversity with its sampling temperature: at temperature 0
every sample is the mode (accurate, one caption), at 1 samples spread (diverse, less often
true). The paper's claim, that a latent flow prior gives diverse *and* accurate captions, is a
claim about this curve. On the shapes data both axes are exact: ground-truth accuracy (the
fraction of samples true of their image) and coverage (the fraction of an image's true
caption meanings reached), :mod:`flowkit.data.judges`.

* :func:`caption_frontier` samples one model at several settings and returns a point each.
* :func:`image_frontier` does the same for text-to-image: the attribute classifier's accuracy
  against the spread of the attributes a caption leaves free (``coverage`` holds the spread).
* :func:`plot_frontier` draws the curves of several models (mean and spread over seeds).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from flowkit.data.grammar import Scene
from flowkit.data.judges import caption_accuracy, caption_coverage

__all__ = [
    "FRONTIER_TEMPERATURES",
    "FrontierPoint",
    "caption_frontier",
    "image_frontier",
    "lnfmm_settings",
    "captioner_settings",
    "plot_frontier",
]

#: The prior (or word) temperatures of the sweep.
FRONTIER_TEMPERATURES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class FrontierPoint:
    r"""One sampling setting of one model: its label, ground-truth accuracy and coverage."""

    label: str
    accuracy: float
    coverage: float
    distinct: float  # mean distinct captions per image

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def lnfmm_settings(temperatures: Sequence[float] = FRONTIER_TEMPERATURES, **decoding: Any) -> list[dict[str, Any]]:
    r"""Sampling settings of a latent-variable model: the prior's temperature, each latent
    decoded as ``decoding`` says (keyword arguments of :func:`~flowkit.evaluation.generate_captions`,
    e.g. a recipe's ``decoding``; default greedy).

    Example:
        >>> lnfmm_settings([0, 1], method="beam", beam_width=5)[1]
        {'label': 'T=1', 'temperature': 1.0, 'method': 'beam', 'beam_width': 5}
    """
    how = {"method": "greedy", **decoding}
    return [{"label": f"T={t:g}", "temperature": float(t), **how} for t in temperatures]


def captioner_settings(temperatures: Sequence[float] = FRONTIER_TEMPERATURES, beam_widths: Sequence[int] = (2, 5)) -> list[dict[str, Any]]:
    r"""Sampling settings of a captioner without a latent: word temperatures (0 is greedy) and beams."""
    out = [{"label": f"word T={t:g}", "method": "sample" if t > 0 else "greedy", "word_temperature": float(t)} for t in temperatures]
    return out + [{"label": f"beam {w}", "method": "beam", "beam_width": int(w)} for w in beam_widths]


def caption_frontier(
    model: nn.Module,
    data: Any,
    settings: Sequence[Mapping[str, Any]],
    scenes: Mapping[int, Scene] | None = None,
    split: str = "test",
    num_samples: int = 100,
    limit: int | None = 100,
    seed: int = 0,
    progress: bool = False,
) -> list[FrontierPoint]:
    r"""Ground-truth accuracy and coverage of a model's samples at each setting.

    Arguments:
        model: A trained :class:`~flowkit.models.LNFMM` (any config, with or without ``f_t``).
        data: A :class:`~flowkit.data.CaptionData`.
        settings: Keyword dicts of :func:`~flowkit.evaluation.generate_captions` with a
            ``label`` (:func:`lnfmm_settings`, :func:`captioner_settings`).
        scenes: ``{image_id: Scene}`` (default ``data.scenes``).
        split: The split (``"test"`` for reported numbers; tune on ``"val"``).
        num_samples: Captions per image.
        limit: Images (the first ``limit`` of the split).
        seed: The sampling seed.
        progress: Show progress bars.

    Returns:
        One :class:`FrontierPoint` per setting, in order.
    """
    from flowkit.evaluation.captioning import generate_captions

    scenes = scenes if scenes is not None else getattr(data, "scenes", None)
    if scenes is None:
        raise ValueError("caption_frontier needs the scenes of the images (the shapes data, or scenes_from_export(root))")
    points = []
    for setting in settings:
        options = {k: v for k, v in setting.items() if k != "label"}
        caps = generate_captions(model, getattr(data, split), data.vocab, num_samples, limit=limit, seed=seed, progress=progress, **options)
        distinct = float(np.mean([len(set(c)) for c in caps.values()]))
        points.append(FrontierPoint(str(setting["label"]), caption_accuracy(caps, scenes), caption_coverage(caps, scenes), distinct))
    return points


def image_frontier(
    model: nn.Module,
    captions: Sequence[str],
    vocab: Any,
    temperatures: Sequence[float] = FRONTIER_TEMPERATURES,
    num_samples: int = 16,
    judge: Any = None,
    seed: int = 0,
    progress: bool = False,
    render: Callable[[Tensor], Tensor] | None = None,
) -> list[FrontierPoint]:
    r"""Text-to-image: judged accuracy and free-attribute spread at each prior temperature.

    For each temperature, ``num_samples`` images per caption are drawn
    (:func:`~flowkit.evaluation.sample_images_for_captions`) and read by the attribute
    classifier: ``accuracy`` is the fraction of images true of their caption, ``coverage``
    the mean over captions of :func:`~flowkit.data.judges.free_attribute_spread` (normalized
    entropy, 0..1, of what the caption leaves free, over its true images; captions without a
    true image are left out, NaN when none has one), ``distinct`` the number of captions with
    a true image.

    Arguments:
        model: A trained :class:`~flowkit.models.LNFMM` that generates pixels, or features
            that ``render`` draws.
        captions: Captions of the shapes grammar (e.g. the first caption of each test image).
        vocab: The model's vocabulary.
        temperatures: Prior temperatures.
        num_samples: Images per caption.
        judge: The attribute classifier (default :func:`~flowkit.data.judges.get_attribute_classifier`).
        seed: The sampling seed.
        progress: Show progress bars.
        render: Draws decoded features as images (:func:`flowkit.data.renderer.render_readings`).
    """
    from flowkit.data.judges import get_attribute_classifier
    from flowkit.evaluation.text_to_image import judge_generated_images, sample_images_for_captions

    judge = judge if judge is not None else get_attribute_classifier(progress=progress)
    points = []
    for t in temperatures:
        images = sample_images_for_captions(model, captions, vocab, num_samples, t, seed=seed, progress=progress, render=render)
        judged = judge_generated_images(images, captions, judge)
        points.append(
            FrontierPoint(f"T={t:g}", judged["accuracy"], judged["free_attribute_spread"], float(judged["captions_with_a_true_image"]))
        )
    return points


def plot_frontier(
    curves: Mapping[str, Sequence[Sequence[FrontierPoint]]],
    path: str | os.PathLike[str],
    title: str = "Accuracy against coverage (shapes data, exact judges)",
    reference_coverage: float | None = None,
    xlabel: str = "coverage of the true caption meanings",
    ylabel: str = "ground-truth accuracy of samples",
) -> Path:
    r"""Draws ground-truth accuracy against coverage, one curve per model, as a PNG.

    Each model has one list of points per seed (the same settings in the same order); the
    curve joins the means, and bars show the spread (min to max over seeds) on both axes.

    Arguments:
        curves: ``{model name: [points of seed 0, points of seed 1, ...]}``.
        path: The PNG file.
        title: The figure title.
        reference_coverage: Optional coverage of the dataset's own references (a dotted line).
        xlabel, ylabel: The axes' labels (text-to-image: the free-attribute spread and the
            judged accuracy).

    Example:
        >>> p = FrontierPoint("T=1", 0.6, 0.12, 30.0)
        >>> plot_frontier({"LNFMM": [[p]]}, "frontier.png")
        PosixPath('frontier.png')
    """
    from flowkit.evaluation.plots import _plt, save_figure

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, runs in curves.items():
        if not runs or any(len(r) != len(runs[0]) for r in runs):
            raise ValueError(f"{name}: every seed needs the same settings")
        acc = np.array([[p.accuracy for p in r] for r in runs])
        cov = np.array([[p.coverage for p in r] for r in runs])
        x, y = cov.mean(0), acc.mean(0)
        line = ax.plot(x, y, marker="o", label=name)[0]
        ax.errorbar(
            x,
            y,
            xerr=[x - cov.min(0), cov.max(0) - x],
            yerr=[y - acc.min(0), acc.max(0) - y],
            fmt="none",
            ecolor=line.get_color(),
            alpha=0.5,
        )
        for k, p in enumerate(runs[0]):
            ax.annotate(p.label, (x[k], y[k]), textcoords="offset points", xytext=(4, 3), fontsize=6, color=line.get_color())
    if reference_coverage is not None:
        ax.axvline(reference_coverage, ls=":", color="0.5", label="5 references' coverage")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path, dpi=110)
