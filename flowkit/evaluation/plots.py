r"""Figures of the evaluation report (matplotlib, Agg backend, PNG files).

* :func:`plot_captions`: images beside some of their sampled captions.
* :func:`plot_image_grid`: one row of generated images per caption.
* :func:`plot_captioning_result` and :func:`plot_text_to_image_result`: the report's figures,
  drawn from the evaluation's results (their samples).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from flowkit.evaluation.captioning import CaptioningResult
    from flowkit.evaluation.text_to_image import TextToImageResult

__all__ = ["plot_captions", "plot_image_grid", "plot_captioning_result", "plot_text_to_image_result"]


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike[str], dpi: int = 100) -> Path:  # type: ignore[no-untyped-def]
    r"""Lays out a matplotlib figure, saves it as a PNG (creating the folder) and closes it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def _hwc(image: Tensor):  # type: ignore[no-untyped-def]
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def plot_captions(
    images: Tensor,
    captions: Sequence[Sequence[str]],
    path: str | os.PathLike[str],
    references: Sequence[Sequence[str]] | None = None,
    max_captions: int = 5,
    title: str | None = None,
) -> Path:
    r"""Saves a figure of images, each beside its sampled captions, as a PNG.

    Arguments:
        images: ``(N, 3, H, W)`` images in [0, 1].
        captions: For each image, its captions (e.g. the best 5 after re-ranking).
        path: The PNG file.
        references: Optional reference captions (the first is shown in gray).
        max_captions: Captions shown per image.
        title: A figure title.

    Example:
        >>> import tempfile, torch
        >>> png = plot_captions(torch.rand(2, 3, 64, 64), [["a red circle"], ["a blue star"]], tempfile.mkdtemp() + "/captions.png")
        >>> png.name, png.read_bytes()[:4] == b"\x89PNG"
        ('captions.png', True)
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} caption lists")
    plt = _plt()
    n = max(len(images), 1)
    fig, axes = plt.subplots(n, 2, figsize=(8.0, 1.9 * n), gridspec_kw={"width_ratios": [1, 3]}, squeeze=False)
    for row in range(n):
        ax_img, ax_txt = axes[row]
        ax_img.axis("off")
        ax_txt.axis("off")
        if row >= len(images):
            continue
        ax_img.imshow(_hwc(images[row]), interpolation="nearest")
        lines = [
            f"{k + 1}. " + "\n    ".join(textwrap.wrap(c or "(empty caption)", 60))
            for k, c in enumerate(list(captions[row])[:max_captions])
        ]
        ax_txt.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace", transform=ax_txt.transAxes)
        if references is not None and len(references[row]):
            ax_txt.text(
                0.0, 0.0, "reference: " + references[row][0], va="bottom", ha="left", fontsize=7, color="0.45", transform=ax_txt.transAxes
            )
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_image_grid(
    captions: Sequence[str],
    images: Tensor,
    path: str | os.PathLike[str],
    max_samples: int = 8,
    title: str | None = None,
) -> Path:
    r"""Saves a grid of generated images, one row per caption, as a PNG.

    Arguments:
        captions: The captions (one per row).
        images: ``(N, S, 3, H, W)`` images in [0, 1].
        path: The PNG file.
        max_samples: Images shown per caption.
        title: A figure title.

    Example:
        >>> import tempfile, torch
        >>> png = plot_image_grid(["a red circle"], torch.rand(1, 4, 3, 64, 64), tempfile.mkdtemp() + "/grid.png")
        >>> png.name, png.read_bytes()[:4] == b"\x89PNG"
        ('grid.png', True)
    """
    if images.dim() != 5 or len(images) != len(captions):
        raise ValueError(f"expected images (N={len(captions)}, S, 3, H, W), got {tuple(images.shape)}")
    plt = _plt()
    n, s = max(len(captions), 1), max(1, min(max_samples, images.shape[1]))
    fig, axes = plt.subplots(n, s, figsize=(1.25 * s, 1.45 * n), squeeze=False)
    for r in range(n):
        for c in range(s):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r < len(captions):
                ax.imshow(_hwc(images[r, c]), interpolation="nearest")
        if r < len(captions):
            axes[r][0].set_title("\n".join(textwrap.wrap(captions[r], 12 * s)), fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_captioning_result(result: CaptioningResult, path: str | os.PathLike[str]) -> Path | None:
    r"""Saves the report's caption figure: the first ``result.figure_images`` images beside their
    best captions after consensus re-ranking (and their first reference).

    Arguments:
        result: An :func:`~flowkit.evaluation.evaluate_captioning` result; its images come from
            ``result.samples.pixels``.
        path: The PNG file.

    Returns:
        The path, or None where there is nothing to draw (no figure images, or feature data
        without ``pixels``).

    .. code-block:: python

        plot_captioning_result(evaluate_captioning(model, data, limit=6), "captions.png")
    """
    ids, pixels = result.figure_ids, result.samples.pixels
    if not ids or pixels is None:
        return None
    return plot_captions(
        torch.stack([pixels(i) for i in ids]),
        [result.diversity.ranked[i] for i in ids],
        path,
        references=[result.samples.references[i] for i in ids],
        title=f"best {result.diversity.best_n} of {result.samples.num_samples} sampled captions after consensus re-ranking",
    )


def plot_text_to_image_result(result: TextToImageResult, path: str | os.PathLike[str]) -> Path | None:
    r"""Saves the report's grid figure: ``result.figure_samples`` generated images for each of
    the first ``result.figure_captions`` captions.

    Arguments:
        result: An :func:`~flowkit.evaluation.evaluate_text_to_image` result.
        path: The PNG file.

    Returns:
        The path, or None where ``figure_captions`` is 0.

    .. code-block:: python

        plot_text_to_image_result(evaluate_text_to_image(model, data), "text_to_image.png")
    """
    n, s = result.figure_captions, result.figure_samples
    if n <= 0:
        return None
    return plot_image_grid(result.samples.captions[:n], result.samples.images[:n, :s], path, title="text-to-image samples")
