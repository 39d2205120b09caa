r"""Pre-extracted image features: the paper's route (VGG-16 fc7, extracted once) for any data.

LNFMM's image encoder in the paper reads fc7 features of an ImageNet-pre-trained VGG-16,
extracted once per image. The shapes data has its analogue here: :func:`shapes_trunk` is a
small CNN trained on shapes images of *another* data seed with a generic, dense attribute
objective ("what is in each cell of the 3x3 grid": empty or which shape, which colour and
size), as VGG-16 is trained on ImageNet labels and never sees COCO's captions. Its penultimate
layer, 64 numbers per cell, is the feature vector (576 numbers per image).

:func:`extract_features` runs any extractor (:func:`shapes_trunk_features`, or
:func:`flowkit.data.coco.vgg16_fc7` for real COCO) over the images of a COCO-format folder and
writes an ``.npz`` keyed by image id (arrays ``ids`` and ``features``), atomically and once:
a second call with the same extractor finds the file and returns at once.

.. code-block:: python

    from flowkit.data import load_caption_data
    from flowkit.data.features import extract_features, shapes_trunk_features
    from flowkit.data.shapes import export_coco

    root = export_coco("~/.cache/flowkit/shapes_coco")
    path = extract_features(root, shapes_trunk_features(), name="shapes_trunk")
    data = load_caption_data("coco", root=root, features=path, split_scheme="coco")
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowkit.data.classifier import AttributeClassifier, ClassifierConfig, cell_crops, get_attribute_classifier
from flowkit.data.coco import load_image, pil_to_tensor, read_splits
from flowkit.data.errors import DataError
from flowkit.io import atomic_write_bytes

__all__ = ["SHAPES_TRUNK_SEED", "shapes_trunk", "shapes_trunk_features", "extract_features"]

#: The data seed of the trunk's training images (LNFMM's default data seed is 0; the
#: judges' classifier uses 7919): disjoint images, as ImageNet is disjoint from COCO.
SHAPES_TRUNK_SEED = 7


def shapes_trunk(seed: int = SHAPES_TRUNK_SEED, train_size: int = 3000, progress: bool = False) -> AttributeClassifier:
    r"""The pre-trained shapes trunk: a per-cell attribute CNN trained on images of ``seed``.

    Trained once (about 20 s on one core) and cached under ``$FLOWKIT_CACHE``. It is a
    separate network from the judges' classifier (:func:`flowkit.data.judges.get_attribute_classifier`
    with its default seed), so text-to-image is never judged by the network that made the features.

    Arguments:
        seed: The data and initialization seed of its training images.
        train_size: Its training images (4 epochs; smoke tests use a few hundred).
        progress: Show a progress bar while training.
    """
    if seed == ClassifierConfig().seed:
        raise ValueError(f"seed {seed} is the judges' classifier seed; pick another (default {SHAPES_TRUNK_SEED})")
    return get_attribute_classifier(ClassifierConfig(seed=seed, train_size=train_size), progress=progress)


class _TrunkFeatures:
    r"""Maps ``(B, 3, 64, 64)`` images in [0, 1] to the trunk's penultimate layer ``(B, 576)``."""

    def __init__(self, trunk: AttributeClassifier) -> None:
        self.body = trunk.net[:-1].eval()  # all but the read-out: 64 features per cell crop
        self.key = hashlib.sha256(b"".join(v.numpy().tobytes() for v in trunk.state_dict().values())).hexdigest()[:12]

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, 64, 64):
            raise ValueError(f"shapes trunk features need (B, 3, 64, 64) images, got {tuple(images.shape)}")
        crops = cell_crops(images.float())
        return self.body(crops.flatten(0, 1)).reshape(len(images), -1)


def shapes_trunk_features(seed: int = SHAPES_TRUNK_SEED, train_size: int = 3000, progress: bool = False) -> Callable[[Tensor], Tensor]:
    r"""A feature extractor for shapes images: :func:`shapes_trunk`'s penultimate layer.

    Returns a function from ``(B, 3, 64, 64)`` images in [0, 1] to ``(B, 576)`` features
    (64 per grid cell); its ``key`` attribute identifies the weights (it names cached files).

    Example (not run as a doctest: it trains the trunk, about 20 s, and caches it under
    ``$FLOWKIT_CACHE``):

    .. code-block:: python

        extract = shapes_trunk_features()
        extract(torch.rand(2, 3, 64, 64)).shape  # torch.Size([2, 576])
    """
    return _TrunkFeatures(shapes_trunk(seed, train_size, progress=progress))


def _image_paths(root: Path, split_scheme: str) -> tuple[list[int], list[Path]]:
    splits = read_splits(root, split_scheme)
    ids, paths = [], []
    for records in splits.values():
        for r in records:
            if r.path is None:
                raise DataError(f"image {r.image_id} of {root} has no file name; features need the image files")
            ids.append(r.image_id)
            paths.append(r.path)
    return ids, paths


def extract_features(
    root: str | os.PathLike[str],
    extractor: Callable[[Tensor], Tensor],
    name: str = "features",
    split_scheme: str = "coco",
    image_size: int = 64,
    batch_size: int = 256,
    out: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Path:
    r"""Extracts features of every image of a COCO-format folder into an ``.npz`` once.

    The file (arrays ``ids`` and ``features``, float32) goes to ``out`` or to
    ``root/features/<name>-<key>.npz``, where the key hashes the image ids and the extractor's
    ``key`` attribute (when it has one), so another extractor or another image set never
    reads a stale file. It is written atomically; an existing file is returned as it is.
    :func:`flowkit.data.load_caption_data` reads it with ``features=``.

    Arguments:
        root: The COCO-format folder (e.g. from :func:`flowkit.data.shapes.export_coco`).
        extractor: ``(B, 3, H, W)`` images in [0, 1] -> ``(B, F)`` features.
        name: The file's stem.
        split_scheme: How to read the splits (:func:`flowkit.data.coco.read_splits`).
        image_size: Images are resized to this side before extraction.
        batch_size: Images per extractor call.
        out: An explicit output path (``.npz``).
        progress: Show a progress bar.

    Returns:
        The path of the features file.
    """
    root = Path(root)
    ids, paths = _image_paths(root, split_scheme)
    if not ids:
        raise DataError(f"{root} has no images to extract features from")
    if len(set(ids)) != len(ids):
        raise DataError(f"{root}: image ids appear in more than one split; features are keyed by id")
    stamp = json.dumps({"ids": ids, "extractor": getattr(extractor, "key", None), "size": image_size})
    key = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    path = Path(out) if out is not None else root / "features" / f"{name}-{key}.npz"
    if path.suffix != ".npz":
        raise ValueError(f"features are written as .npz; got {path}")
    if path.is_file():
        return path
    chunks: list[np.ndarray] = []
    for b0 in tqdm(range(0, len(ids), batch_size), desc=f"features ({name})", disable=not progress):
        batch = torch.stack([pil_to_tensor(load_image(p, image_size)) for p in paths[b0 : b0 + batch_size]])
        with torch.no_grad():
            chunks.append(np.asarray(extractor(batch).detach().cpu().numpy(), np.float32))
    feats = np.concatenate(chunks)
    if feats.ndim != 2 or len(feats) != len(ids) or not np.isfinite(feats).all():
        raise DataError(f"the extractor returned features of shape {feats.shape} for {len(ids)} images (or NaN/inf)")
    buf = io.BytesIO()
    np.savez(buf, ids=np.asarray(ids, np.int64), features=feats)
    atomic_write_bytes(path, buf.getvalue())
    return path
