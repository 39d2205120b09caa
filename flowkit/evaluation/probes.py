r"""Linear probes: which scene attributes can a linear classifier read from the image codes?

A caption can only be true of its image if the code it is decoded from carries the image's
content. On the embedded shapes data the scenes are known exactly, so the question has a
direct answer: fit a multinomial logistic regression from the codes of training images to
an attribute (number of objects; shape, colour, size, row, column of one-object images) and
report its accuracy on test images next to the best constant guess. A probe near that rate
means the code ignores the attribute.

.. code-block:: python

    from flowkit.evaluation.probes import probe_image_codes

    probe_image_codes(model, data)["color"]  # {"accuracy": 0.93, "chance": 0.17, ...}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkit.data.grammar import Scene
from flowkit.evaluation.captioning import encode_dataset_images, train_image_ids

__all__ = ["PROBE_ATTRIBUTES", "linear_probe_accuracy", "probe_scene_attributes", "probe_image_codes"]

#: The attributes probed; all but ``count`` only on one-object scenes (unambiguous labels).
PROBE_ATTRIBUTES: tuple[str, ...] = ("count", "shape", "color", "size", "row", "col")


def linear_probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, l2: float = 1e-3, max_iter: int = 200) -> float:
    r"""Test accuracy of an L2-regularized multinomial logistic regression (L-BFGS, float64).

    The features are standardized with the training mean and std.

    Arguments:
        train_x: (N, F) training features.
        train_y: (N,) integer labels in ``[0, K)``.
        test_x: (M, F) test features.
        test_y: (M,) integer labels.
        l2: The weight of the squared-weight penalty.
        max_iter: L-BFGS iterations.

    Example:
        >>> x = torch.randn(200, 3); y = (x[:, 0] > 0).long()
        >>> linear_probe_accuracy(x[:150], y[:150], x[150:], y[150:]) > 0.9
        True
    """
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"probe features must be (N, F) and (M, F), got {tuple(train_x.shape)} and {tuple(test_x.shape)}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y) or len(train_x) == 0 or len(test_x) == 0:
        raise ValueError("probe: every feature row needs one label, and both sets must be non-empty")
    xtr, xte = train_x.double(), test_x.double()
    mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-8) if len(xtr) > 1 else torch.ones(xtr.shape[1], dtype=torch.float64)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
    weight = torch.zeros(xtr.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ weight + bias, train_y.long()) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((xte @ weight + bias).argmax(1) == test_y.long()).double().mean())


def _label(scene: Scene, attribute: str) -> Any:
    if attribute == "count":
        return len(scene.objects)
    return getattr(scene.objects[0], attribute) if len(scene.objects) == 1 else None


def probe_scene_attributes(
    train_codes: Tensor,
    train_scenes: Sequence[Scene],
    test_codes: Tensor,
    test_scenes: Sequence[Scene],
    attributes: Sequence[str] = PROBE_ATTRIBUTES,
) -> dict[str, dict[str, float]]:
    r"""Linear-probe accuracy of each scene attribute from codes, with its chance level.

    Arguments:
        train_codes: (N, F) codes of the training images.
        train_scenes: Their scenes.
        test_codes: (M, F) codes of the test images.
        test_scenes: Their scenes.
        attributes: Names from :data:`PROBE_ATTRIBUTES`.

    Returns:
        ``{attribute: {"accuracy", "chance", "train", "test"}}``: test accuracy; the accuracy
        of the best constant guess (the test rate of the most frequent test label); and the
        numbers of images used.
    """
    if len(train_codes) != len(train_scenes) or len(test_codes) != len(test_scenes):
        raise ValueError("probe: one scene per code row is needed")
    out: dict[str, dict[str, float]] = {}
    for attribute in attributes:
        if attribute not in PROBE_ATTRIBUTES:
            raise ValueError(f"unknown attribute {attribute!r}; choose from {', '.join(PROBE_ATTRIBUTES)}")
        tr = [(i, _label(s, attribute)) for i, s in enumerate(train_scenes)]
        tr = [(i, y) for i, y in tr if y is not None]
        classes = sorted({y for _, y in tr}, key=str)
        te = [(i, _label(s, attribute)) for i, s in enumerate(test_scenes)]
        te = [(i, y) for i, y in te if y in classes]
        if len(classes) < 2 or not te:
            continue
        index = {c: k for k, c in enumerate(classes)}
        ytr = torch.tensor([index[y] for _, y in tr])
        yte = torch.tensor([index[y] for _, y in te])
        out[attribute] = {
            "accuracy": linear_probe_accuracy(train_codes[[i for i, _ in tr]], ytr, test_codes[[i for i, _ in te]], yte),
            "chance": float(torch.bincount(yte).max()) / len(yte),
            "train": float(len(tr)),
            "test": float(len(te)),
        }
    return out


def probe_image_codes(
    model: torch.nn.Module,
    data: Any,
    num_train: int = 2000,
    num_test: int = 500,
    code: Callable[[torch.nn.Module, Tensor], Tensor] | None = None,
    scenes: Mapping[int, Scene] | None = None,
) -> dict[str, dict[str, float]]:
    r"""Probes an LNFMM's image shared codes :math:`\mu(z_s^v)` on the shapes data.

    Arguments:
        model: The LNFMM.
        data: A :class:`~flowkit.data.CaptionData` with scenes (the shapes data).
        num_train: Training images to fit the probes on (at most all of them).
        num_test: Test images to score them on.
        code: ``code(model, images) -> (B, F)`` to probe another code; default: the shared
            image code (``encode_images(...)["shared"]``).
        scenes: ``{image_id: Scene}``; default ``data.scenes`` (data read back from a COCO
            export has none: pass :func:`flowkit.evaluation.scenes_from_export`'s).

    Returns:
        As :func:`probe_scene_attributes`.
    """
    scenes = scenes if scenes is not None else getattr(data, "scenes", None)
    if scenes is None:
        raise ValueError(
            "probe_image_codes needs the scenes of the images: use the shapes data, or pass scenes= "
            "(flowkit.evaluation.scenes_from_export(root) for an exported copy)"
        )
    train_ids = train_image_ids(data)[:num_train]
    test_ids = list(dict.fromkeys(int(i) for i in data.test.image_ids))[:num_test]
    if code is None:
        xtr = encode_dataset_images(model, data.train.images, train_ids)
        xte = encode_dataset_images(model, data.test.images, test_ids)
    else:
        model.eval()
        with torch.no_grad():
            xtr = code(model, torch.stack([data.train.images(i) for i in train_ids]))
            xte = code(model, torch.stack([data.test.images(i) for i in test_ids]))
    return probe_scene_attributes(xtr, [scenes[i] for i in train_ids], xte, [scenes[i] for i in test_ids])
