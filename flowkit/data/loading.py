r"""One entry point from data on disk (or the embedded shapes) to training-ready datasets."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from flowkit.data.coco import ImageRecord, load_features, load_image, read_splits
from flowkit.data.errors import DataError
from flowkit.data.grammar import Scene
from flowkit.data.vocab import Vocabulary

__all__ = ["DATA_DEFAULTS", "CaptionData", "PairDataset", "ImageDataset", "load_caption_data", "load_data_from_options", "DEFAULT_MAX_LEN"]

DEFAULT_MAX_LEN: dict[str, int] = {"shapes": 20, "coco": 40}

#: The data options a training run records in its checkpoint (``ckpt["meta"]["data"]``, as
#: ``flowkit train`` and the examples write them) and their defaults; the evaluation and the
#: ``caption``/``evaluate`` commands reload a run's data from them.
DATA_DEFAULTS: dict[str, object] = {
    "data": "shapes",
    "coco_root": None,
    "features": None,
    "max_len": None,
    "vocab_threshold": 4,
    "sizes": None,
    "data_seed": 0,
    "split_scheme": "karpathy",
}
_SPLITS = ("train", "val", "test")


class _Images:
    r"""Images (uint8 pixels in memory, lazily read files, or feature rows) by image id."""

    def __init__(
        self,
        pixels: np.ndarray | None = None,
        paths: Mapping[int, Path] | None = None,
        features: np.ndarray | None = None,
        rows: Mapping[int, int] | None = None,
        image_size: int = 64,
    ) -> None:
        self.pixels, self.features, self.rows = pixels, features, dict(rows or {})
        self.paths = dict(paths or {})
        self.image_size = image_size

    def __call__(self, image_id: int) -> Tensor:
        if self.features is not None:
            return torch.from_numpy(self.features[self.rows[image_id]])
        if self.pixels is not None:
            arr = self.pixels[self.rows[image_id]]
        else:
            arr = load_image(self.paths[image_id], self.image_size)
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255)


class PairDataset(Dataset):
    r"""Training pairs: one item per (image, caption).

    Items are ``dict(image=Tensor, caption=LongTensor(max_len), image_id=int)``; the default
    torch collate batches them.

    Arguments:
        images: The image source (by id).
        pairs: ``(image_id, caption)`` pairs, in order.
        vocab: The vocabulary that encodes the captions.
        max_len: The caption length with ``<start>``, ``<end>`` and padding.
    """

    def __init__(self, images: _Images, pairs: Sequence[tuple[int, str]], vocab: Vocabulary, max_len: int) -> None:
        self.images = images
        self.image_ids = [int(i) for i, _ in pairs]
        self.raw_captions = [c for _, c in pairs]
        self.captions = torch.tensor([vocab.encode(c, max_len) for c in self.raw_captions], dtype=torch.long).reshape(len(pairs), max_len)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        iid = self.image_ids[index]
        return {"image": self.images(iid), "caption": self.captions[index], "image_id": iid}


class ImageDataset(Dataset):
    r"""Evaluation images: one item per image, ``dict(image=Tensor, image_id=int)``.

    Arguments:
        images: The image source (by id).
        image_ids: The image ids, in order.
    """

    def __init__(self, images: _Images, image_ids: Sequence[int]) -> None:
        self.images = images
        self.image_ids = [int(i) for i in image_ids]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        iid = self.image_ids[index]
        return {"image": self.images(iid), "image_id": iid}


@dataclass
class CaptionData:
    r"""Everything a captioning / text-to-image run needs.

    Attributes:
        vocab: The vocabulary of the training captions.
        train: A :class:`PairDataset` (one item per image-caption pair).
        val, test: :class:`ImageDataset` (one item per image).
        references: ``{split: {image_id: [raw caption, ...]}}`` for the metrics.
        train_captions: The raw training captions (for novelty and the vocabulary).
        scenes: ``{image_id: Scene}`` of every split for the shapes data, else None.
        image_shape: ``(3, H, W)`` for pixels or ``(F,)`` for features.
        image_kind: ``"pixels"`` or ``"features"``.
        max_len: The encoded caption length.
    """

    vocab: Vocabulary
    train: PairDataset
    val: ImageDataset
    test: ImageDataset
    references: dict[str, dict[int, list[str]]]
    train_captions: list[str]
    scenes: dict[int, Scene] | None
    image_shape: tuple[int, ...]
    image_kind: str
    max_len: int


def _records_from_shapes(
    sizes: Mapping[str, int], seed: int
) -> tuple[dict[str, list[ImageRecord]], np.ndarray, dict[int, int], dict[int, Scene]]:
    from flowkit.data.shapes import DEFAULT_SIZES, ShapesCaptions

    sizes = {**DEFAULT_SIZES, **dict(sizes)}
    splits: dict[str, list[ImageRecord]] = {}
    pixels, rows, scenes = [], {}, {}
    n = 0
    for s in _SPLITS:
        ds = ShapesCaptions(s, sizes[s], seed)
        splits[s] = [ImageRecord(i, None, list(c)) for i, c in zip(ds.image_ids, ds.captions)]
        pixels.append(ds.pixels)
        for k, (iid, scene) in enumerate(zip(ds.image_ids, ds.scenes)):
            rows[iid] = n + k
            scenes[iid] = scene
        n += len(ds)
    return splits, np.concatenate(pixels), rows, scenes


def _coco_records(
    root: str | os.PathLike[str] | None,
    split_scheme: str,
    split_files: Mapping[str, str | os.PathLike[str]] | None,
    image_size: int,
    preload: bool | None,
    progress: bool,
    *,
    pixels: bool,
) -> tuple[dict[str, list[ImageRecord]], _Images]:
    r"""The splits of a COCO-format folder and their image files. With ``pixels`` (no features
    file replaces the images) the files are checked, and read into memory when ``preload`` says
    so (None: when they fit in 2 GiB)."""
    if root is None:
        raise DataError("source='coco' needs root= a COCO-format folder (e.g. one written by flowkit.data.shapes.export_coco(root))")
    splits = read_splits(root, split_scheme, split_files)
    images = _Images(paths={r.image_id: r.path for s in _SPLITS for r in splits[s] if r.path is not None}, image_size=image_size)
    if not pixels:
        return splits, images
    _check_image_files(splits)
    n = sum(len(v) for v in splits.values())
    if preload if preload is not None else n * image_size * image_size * 3 <= 2 << 30:
        ids = [r.image_id for s in _SPLITS for r in splits[s]]
        arr = (
            np.stack([load_image(images.paths[i], image_size) for i in tqdm(ids, desc="images", disable=not progress)])
            if ids
            else np.zeros((0, image_size, image_size, 3), np.uint8)
        )
        images = _Images(pixels=arr, rows={i: k for k, i in enumerate(ids)})
    return splits, images


def _feature_images(
    features: str | os.PathLike[str], splits: Mapping[str, list[ImageRecord]], feature_dim: int | None
) -> tuple[_Images, tuple[int, ...], str]:
    r"""The images of ``splits`` as rows of a features file: the source, its image shape and kind."""
    needed = [r.image_id for s in _SPLITS for r in splits[s]]
    rows, feats = load_features(features, required_ids=needed, expected_dim=feature_dim)
    return _Images(features=feats, rows=rows), (feats.shape[1],), "features"


def _check_source(source: str, root: Any, max_len: int | None) -> int:
    r"""Checks :func:`load_caption_data`'s source, root and caption length; returns the length."""
    if source not in ("shapes", "coco"):
        raise ValueError(f"source must be 'shapes' or 'coco', got {source!r}")
    if source == "shapes" and root is not None:
        raise ValueError(
            "root= is for source='coco'; the shapes data is generated from sizes= and seed= (export it with flowkit.data.shapes.export_coco)"
        )
    max_len = DEFAULT_MAX_LEN[source] if max_len is None else int(max_len)
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    return max_len


