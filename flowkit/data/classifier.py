r"""The attribute classifier of the shapes data: a small CNN that reads a scene off an image.

For each of the 9 grid cells the :class:`AttributeClassifier` predicts empty-or-shape (5
classes), color (6) and size (2), from a 24x24 crop around the cell (:func:`cell_crops`).
:func:`train_attribute_classifier` trains one on freshly generated images,
:func:`get_attribute_classifier` caches it under :func:`cache_dir`, and
:func:`class_probabilities` / :func:`inception_score` make it the Inception-score network of
the shapes data. The judges that use it live in :mod:`flowkit.data.judges`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowkit.data.grammar import COLORS, SHAPES, SIZES, Scene, SceneObject
from flowkit.io import cache_dir, cached_trained, settings_key

__all__ = [
    "AttributeClassifier",
    "ClassifierConfig",
    "NUM_CLASSES",
    "cache_dir",
    "cell_crops",
    "class_probabilities",
    "evaluate_classifier",
    "get_attribute_classifier",
    "inception_score",
    "scene_targets",
    "train_attribute_classifier",
]

_CELLS = 9
_SHAPE_OUT = len(SHAPES) + 1  # 0 = empty cell
_HEAD = _SHAPE_OUT + len(COLORS) + len(SIZES)
NUM_CLASSES = len(SHAPES) * len(COLORS) * len(SIZES)  # classes of class_probabilities


@dataclass(frozen=True)
class ClassifierConfig:
    r"""Settings of :func:`train_attribute_classifier` (their hash keys the cache).

    Arguments:
        train_size: Training images (generated, split "train" of ``seed``).
        test_size: Test images (split "test" of ``seed``) for the reported accuracy.
        epochs: Passes over the training images.
        batch_size: Batch size.
        lr: Adam learning rate (cosine decay to 0).
        width: Channels of the first convolution (then 2x and 4x).
        seed: Data and initialization seed (kept apart from the default data seed 0).
        p_two: Probability of two-object images in the training data.
    """

    train_size: int = 3000
    test_size: int = 1000
    epochs: int = 4
    batch_size: int = 32
    lr: float = 3e-3
    width: int = 16
    seed: int = 7919
    p_two: float = 0.6

    def key(self) -> str:
        r"""A short hash of the settings and the classifier version."""
        return settings_key(self, version=1)


_CROP = 24
_STARTS = (1, 22, 43)  # crop origins in the image padded by 2: each 24x24 crop holds its cell's object


def cell_crops(images: Tensor) -> Tensor:
    r"""The 9 overlapping 24x24 crops of ``(B, 3, 64, 64)`` images, one around each grid cell
    (row by row), as ``(B, 9, 3, 24, 24)``; every object lies inside its cell's crop.

    Example:
        >>> cell_crops(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 9, 3, 24, 24])
    """
    x = F.pad(images, (2, 2, 2, 2), mode="replicate")
    return torch.stack([x[:, :, r : r + _CROP, c : c + _CROP] for r in _STARTS for c in _STARTS], 1)


class AttributeClassifier(nn.Module):
    r"""A small CNN reading the scene of a ``(B, 3, 64, 64)`` image: per grid cell, empty or
    one of the shapes, and the color and size of the object there.

    The image is cut into 9 overlapping 24x24 crops, one around each grid cell (every object
    lies inside its cell's crop); one shared CNN classifies every crop. Sharing the weights
    across cells makes it learn from few images.

    Arguments:
        width: Channels of the first convolution (then 2x and 4x).

    Example:
        >>> clf = AttributeClassifier()
        >>> clf(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 9, 13])
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.width = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1),
            nn.BatchNorm2d(w2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w2, w3, 3, padding=1),
            nn.BatchNorm2d(w3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(w3 * 6 * 6, 64),
            nn.ReLU(),
            nn.Linear(64, _HEAD),
        )
        self.metrics: dict[str, float] = {}

    def classify_crops(self, crops: Tensor) -> Tensor:
        r"""Logits ``(N, 13)`` of ``(N, 3, 24, 24)`` cell crops."""
        return self.net(crops)

    def forward(self, images: Tensor) -> Tensor:
        r"""Logits ``(B, 9, 13)``: 5 empty/shape, 6 color, 2 size logits per cell."""
        crops = cell_crops(images)
        return self.net(crops.flatten(0, 1)).view(len(images), _CELLS, _HEAD)

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        r"""Per-cell probabilities: ``shape`` ``(B, 9, 5)`` (index 0 = empty), ``color``
        ``(B, 9, 6)``, ``size`` ``(B, 9, 2)``."""
        was = self.training
        self.eval()
        outs = [self(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)]
        self.train(was)
        logits = torch.cat(outs) if outs else torch.zeros(0, _CELLS, _HEAD)
        return {
            "shape": logits[..., :_SHAPE_OUT].softmax(-1),
            "color": logits[..., _SHAPE_OUT : _SHAPE_OUT + len(COLORS)].softmax(-1),
            "size": logits[..., _SHAPE_OUT + len(COLORS) :].softmax(-1),
        }

    def read_scenes(self, images: Tensor) -> list[Scene | None]:
        r"""The scene of each image: the occupied cells (at most the two most confident) with
        their most likely attributes; None where no cell looks occupied.

        Arguments:
            images: ``(B, 3, 64, 64)`` images in [0, 1].
        """
        p = self.predict(images)
        return _scenes_from_probs(p)


