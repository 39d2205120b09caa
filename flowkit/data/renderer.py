r"""A pre-trained renderer of the shapes data: a per-cell scene reading back to pixels.

Text-to-image through features (the paper's image side is VGG-16 features) needs a way back
from features to pixels. For the shapes data that way is :class:`CellRenderer`: from a
*reading* (per grid cell: empty or which shape, which colour, which size; 13 numbers a cell,
117 in all, what :func:`flowkit.data.features.shapes_trunk_reading` extracts) to a 64x64
image. Every occupied cell is decoded into a 24x24 colour patch with an alpha mask, by one
small network shared by all cells, and the patches are laid over a learned background.

It is trained once on images of data seed 7 (the trunk's, never the data LNFMM is trained or
judged on), from the trunk's own reading of each image, with an L1 error plus the squared
distance of the trunk's features of its output and of the image (a perceptual term, Johnson
et al., 2016), each patch first moved by the whole-pixel offset that fits the image best (the
data jitter objects inside their cells; without the offsets the network draws their blurred
mean), and cached under ``$FLOWKIT_CACHE`` like the trunk: the analogue of a generator
pre-trained on another dataset. It never sees a caption.

The reading of one cell is ``[p(empty), p(shape) x 4, p(colour) x 6, p(size) x 2]``, the
colour and size parts multiplied by ``1 - p(empty)``. Soft readings (decoded by a model) are
made discrete by :func:`discretize_reading` before they are drawn.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowkit.data.classifier import AttributeClassifier, _scenes_from_probs, cell_crops
from flowkit.data.grammar import Scene
from flowkit.io import cache_dir, cached_trained, settings_key

__all__ = [
    "CELL_READING",
    "READING_DIM",
    "CellRenderer",
    "ReadingReader",
    "RendererConfig",
    "discretize_reading",
    "get_cell_renderer",
    "reading_of",
    "render_readings",
    "train_cell_renderer",
]

_CELLS = 9
_SHAPES, _COLORS, _SIZES = 5, 6, 2  # empty + 4 shapes; colours; sizes
#: Numbers per grid cell in a reading.
CELL_READING = _SHAPES + _COLORS + _SIZES
#: Numbers per image in a reading (9 cells).
READING_DIM = _CELLS * CELL_READING
_STARTS = (1, 22, 43)  # the classifier's crop origins in the image padded by 2
_PATCH = 24


def reading_of(probabilities: Mapping[str, Tensor]) -> Tensor:
    r"""The reading ``(B, 117)`` of an :class:`~flowkit.data.classifier.AttributeClassifier`'s
    per-cell probabilities (:meth:`~flowkit.data.classifier.AttributeClassifier.predict`): per
    cell the shape probabilities (index 0 = empty), then the colour and size probabilities
    times the probability that the cell is occupied.

    Example:
        >>> from flowkit.data.classifier import AttributeClassifier
        >>> reading_of(AttributeClassifier().predict(torch.rand(2, 3, 64, 64))).shape
        torch.Size([2, 117])
    """
    occupied = 1.0 - probabilities["shape"][..., :1]
    parts = [probabilities["shape"], probabilities["color"] * occupied, probabilities["size"] * occupied]
    return torch.cat(parts, -1).flatten(1)


def discretize_reading(reading: Tensor, max_objects: int = 2) -> Tensor:
    r"""One-hot scenes ``(B, 117)`` from soft readings ``(B, 117)``.

    A scene gets as many objects as its cells' occupancies :math:`1 - p(\text{empty})` sum to
    (rounded, between 1 and ``max_objects``), in its most occupied cells, each with its most
    likely shape, colour and size. A decoder trained with a squared error returns the mean of
    what it is unsure of (an object spread over the three cells of a row at 0.33 each), so a
    threshold at 0.5 would often draw nothing; the sum still counts the objects (chosen on
    validation captions, ``docs/lnfmm.md``).

    Arguments:
        reading: Readings, soft or one-hot.
        max_objects: The most objects a scene holds (2 in the shapes data).

    Example:
        >>> r = torch.zeros(1, 117)
        >>> r[0, 0::13] = 1.0  # all empty ...
        >>> r[0, 0], r[0, 13], r[0, 26] = 0.5, 0.6, 0.6  # ... but for 0.5 + 0.4 + 0.4: one object
        >>> discretize_reading(r).view(9, 13)[:, 0].tolist()  # in the most occupied cell
        [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    if reading.dim() != 2 or reading.shape[1] != READING_DIM:
        raise ValueError(f"readings must be (batch, {READING_DIM}), got {tuple(reading.shape)}")
    x = reading.reshape(len(reading), _CELLS, CELL_READING)
    occupancy = (1.0 - x[..., 0]).clamp(0.0, 1.0)
    count = occupancy.sum(1).round().clamp(1, max_objects)
    rank = occupancy.argsort(dim=1, descending=True).argsort(dim=1)  # 0 = most occupied
    occupied = rank < count.unsqueeze(1)
    shape = F.one_hot(x[..., 1:_SHAPES].argmax(-1) + 1, _SHAPES).float()
    shape = torch.where(occupied.unsqueeze(-1), shape, F.one_hot(torch.zeros_like(rank), _SHAPES).float())
    mask = occupied.unsqueeze(-1).float()
    color = F.one_hot(x[..., _SHAPES : _SHAPES + _COLORS].argmax(-1), _COLORS).float() * mask
    size = F.one_hot(x[..., _SHAPES + _COLORS :].argmax(-1), _SIZES).float() * mask
    return torch.cat([shape, color, size], -1).flatten(1)


class ReadingReader:
    r"""A scene reader (:class:`~flowkit.data.judges.SceneReader`) of readings, not images: the
    scene a reading spells after :func:`discretize_reading`. It judges what a model decoded
    before anything is drawn.

    Example:
        >>> from flowkit.data.judges import image_caption_accuracy
        >>> r = torch.zeros(2, 117)
        >>> r[:, 0::13] = 1.0
        >>> r[:, 0], r[:, 1], r[:, 5], r[:, 11] = 0.0, 1.0, 1.0, 1.0  # a small red circle, top left
        >>> image_caption_accuracy(r, ["a red circle at the top left", "a blue circle"], ReadingReader())
        0.5
    """

    def read_scenes(self, readings: Tensor) -> list[Scene | None]:
        x = discretize_reading(readings).view(len(readings), _CELLS, CELL_READING)
        return _scenes_from_probs({"shape": x[..., :_SHAPES], "color": x[..., _SHAPES : _SHAPES + _COLORS], "size": x[..., -_SIZES:]})


class CellRenderer(nn.Module):
    r"""Draws one-hot readings ``(B, 117)`` as ``(B, 3, 64, 64)`` images in [0, 1].

    Each occupied cell's 13 numbers go through an MLP to a 6x6 map, two upsampling
    convolutions to a 24x24 patch of colour and alpha; the patches are laid, cell by cell, over
    a learned background colour at the classifier's crop positions (an object lies inside its
    cell's crop). Empty cells draw nothing.

    With ``shift > 0`` each patch can be moved by a whole number of pixels, up to ``shift``
    each way (``offsets``). The data place an object anywhere within 3 pixels of its cell's
    centre, and a network that cannot say where draws the blurred mean of those places, which
    turns small squares into circles and triangles into stars. :func:`train_cell_renderer`
    therefore moves each drawn patch to the offset that fits the image best before the loss
    (a best-of-K loss over the offsets; Li and Malik, 2018, "Implicit Maximum Likelihood
    Estimation"), so the network learns one sharp, centred object and the offset carries the
    place. Drawing leaves the patches centred (random offsets move large objects, which the
    data jitter by 1 pixel only, out of their cell's crop).

    Arguments:
        width: Channels of the last convolution (then 2x and 4x towards the input).
        shift: The largest offset of a patch, in pixels (0: patches stay centred).

    Example:
        >>> r = torch.zeros(2, 117)
        >>> r[:, 0::13] = 1.0  # all empty ...
        >>> r[:, 0], r[:, 1], r[:, 5], r[:, 11] = 0.0, 1.0, 1.0, 1.0  # ... but for a small red circle, top left
        >>> CellRenderer(width=4)(r).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, width: int = 32, shift: int = 0) -> None:
        super().__init__()
        self.width, self.shift = width, shift
        w = width
        self.embed = nn.Sequential(nn.Linear(CELL_READING, 128), nn.ReLU(), nn.Linear(128, 4 * w * 6 * 6), nn.ReLU())
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.Conv2d(4 * w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * w, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 4, 3, padding=1),
        )
        self.background = nn.Parameter(torch.zeros(3))
        self.metrics: dict[str, float] = {}  # filled by train_cell_renderer / get_cell_renderer

    def patches(self, reading: Tensor) -> tuple[Tensor, Tensor]:
        r"""The occupied cells ``(B, 9)`` (bool) and their centred patches' logits ``(N, 4, 24, 24)``
        (colour, then alpha), one per occupied cell in row-major order."""
        cells = reading.reshape(len(reading), _CELLS, CELL_READING)
        occupied = cells[..., 0] < 0.5
        return occupied, self.up(self.embed(cells[occupied]).view(-1, 4 * self.width, 6, 6))

    def place(self, occupied: Tensor, logits: Tensor, offsets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""Each cell's colour ``(B, 9, 3, 24, 24)`` and alpha ``(B, 9, 1, 24, 24)`` in [0, 1], from
        :meth:`patches`, each patch moved by its ``offsets`` row ``(N, 2)`` (down, right; None: 0)."""
        if offsets is not None:
            logits = _moved_logits(logits, offsets)
        layers = logits.new_zeros(*occupied.shape, 4, _PATCH, _PATCH)
        layers[:, :, 3] = -30.0  # alpha ~ 0 where nothing is drawn
        layers = layers.index_put(tuple(occupied.nonzero().t()), logits)
        return torch.sigmoid(layers[:, :, :3]), torch.sigmoid(layers[:, :, 3:])

    def layers(self, reading: Tensor, offsets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""Each cell's colour and alpha (:meth:`place`); ``offsets`` is ``(B, 9, 2)`` or None."""
        occupied, logits = self.patches(reading)
        return self.place(occupied, logits, None if offsets is None else offsets[occupied])

    def compose(self, rgb: Tensor, alpha: Tensor) -> Tensor:
        r"""Lays the cells' patches over the background: ``(B, 3, 64, 64)``."""
        side = 64 + 4  # the classifier's crops are cut from the image padded by 2
        canvas = torch.sigmoid(self.background).view(1, 3, 1, 1).expand(len(rgb), 3, side, side)
        for k, (r, c) in enumerate((r, c) for r in _STARTS for c in _STARTS):
            pad = (c, side - _PATCH - c, r, side - _PATCH - r)
            a = F.pad(alpha[:, k], pad)
            canvas = a * F.pad(rgb[:, k], pad) + (1.0 - a) * canvas
        return canvas[:, :, 2:-2, 2:-2]

    def forward(self, reading: Tensor, offsets: Tensor | None = None) -> Tensor:
        return self.compose(*self.layers(reading, offsets))


def _moved_logits(logits: Tensor, offsets: Tensor) -> Tensor:
    r"""Patch logits ``(N, 4, 24, 24)`` moved by ``offsets``; the uncovered border is transparent."""
    return torch.cat([_moved(logits[:, :3], offsets), _moved(logits[:, 3:] + 30.0, offsets) - 30.0], dim=1)


def _moved(x: Tensor, offsets: Tensor) -> Tensor:
    r"""Patches ``(N, C, 24, 24)`` moved by whole pixels ``offsets`` ``(N, 2)`` (down, right), zero-filled."""
    s = int(offsets.abs().max()) if len(offsets) else 0
    if s == 0:
        return x
    padded = F.pad(x, (s, s, s, s))
    span = torch.arange(_PATCH, device=x.device)
    rows = span[None, :] + s - offsets[:, 0:1]
    cols = span[None, :] + s - offsets[:, 1:2]
    n = torch.arange(len(x), device=x.device)[:, None, None]
    return padded[n, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


@dataclass(frozen=True)
class RendererConfig:
    r"""Settings of :func:`train_cell_renderer` (their hash keys the cache).

    Arguments:
        steps: Training steps (Adam, cosine decay to 0).
        batch_size: Images per step.
        lr: The learning rate.
        width: :class:`CellRenderer`'s width.
        perceptual: Weight of the trunk-feature term beside the L1 error.
        shift: :class:`CellRenderer`'s largest patch offset; in training each patch is moved to
            the offset that fits the image best (0: centred patches, L1 to the blurred mean).
        seed: Data seed of the training images (the trunk's) and of the initialization.
        train_size: Training images.
        trunk_train_size: Training images of the trunk whose readings it draws
            (:func:`flowkit.data.features.shapes_trunk`; smoke runs use a few hundred).
    """

    steps: int = 500
    batch_size: int = 32
    lr: float = 2e-3
    width: int = 32
    perceptual: float = 0.3
    shift: int = 3
    seed: int = 7
    train_size: int = 3000
    trunk_train_size: int = 3000

    def key(self) -> str:
        r"""A short hash of the settings and the renderer version."""
        return settings_key(self, version=2)


def _trunk_reading(trunk: AttributeClassifier, images: Tensor) -> Tensor:
    return discretize_reading(reading_of(trunk.predict(images)))


def _cell_features(body: nn.Module, images: Tensor) -> Tensor:
    return body(cell_crops(images).flatten(0, 1)).reshape(len(images), -1)


@torch.no_grad()
def _best_offsets(renderer: CellRenderer, occupied: Tensor, logits: Tensor, images: Tensor) -> Tensor | None:
    r"""Per occupied cell, the offset in ``[-shift, shift]^2`` whose moved patch, laid over the
    background, is closest (L1) to the image's crop of that cell: the best-of-K choice."""
    s = renderer.shift
    if not s or not len(logits):
        return None
    target = cell_crops(images)[occupied]
    background = torch.sigmoid(renderer.background).view(1, 3, 1, 1)
    candidates = torch.tensor([(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)])
    errors = []
    for offset in candidates:
        moved = torch.sigmoid(_moved_logits(logits, offset.expand(len(logits), 2)))
        rgb, alpha = moved[:, :3], moved[:, 3:]
        errors.append((alpha * rgb + (1 - alpha) * background - target).abs().mean((1, 2, 3)))
    return candidates[torch.stack(errors).argmin(0)]


def train_cell_renderer(config: RendererConfig | None = None, progress: bool = False) -> CellRenderer:
    r"""Trains a :class:`CellRenderer` on shapes images of ``config.seed``, from the trunk's reading.

    The loss is the mean L1 error plus ``config.perceptual`` times the mean squared distance,
    per standardized feature, of the frozen trunk's cell features of the render and of the
    image. The result carries ``metrics``: ``scene`` (the fraction of 500 held-out images whose
    render the trunk reads as the same scene) and ``train_seconds``.

    Arguments:
        config: The settings (default :class:`RendererConfig`).
        progress: Show a progress bar.

    Example (not run as a doctest: it trains the trunk first when it is not cached):

    .. code-block:: python

        g = train_cell_renderer(RendererConfig(steps=20, width=4, train_size=64))
        g.metrics  # {'scene': ..., 'train_seconds': ...}
    """
    from flowkit.data.features import shapes_trunk
    from flowkit.data.shapes import ShapesCaptions

    cfg = config or RendererConfig()
    start = time.perf_counter()
    trunk = shapes_trunk(train_size=cfg.trunk_train_size).eval()
    body = trunk.net[:-1]
    images = ShapesCaptions("train", cfg.train_size, cfg.seed, captions_per_image=1).images().float()
    readings = _trunk_reading(trunk, images)
    with torch.no_grad():
        target = torch.cat([_cell_features(body, images[i : i + 256]) for i in range(0, len(images), 256)])
    scale = target.std(0) + 1e-3
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        renderer = CellRenderer(cfg.width, cfg.shift)
    opt = torch.optim.Adam(renderer.parameters(), cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1))
    for _ in tqdm(range(cfg.steps), desc="cell renderer", disable=not progress):
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
        occupied, logits = renderer.patches(readings[idx])
        offsets = _best_offsets(renderer, occupied, logits, images[idx])
        drawn = renderer.compose(*renderer.place(occupied, logits, offsets))
        loss = F.l1_loss(drawn, images[idx])
        if cfg.perceptual > 0:
            loss = loss + cfg.perceptual * ((_cell_features(body, drawn) - target[idx]) / scale).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    renderer.eval()
    held_out = ShapesCaptions("test", 500, cfg.seed, captions_per_image=1).images().float()
    truth = _trunk_reading(trunk, held_out)
    with torch.no_grad():
        drawn = renderer(truth)
        same = (_trunk_reading(trunk, drawn) == truth).all(1).float().mean().item()
    renderer.metrics = {"scene": same, "train_seconds": time.perf_counter() - start}
    return renderer


def get_cell_renderer(config: RendererConfig | None = None, cache: bool = True, progress: bool = False) -> CellRenderer:
    r"""The renderer of ``config``: loaded from the cache, or trained (a few minutes) and cached.

    The cache file is ``cache_dir() / "cell_renderer-<hash of config>.pt"``, written atomically
    and read with ``torch.load(weights_only=True)``.

    Arguments:
        config: The settings (default :class:`RendererConfig`).
        cache: Read and write the cache.
        progress: Show a progress bar while training.
    """
    cfg = config or RendererConfig()
    return cached_trained(
        cache_dir() / f"cell_renderer-{cfg.key()}.pt",
        cfg,
        lambda stored: CellRenderer(int(stored["width"]), int(stored.get("shift", 0))),
        lambda: train_cell_renderer(cfg, progress=progress),
        cache,
    )


@torch.no_grad()
def render_readings(readings: Tensor, renderer: CellRenderer | None = None, batch_size: int = 256) -> Tensor:
    r"""Draws readings ``(..., 117)``, soft or one-hot, as images ``(..., 3, 64, 64)``.

    Each reading is first made discrete (:func:`discretize_reading`).

    Arguments:
        readings: Readings, with any leading shape (``(captions, samples, 117)`` from
            :func:`flowkit.evaluation.sample_images_for_captions`).
        renderer: The renderer (default :func:`get_cell_renderer`).
        batch_size: Readings per call.

    Example:
        >>> render_readings(torch.rand(2, 3, 117), CellRenderer(width=4).eval()).shape
        torch.Size([2, 3, 3, 64, 64])
    """
    if readings.shape[-1] != READING_DIM:
        raise ValueError(f"readings must end in {READING_DIM} numbers (9 cells x 13), got shape {tuple(readings.shape)}")
    g = (renderer or get_cell_renderer()).eval()
    flat = discretize_reading(readings.reshape(-1, READING_DIM).float())
    chunks = [flat[i : i + batch_size] for i in range(0, len(flat), batch_size)]
    images = torch.cat([g(c) for c in chunks]) if len(flat) else flat.new_zeros(0, 3, 64, 64)
    return images.reshape(*readings.shape[:-1], 3, 64, 64)