def load_caption_data(
    source: str = "shapes",
    *,
    root: str | os.PathLike[str] | None = None,
    features: str | os.PathLike[str] | None = None,
    feature_dim: int | None = None,
    max_len: int | None = None,
    vocab_threshold: int = 4,
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
    split_scheme: str = "karpathy",
    split_files: Mapping[str, str | os.PathLike[str]] | None = None,
    image_size: int = 64,
    preload: bool | None = None,
    progress: bool = False,
) -> CaptionData:
    r"""Load captioned images as training pairs, evaluation images and references.

    All checks run here, before any training: a missing file, malformed JSON, images without
    captions, features that lack caption images or have the wrong size raise
    :class:`~flowkit.data.errors.DataError` naming the file and the fix.

    Arguments:
        source: ``"shapes"`` (the embedded dataset, generated from ``sizes`` and ``seed``) or
            ``"coco"`` (COCO-format files under ``root``; see :mod:`flowkit.data.coco`).
        root: The data folder (``"coco"`` only).
        features: Optional features file keyed by image id; images are then ``(F,)`` vectors.
        feature_dim: The feature size the model expects (checked when given).
        max_len: The encoded caption length (``<start>`` + words + ``<end>``, padded);
            default 20 for shapes, 40 for COCO (as the official LNFMM code).
        vocab_threshold: Minimum count of a vocabulary word among the training captions.
        sizes: Images per split for shapes, e.g. ``{"train": 2000, "val": 200, "test": 200}``.
        seed: The shapes seed.
        split_scheme: ``"karpathy"``, ``"coco"``, ``"ids"`` or ``"mrnn"`` (``"coco"`` source).
        split_files: Explicit split / annotation files (see :func:`flowkit.data.coco.read_splits`).
        image_size: Side length of the pixel images (COCO files are resized to it).
        preload: Read every image file into memory at once (default: when they fit in 2 GiB).
        progress: Show progress bars.

    Example:
        >>> data = load_caption_data("shapes", sizes={"train": 100, "val": 10, "test": 10})
        >>> batch = next(iter(torch.utils.data.DataLoader(data.train, batch_size=4)))
        >>> batch["image"].shape, batch["caption"].shape
        (torch.Size([4, 3, 64, 64]), torch.Size([4, 20]))
    """
    max_len = _check_source(source, root, max_len)
    scenes: dict[int, Scene] | None = None
    if source == "shapes":
        splits, pixels, rows, scenes = _records_from_shapes(sizes or {}, seed)
        images = _Images(pixels=pixels, rows=rows)
    else:
        splits, images = _coco_records(root, split_scheme, split_files, image_size, preload, progress, pixels=features is None)
    if features is not None:
        images, image_shape, kind = _feature_images(features, splits, feature_dim)
    else:
        image_shape, kind = (3, image_size, image_size), "pixels"

    train_captions = [c for r in splits["train"] for c in r.captions]
    if not train_captions:
        raise DataError(f"the training split has no images (source={source!r}, root={root})")
    pairs = _pairs_with_words(splits["train"], source, root)
    vocab = Vocabulary.build(train_captions, threshold=vocab_threshold)
    return CaptionData(
        vocab=vocab,
        train=PairDataset(images, pairs, vocab, max_len),
        val=ImageDataset(images, [r.image_id for r in splits["val"]]),
        test=ImageDataset(images, [r.image_id for r in splits["test"]]),
        references={s: {r.image_id: list(r.captions) for r in splits[s]} for s in _SPLITS},
        train_captions=train_captions,
        scenes=scenes,
        image_shape=image_shape,
        image_kind=kind,
        max_len=max_len,
    )


