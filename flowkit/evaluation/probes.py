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

from flowkit.data.grammar import Constraints, Scene, parse
from flowkit.evaluation.captioning import encode_dataset_images, train_image_ids

__all__ = ["PROBE_ATTRIBUTES", "linear_probe_accuracy", "probe_scene_attributes", "probe_image_codes", "probe_text_codes"]

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
    return _probe_labels(train_codes, train_scenes, test_codes, test_scenes, _label, attributes)


def _probe_labels(
    train_codes: Tensor,
    train_items: Sequence[Any],
    test_codes: Tensor,
    test_items: Sequence[Any],
    label: Callable[[Any, str], Any],
    attributes: Sequence[str],
) -> dict[str, dict[str, float]]:
    # Each attribute on the rows that have a label for it (label(item, attribute) not None).
    out: dict[str, dict[str, float]] = {}
    for attribute in attributes:
        if attribute not in PROBE_ATTRIBUTES:
            raise ValueError(f"unknown attribute {attribute!r}; choose from {', '.join(PROBE_ATTRIBUTES)}")
        tr = [(i, y) for i, y in ((i, label(s, attribute)) for i, s in enumerate(train_items)) if y is not None]
        classes = sorted({y for _, y in tr}, key=str)
        te = [(i, y) for i, y in ((i, label(s, attribute)) for i, s in enumerate(test_items)) if y in classes]
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


def _stated(meaning: Constraints, attribute: str) -> Any:
    # What a caption fixes: the count when it says it; the rest when it describes one object.
    if attribute == "count":
        return meaning.count
    return getattr(meaning.objects[0], attribute) if len(meaning.objects) == 1 else None


def probe_text_codes(model: torch.nn.Module, data: Any, num_train: int = 2000, num_test: int = 500) -> dict[str, dict[str, float]]:
    r"""Probes an LNFMM's caption shared codes :math:`\mu(z_s^t)` on the shapes data.

    A caption states only some attributes ("a red circle" says nothing of size or place), so
    each attribute is probed on the captions whose meaning fixes it: ``count`` on those that
    give the number of objects, the others on captions of one object that name it. All
    reference captions of the first ``num_train`` training and ``num_test`` test images are used.

    Arguments:
        model: The LNFMM.
        data: A :class:`~flowkit.data.CaptionData` of the shapes caption language.
        num_train: Training images whose captions fit the probes.
        num_test: Test images whose captions score them.

    Returns:
        As :func:`probe_scene_attributes` (``train`` and ``test`` count captions).
    """
    from flowkit.evaluation.text_to_image import encode_captions_text

    def codes(split: str, ids: Sequence[int]) -> tuple[Tensor, list[Constraints]]:
        captions = [c for i in ids for c in data.references[split][i]]
        meanings = [parse(c) for c in captions]
        kept = [c for c, m in zip(captions, meanings) if m is not None]
        if not kept:
            raise ValueError("probe_text_codes needs captions of the shapes caption language; none of these parse")
        tokens = encode_captions_text(kept, data.vocab, model.config.max_caption_len)
        model.eval()
        with torch.no_grad():
            shared = torch.cat([model.encode_captions(tokens[i : i + 512])["shared"] for i in range(0, len(tokens), 512)])
        return shared, [m for m in meanings if m is not None]

    xtr, mtr = codes("train", train_image_ids(data)[:num_train])
    xte, mte = codes("test", list(dict.fromkeys(int(i) for i in data.test.image_ids))[:num_test])
    return _probe_labels(xtr, mtr, xte, mte, _stated, PROBE_ATTRIBUTES)
