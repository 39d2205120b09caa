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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowkit.data.classifier import AttributeClassifier, ClassifierConfig, cell_crops, get_attribute_classifier
from flowkit.data.coco import load_image, pil_to_tensor, read_splits
from flowkit.data.errors import DataError
from flowkit.io import atomic_write_bytes

if TYPE_CHECKING:
    from flowkit.data.loading import CaptionData

__all__ = [
    "SHAPES_TRUNK_SEED",
    "ShapesCOCO",
    "extract_features",
    "load_shapes_coco",
    "shapes_trunk",
    "shapes_trunk_features",
    "shapes_trunk_reading",
]

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


def _trunk_key(trunk: AttributeClassifier) -> str:
    # the trunk's weights name what it extracts: another trunk never reads a stale file
    return hashlib.sha256(b"".join(v.numpy().tobytes() for v in trunk.state_dict().values())).hexdigest()[:12]


class _TrunkFeatures:
    r"""Maps ``(B, 3, 64, 64)`` images in [0, 1] to the trunk's penultimate layer ``(B, 576)``."""

    def __init__(self, trunk: AttributeClassifier) -> None:
        self.body = trunk.net[:-1].eval()  # all but the read-out: 64 features per cell crop
        self.key = _trunk_key(trunk)

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


class _TrunkReading:
    r"""Maps ``(B, 3, 64, 64)`` images in [0, 1] to the trunk's read-out ``(B, 117)``."""

    def __init__(self, trunk: AttributeClassifier) -> None:
        self.trunk = trunk.eval()
        self.key = "reading-" + _trunk_key(trunk)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        from flowkit.data.renderer import reading_of

        if images.dim() != 4 or tuple(images.shape[1:]) != (3, 64, 64):
            raise ValueError(f"shapes trunk readings need (B, 3, 64, 64) images, got {tuple(images.shape)}")
        return reading_of(self.trunk.predict(images.float()))


def shapes_trunk_reading(seed: int = SHAPES_TRUNK_SEED, train_size: int = 3000, progress: bool = False) -> Callable[[Tensor], Tensor]:
    r"""A feature extractor for shapes images: :func:`shapes_trunk`'s read-out, 117 numbers.

    Per grid cell, the probabilities of empty and of each shape, then of each colour and size
    times the probability that the cell is occupied (:func:`flowkit.data.renderer.reading_of`):
    the analogue of VGG-16's class scores (fc8) where :func:`shapes_trunk_features` is fc7.
    Text-to-image decodes readings, and :func:`flowkit.data.renderer.render_readings` draws
    them. Returns a function with a ``key`` attribute, as :func:`shapes_trunk_features`.

    Example (not run as a doctest: it trains the trunk, about 20 s, and caches it):

    .. code-block:: python

        extract = shapes_trunk_reading()
        extract(torch.rand(2, 3, 64, 64)).shape  # torch.Size([2, 117])
    """
    return _TrunkReading(shapes_trunk(seed, train_size, progress=progress))


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


class ShapesCOCO(NamedTuple):
    r"""What :func:`load_shapes_coco` returns."""

    data: CaptionData
    root: Path
    features: Path | None


def load_shapes_coco(
    image_input: str = "features",
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
    trunk_train_size: int = 3000,
    progress: bool = False,
) -> ShapesCOCO:
    r"""The embedded shapes data through the COCO path, as a recipe reads it.

    The data are exported once in COCO format (:func:`flowkit.data.shapes.export_coco`, under
    :func:`~flowkit.data.shapes.shapes_export_root`), then loaded with pycocotools as pixels,
    or with image features extracted once by the pre-trained trunk.

    Arguments:
        image_input: ``"features"`` (:func:`shapes_trunk_features`, 576 per image),
            ``"reading"`` (:func:`shapes_trunk_reading`, 117) or ``"pixels"``: a
            :class:`~flowkit.models.lnfmm.recipes.Recipe`'s ``image_input``.
        sizes: Images per split (default :data:`flowkit.data.shapes.DEFAULT_SIZES`).
        seed: The data seed.
        trunk_train_size: Training images of the trunk (smoke runs use a few hundred).
        progress: Show progress bars.

    Returns:
        The data, the export's folder and the features file (None for pixels).
    """
    from flowkit.data.loading import load_caption_data
    from flowkit.data.shapes import DEFAULT_SIZES, export_coco, shapes_export_root

    extractors = {"features": shapes_trunk_features, "reading": shapes_trunk_reading}
    if image_input not in (*extractors, "pixels"):
        raise ValueError(f"image_input must be one of {(*extractors, 'pixels')}, got {image_input!r}")
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    root = export_coco(shapes_export_root(sizes, seed), sizes=sizes, seed=seed, progress=progress)
    path = None
    if image_input in extractors:
        extract = extractors[image_input](train_size=trunk_train_size, progress=progress)
        name = "shapes_trunk" if image_input == "features" else "shapes_reading"
        path = extract_features(root, extract, name=name, progress=progress)
    data = load_caption_data("coco", root=root, features=path, split_scheme="coco", progress=progress)
    return ShapesCOCO(data, root, path)
