r"""Exact judges for the shapes data: caption accuracy and coverage, and judges of images.

Captions are judged exactly against the true :class:`~flowkit.data.grammar.Scene`:

* :func:`caption_accuracy`: the fraction of sampled captions that are true of their image.
* :func:`caption_coverage`: for each image, the fraction of its true caption *meanings* that
  the samples reach, averaged over images. A meaning is the canonical form of the parsed
  caption (:func:`~flowkit.data.grammar.canonical`): phrasing variants ("a red circle",
  "there is a red circle", "an image of a red circle") and mirrored relations ("A left of B" /
  "B right of A") count once. ``mode="exact"`` counts distinct caption strings instead.

Generated images are judged through a :class:`SceneReader`, by default the attribute
classifier of :mod:`flowkit.data.classifier` (its names are re-exported here):
:func:`image_caption_accuracy` checks captions against the read scenes and
:func:`free_attribute_spread` measures how varied the attributes a caption leaves free are.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from torch import Tensor

# Re-exported from flowkit.data.classifier, where they are defined, so that
# ``from flowkit.data.judges import ...`` keeps working. The judges below look
# get_attribute_classifier up in this module (tests patch it here).
from flowkit.data.classifier import (
    NUM_CLASSES,
    AttributeClassifier,
    ClassifierConfig,
    cache_dir,
    class_probabilities,
    evaluate_classifier,
    get_attribute_classifier,
    inception_score,
    scene_targets,
    train_attribute_classifier,
)
from flowkit.data.grammar import (
    COLORS,
    SHAPES,
    SIZES,
    Scene,
    all_true_captions,
    all_true_constraints,
    canonical,
    parse,
)

__all__ = [
    "caption_accuracy",
    "caption_coverage",
    "SceneReader",
    "image_caption_accuracy",
    "free_attribute_spread",
    # re-exported from flowkit.data.classifier
    "AttributeClassifier",
    "ClassifierConfig",
    "train_attribute_classifier",
    "get_attribute_classifier",
    "evaluate_classifier",
    "scene_targets",
    "cache_dir",
    "class_probabilities",
    "inception_score",
    "NUM_CLASSES",
]


# ---------------------------------------------------------------------------------------------
# Caption judges (exact).
def caption_accuracy(captions_by_image: Mapping[int, Sequence[str]], scenes: Mapping[int, Scene]) -> float:
    r"""The fraction of captions true of their image (ungrammatical ones count as false).

    Arguments:
        captions_by_image: ``{image_id: [caption, ...]}``.
        scenes: ``{image_id: Scene}`` holding at least those ids.

    Example:
        >>> from flowkit.data.grammar import SceneObject
        >>> s = Scene((SceneObject("circle", "red", "small", 0, 0),))
        >>> caption_accuracy({1: ["a red circle", "a blue circle"]}, {1: s})
        0.5
    """
    from flowkit.data.grammar import is_true

    total = hits = 0
    for iid, caps in captions_by_image.items():
        scene = scenes[iid]
        for c in caps:
            total += 1
            hits += is_true(c, scene)
    if total == 0:
        raise ValueError("caption_accuracy needs at least one caption")
    return hits / total


def caption_coverage(
    captions_by_image: Mapping[int, Sequence[str]],
    scenes: Mapping[int, Scene],
    mode: str = "meaning",
) -> float:
    r"""The mean fraction of an image's true captions that its samples reach.

    .. math:: \mathrm{cov} = \frac{1}{|I|} \sum_{i \in I}
        \frac{|\{\kappa(c) : c \in C_i,\ c \text{ true of } s_i\}|}{|\{\kappa(c) : c \text{ true of } s_i\}|}

    with :math:`\kappa` the canonical meaning (``mode="meaning"``) or the caption string itself
    after lowercasing and punctuation removal (``mode="exact"``). False captions reach nothing.

    Arguments:
        captions_by_image: ``{image_id: [caption, ...]}``.
        scenes: ``{image_id: Scene}``.
        mode: ``"meaning"`` or ``"exact"``.

    Example:
        >>> from flowkit.data.grammar import SceneObject
        >>> s = Scene((SceneObject("circle", "red", "small", 0, 0),))
        >>> n = len(all_true_constraints(s))
        >>> caption_coverage({1: ["a red circle", "there is a red circle"]}, {1: s}) * n
        1.0
    """
    from flowkit.data.vocab import tokenize

    if mode not in ("meaning", "exact"):
        raise ValueError(f"mode must be 'meaning' or 'exact', got {mode!r}")
    if not captions_by_image:
        raise ValueError("caption_coverage needs at least one image")
    total = 0.0
    for iid, caps in captions_by_image.items():
        scene = scenes[iid]
        if mode == "meaning":
            truth: frozenset[Any] | set[str] = all_true_constraints(scene)
            reached = {canonical(c) for c in map(parse, caps) if c is not None and c.holds(scene)}
        else:
            truth = {" ".join(tokenize(c)) for c in all_true_captions(scene)}
            reached = {" ".join(tokenize(c)) for c in caps} & truth
        total += len(reached & truth) / len(truth)
    return total / len(captions_by_image)


class SceneReader(Protocol):
    r"""Anything that reads scenes off images (an :class:`AttributeClassifier`, or an oracle)."""

    def read_scenes(self, images: Tensor) -> list[Scene | None]: ...


def _reader(classifier: SceneReader | None) -> SceneReader:
    return classifier if classifier is not None else get_attribute_classifier()


# ---------------------------------------------------------------------------------------------
# Judges of generated images.
def image_caption_accuracy(images: Tensor, captions: str | Sequence[str], classifier: SceneReader | None = None) -> float:
    r"""The fraction of images whose scene, as the classifier reads it, makes its caption true.

    Arguments:
        images: ``(N, 3, 64, 64)`` generated images in [0, 1].
        captions: One caption for all images, or one per image.
        classifier: A scene reader (default :func:`get_attribute_classifier`).

    Example:
        >>> import torch
        >>> from flowkit.data.grammar import SceneObject
        >>> class Reader:  # a stand-in for the classifier: every image shows a small red circle
        ...     def read_scenes(self, images):
        ...         return [Scene((SceneObject("circle", "red", "small", 0, 0),))] * len(images)
        >>> image_caption_accuracy(torch.zeros(4, 3, 64, 64), ["a red circle", "a blue circle"] * 2, Reader())
        0.5
    """
    caps = [captions] * len(images) if isinstance(captions, str) else list(captions)
    if len(caps) != len(images):
        raise ValueError(f"{len(images)} images but {len(caps)} captions")
    if len(caps) == 0:
        raise ValueError("image_caption_accuracy needs at least one image")
    scenes = _reader(classifier).read_scenes(images)
    hits = 0
    for cap, scene in zip(caps, scenes):
        c = parse(cap)
        hits += scene is not None and c is not None and c.holds(scene)
    return hits / len(caps)


_VALUES = {"shape": len(SHAPES), "color": len(COLORS), "size": len(SIZES), "position": 9, "row": 3, "col": 3, "objects": 2}


def free_attribute_spread(
    images: Tensor, caption: str, classifier: SceneReader | None = None, measure: str = "entropy"
) -> dict[str, float]:
    r"""How varied the attributes that ``caption`` leaves free are across images of it.

    For each image whose read scene makes the caption true, the objects that satisfy the
    caption's object phrases are found, and each attribute a phrase leaves free is recorded:
    ``shape``, ``color``, ``size``, and ``position`` (the cell; ``row`` or ``col`` when the
    caption fixes only the other one); ``objects`` (the number of objects) when the caption does
    not fix it. Keys are prefixed ``"0."``/``"1."`` for captions with two object phrases.

    Arguments:
        images: ``(N, 3, 64, 64)`` images generated from ``caption``.
        caption: The caption.
        classifier: A scene reader (default :func:`get_attribute_classifier`).
        measure: ``"entropy"``: the empirical entropy divided by ``log K`` (K possible values),
            in [0, 1]; ``"distinct"``: the number of distinct values seen.

    Returns:
        ``{attribute: spread}``, plus ``"mean"`` (of the attributes) and ``"images"`` (how many
        images satisfied the caption; the attributes are NaN when none did).

    Example:
        >>> import torch
        >>> from flowkit.data.grammar import SceneObject
        >>> class Reader:  # a stand-in for the classifier: image i shows a red circle in cell i
        ...     def read_scenes(self, images):
        ...         return [Scene((SceneObject("circle", "red", "small", i // 3, i % 3),)) for i in range(len(images))]
        >>> free_attribute_spread(torch.zeros(9, 3, 64, 64), "a red circle", Reader(), measure="distinct")
        {'size': 1.0, 'position': 9.0, 'objects': 1.0, 'mean': 3.6666666666666665, 'images': 9.0}
    """
    if measure not in ("entropy", "distinct"):
        raise ValueError(f"measure must be 'entropy' or 'distinct', got {measure!r}")
    c = parse(caption)
    if c is None:
        raise ValueError(f"not a caption of the shapes grammar: {caption!r}")
    values: dict[str, list[Any]] = {}
    prefix = len(c.objects) > 1
    keys = []
    for i, spec in enumerate(c.objects):
        free = set(spec.free())
        names = [a for a in ("shape", "color", "size") if a in free]
        if {"row", "col"} <= free:
            names.append("position")
        elif "row" in free or "col" in free:
            names.append("row" if "row" in free else "col")
        keys += [(i, a, f"{i}.{a}" if prefix else a) for a in names]
    if c.count is None:
        keys.append((None, "objects", "objects"))
    for *_, k in keys:
        values[k] = []
    n = 0
    for scene in _reader(classifier).read_scenes(images):
        objs = c.assignment(scene) if scene is not None else None
        if objs is None:
            continue
        n += 1
        for i, a, k in keys:
            if a == "objects":
                values[k].append(len(scene.objects))
            elif a == "position":
                values[k].append(objs[i].cell)
            else:
                values[k].append(getattr(objs[i], a))
    out: dict[str, float] = {}
    for _, a, k in keys:
        if not values[k]:
            out[k] = float("nan")
        elif measure == "distinct":
            out[k] = float(len(set(values[k])))
        else:
            counts = np.array(list(Counter(values[k]).values()), float)
            p = counts / counts.sum()
            out[k] = float(-(p * np.log(p)).sum() / math.log(_VALUES[a]))
    vals = [v for v in out.values() if not math.isnan(v)]
    out["mean"] = float(np.mean(vals)) if vals else float("nan")
    out["images"] = float(n)
    return out