def _scenes_from_probs(p: Mapping[str, Tensor]) -> list[Scene | None]:
    occupied = 1.0 - p["shape"][..., 0]
    shape = p["shape"][..., 1:].argmax(-1)
    color, size = p["color"].argmax(-1), p["size"].argmax(-1)
    out: list[Scene | None] = []
    for b in range(len(occupied)):
        cells = [c for c in torch.argsort(occupied[b], descending=True).tolist() if occupied[b, c] > 0.5][:2]
        if not cells:
            out.append(None)
            continue
        objs = tuple(SceneObject(SHAPES[shape[b, c]], COLORS[color[b, c]], SIZES[size[b, c]], c // 3, c % 3) for c in cells)
        out.append(Scene(objs))
    return out


def scene_targets(scenes: Sequence[Scene]) -> dict[str, Tensor]:
    r"""Per-cell training targets of scenes: ``shape`` ``(N, 9)`` (0 = empty, 1 + shape index),
    ``color`` and ``size`` ``(N, 9)`` (-100, ignored, in empty cells)."""
    shape = torch.zeros(len(scenes), _CELLS, dtype=torch.long)
    color = torch.full((len(scenes), _CELLS), -100, dtype=torch.long)
    size = torch.full((len(scenes), _CELLS), -100, dtype=torch.long)
    for i, s in enumerate(scenes):
        for o in s.objects:
            shape[i, o.cell] = 1 + SHAPES.index(o.shape)
            color[i, o.cell] = COLORS.index(o.color)
            size[i, o.cell] = SIZES.index(o.size)
    return {"shape": shape, "color": color, "size": size}


def _loss(logits: Tensor, t: Mapping[str, Tensor]) -> Tensor:
    a, b = _SHAPE_OUT, _SHAPE_OUT + len(COLORS)
    return (
        F.cross_entropy(logits[..., :a].reshape(-1, a), t["shape"].reshape(-1))
        + F.cross_entropy(logits[..., a:b].reshape(-1, b - a), t["color"].reshape(-1), ignore_index=-100)
        + F.cross_entropy(logits[..., b:].reshape(-1, len(SIZES)), t["size"].reshape(-1), ignore_index=-100)
    )


@torch.no_grad()
def evaluate_classifier(classifier: AttributeClassifier, images: Tensor, scenes: Sequence[Scene]) -> dict[str, float]:
    r"""Test accuracies of a classifier.

    Keys: ``shape``, ``color``, ``size`` (over the true objects: the attribute read at the
    object's cell is right), ``position`` (over images: the set of occupied cells is exactly
    right), ``scene`` (over images: the read scene equals the true one).

    Arguments:
        classifier: The classifier.
        images: ``(N, 3, 64, 64)`` images.
        scenes: Their true scenes.
    """
    p = classifier.predict(images)
    t = scene_targets(scenes)
    occ = t["shape"] > 0
    shape_ok = (p["shape"][..., 1:].argmax(-1) + 1 == t["shape"])[occ]
    color_ok = (p["color"].argmax(-1) == t["color"])[occ]
    size_ok = (p["size"].argmax(-1) == t["size"])[occ]
    pos_ok = ((p["shape"][..., 0] < 0.5) == occ).all(-1)
    read = _scenes_from_probs(p)
    return {
        "shape": shape_ok.float().mean().item(),
        "color": color_ok.float().mean().item(),
        "size": size_ok.float().mean().item(),
        "position": pos_ok.float().mean().item(),
        "scene": float(np.mean([r == s for r, s in zip(read, scenes)])),
    }


def train_attribute_classifier(config: ClassifierConfig | None = None, progress: bool = False) -> AttributeClassifier:
    r"""Train an :class:`AttributeClassifier` on freshly generated shapes images.

    The default config reaches >= 97% test accuracy on every attribute in about a minute on
    two CPU cores (see ``docs/dataset.md``). The result carries ``metrics`` (test accuracies,
    see :func:`evaluate_classifier`, plus ``train_seconds``).

    Arguments:
        config: The settings (default :class:`ClassifierConfig`).
        progress: Show a progress bar.

    Example:
        >>> clf = train_attribute_classifier(ClassifierConfig(train_size=256, test_size=64, epochs=1))
        >>> sorted(clf.metrics)
        ['color', 'position', 'scene', 'shape', 'size', 'train_seconds']
    """
    from flowkit.data.shapes import ShapesCaptions

    cfg = config or ClassifierConfig()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = AttributeClassifier(cfg.width)
    train = ShapesCaptions("train", cfg.train_size, cfg.seed, captions_per_image=1, p_two=cfg.p_two)
    x, t = train.images(), scene_targets(train.scenes)
    steps = cfg.epochs * math.ceil(len(x) / cfg.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.15)
    model.train()
    bar = tqdm(total=steps, desc="attribute classifier", disable=not progress)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            crops = cell_crops(x[idx]).flatten(0, 1)
            tt = {k: v[idx].flatten() for k, v in t.items()}
            # every occupied crop and as many empty ones: empty crops are easy and plentiful
            occ = tt["shape"] > 0
            empty = torch.nonzero(~occ).flatten()
            keep = torch.cat([torch.nonzero(occ).flatten(), empty[torch.randperm(len(empty), generator=gen)[: int(occ.sum())]]])
            loss = _loss(model.classify_crops(crops[keep]), {k: v[keep] for k, v in tt.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    test = ShapesCaptions("test", cfg.test_size, cfg.seed, captions_per_image=1, p_two=0.5)
    model.metrics = {**evaluate_classifier(model, test.images(), test.scenes), "train_seconds": seconds}
    return model


def get_attribute_classifier(
    config: ClassifierConfig | None = None,
    cache: bool = True,
    progress: bool = False,
) -> AttributeClassifier:
    r"""The attribute classifier of ``config``: loaded from the cache, or trained and cached.

    The cache file is ``cache_dir() / "attribute_classifier-<hash of config>.pt"``, written
    atomically (temporary file + rename) and read with ``torch.load(weights_only=True)``.

    Arguments:
        config: The settings (default :class:`ClassifierConfig`).
        cache: Read and write the cache.
        progress: Show a progress bar while training.

    Example:
        >>> clf = get_attribute_classifier(ClassifierConfig(train_size=64, test_size=16, epochs=1, width=4), cache=False)
        >>> sorted(clf.metrics)
        ['color', 'position', 'scene', 'shape', 'size', 'train_seconds']

        The default config (``get_attribute_classifier()``) trains for about a minute the first
        time and reaches a scene accuracy above 0.9.
    """
    cfg = config or ClassifierConfig()
    return cached_trained(
        cache_dir() / f"attribute_classifier-{cfg.key()}.pt",
        cfg,
        lambda stored: AttributeClassifier(int(stored["width"])),
        lambda: train_attribute_classifier(cfg, progress=progress),
        cache,
    )


@torch.no_grad()
def class_probabilities(images: Tensor, classifier: AttributeClassifier | None = None) -> Tensor:
    r"""Class probabilities ``(N, 48)`` over (shape, color, size) for an Inception score.

    .. math:: p(k \mid x) = \sum_{c} w_c(x)\, p_c(\text{shape}) p_c(\text{color}) p_c(\text{size}),
        \quad w_c = \frac{p_c(\text{occupied})}{\sum_{c'} p_{c'}(\text{occupied})}

    a mixture over the grid cells weighted by how likely each holds an object. Class
    ``k = (shape * 6 + color) * 2 + size``.

    Arguments:
        images: ``(N, 3, 64, 64)`` images in [0, 1].
        classifier: The classifier (default :func:`get_attribute_classifier`).
    """
    clf = classifier if classifier is not None else get_attribute_classifier()
    p = clf.predict(images)
    occ = 1.0 - p["shape"][..., 0]
    w = occ / occ.sum(-1, keepdim=True).clamp_min(1e-12)
    shape = p["shape"][..., 1:] / p["shape"][..., 1:].sum(-1, keepdim=True).clamp_min(1e-12)
    joint = torch.einsum("bcs,bck,bcz->bcskz", shape, p["color"], p["size"]).flatten(2)
    return torch.einsum("bc,bck->bk", w, joint)


def inception_score(probs: Tensor, splits: int = 1) -> float:
    r"""The Inception score :math:`\exp(\mathbb{E}_x \mathrm{KL}(p(y|x) \| p(y)))` of class
    probabilities (e.g. from :func:`class_probabilities`), averaged over ``splits`` chunks.

    Example:
        >>> inception_score(torch.eye(4))
        4.0...
    """
    scores = []
    for chunk in probs.double().chunk(splits):
        py = chunk.mean(0, keepdim=True)
        kl = (chunk * (chunk.clamp_min(1e-12).log() - py.clamp_min(1e-12).log())).sum(-1).mean()
        scores.append(math.exp(kl.item()))
    return float(np.mean(scores))