def load_data_from_options(opts: Mapping[str, Any], progress: bool = False) -> CaptionData:
    r"""The :class:`CaptionData` of a run's data options (the keys of :data:`DATA_DEFAULTS`, as a
    checkpoint's ``meta["data"]`` records them).

    Arguments:
        opts: The data options; ``coco_root`` is read for ``data="coco"`` only.
        progress: Show progress bars while loading.

    Example:
        >>> data = load_data_from_options({**DATA_DEFAULTS, "sizes": {"train": 2, "val": 1, "test": 1}})
        >>> len(data.val), data.image_kind
        (1, 'pixels')
    """
    src = opts["data"]
    return load_caption_data(
        src,
        root=opts["coco_root"] if src == "coco" else None,
        features=opts["features"],
        max_len=opts["max_len"],
        vocab_threshold=opts["vocab_threshold"],
        sizes=opts["sizes"],
        seed=opts["data_seed"],
        split_scheme=opts["split_scheme"],
        progress=progress,
    )


def _pairs_with_words(records: Sequence[ImageRecord], source: str, root: Any) -> list[tuple[int, str]]:
    r"""The training pairs whose caption has a word; empty or punctuation-only captions would
    train as ``<start><end>``: they are dropped with a warning (an error when all are)."""
    from flowkit.data.vocab import tokenize

    pairs = [(r.image_id, c) for r in records for c in r.captions]
    kept = [(i, c) for i, c in pairs if tokenize(c)]
    if not kept:
        raise DataError(
            f"none of the {len(pairs)} training captions has a word (all are empty or punctuation; source={source!r}, "
            f"root={root}): check the 'caption' fields of the training annotations"
        )
    if len(kept) < len(pairs):
        empty = [(i, c) for i, c in pairs if not tokenize(c)]
        warnings.warn(
            f"{len(empty)} of {len(pairs)} training captions have no word (empty or punctuation only, e.g. "
            f"{[f'image {i}: {c!r}' for i, c in empty[:3]]}); they are left out of training",
            stacklevel=3,
        )
    return kept


def _check_image_files(splits: Mapping[str, Sequence[ImageRecord]]) -> None:
    for s, recs in splits.items():
        unknown = [r.image_id for r in recs if r.path is None]
        if unknown:
            raise DataError(
                f"{len(unknown)} images of split {s!r} have no file name in the annotations (e.g. ids {unknown[:5]}); pass features= instead"
            )
        missing = [r.path for r in recs if r.path is not None and not r.path.is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} image files of split {s!r} are missing (e.g. {[str(p) for p in missing[:3]]}); check root= or pass features="
            )
