r"""The embedded shapes dataset: procedural, seeded, exact many-to-many image-text pairs.

Each item is a 64x64 RGB image of one or two objects (shape, color, size, 3x3 grid cell),
rendered with a jittered, noisy background, per-object color jitter, a mild stripe texture,
position jitter inside the cell, a small rotation and anti-aliased edges, and five captions
sampled from the grammar of :mod:`flowkit.data.grammar` (all true of the image). Ground truth
is exact: :func:`is_true` decides any caption against the item's :class:`Scene` (both defined
in :mod:`flowkit.data.grammar` and re-exported here).

Every item is derived from ``(seed, split, index)`` alone, so any split is reproducible without
shipped files. Image ids are ``split_code * 10**7 + index + 1`` with split codes train 0, val 1,
test 2, hence disjoint across splits. Two items of different splits may still have the same
*content* (the same :class:`Scene`; there are only 432 one-object scenes), drawn with different
jitter and noise: the splits are disjoint in ids and in rendering, not in the scene space.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

# Re-exported from flowkit.data.grammar, where they are defined: ``is_true`` is part of the
# public API of this module (``flowkit.data.shapes.is_true``), and ``Scene`` / ``SceneObject``
# are the type of every item's ``scene``. The rest of the grammar (parse, render, canonical,
# all_true_captions, ...) is imported from flowkit.data.grammar.
from flowkit.data.grammar import COLORS, SHAPES, SIZES, Scene, SceneObject, is_true, sample_captions
from flowkit.data.vocab import tokenize
from flowkit.io import atomic_write_bytes, atomic_write_json, cache_dir

__all__ = [
    # defined here
    "SPLITS",
    "IMAGE_SIZE",
    "DEFAULT_SIZES",
    "random_scene",
    "render_scenes",
    "image_id",
    "ShapesCaptions",
    "export_coco",
    "shapes_export_root",
    "plot_samples",
    # re-exported from flowkit.data.grammar
    "Scene",
    "SceneObject",
    "is_true",
]

IMAGE_SIZE = 64
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_SIZES: dict[str, int] = {"train": 2000, "val": 200, "test": 200}
_ID_STRIDE = 10**7

# Well separated, saturated colors; the background is a low-saturation gray.
_RGB = np.array(
    [
        [0.90, 0.12, 0.12],  # red
        [0.15, 0.75, 0.20],  # green
        [0.15, 0.30, 0.95],  # blue
        [0.95, 0.88, 0.15],  # yellow
        [0.62, 0.20, 0.85],  # purple
        [0.15, 0.85, 0.90],  # cyan
    ],
    dtype=np.float32,
)
_CELL = IMAGE_SIZE / 3
_RADIUS = {"small": (4.5, 5.5), "large": (8.3, 9.3)}
_JITTER = {"small": 3.0, "large": 1.0}


def image_id(split: str, index: int) -> int:
    r"""The image id of item ``index`` of ``split`` (unique across splits).

    Example:
        >>> image_id("val", 0)
        10000001
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= index < _ID_STRIDE - 1:
        raise ValueError(f"index must be in [0, {_ID_STRIDE - 1}), got {index}")
    return SPLITS.index(split) * _ID_STRIDE + index + 1


def random_scene(rng: np.random.Generator, p_two: float = 0.5) -> Scene:
    r"""A random scene: one or two objects with uniform attributes in distinct cells.

    Arguments:
        rng: A numpy random generator.
        p_two: The probability of two objects.

    Example:
        >>> len(random_scene(np.random.default_rng(0)).objects) in (1, 2)
        True
    """
    n = 2 if rng.random() < p_two else 1
    cells = rng.choice(9, size=n, replace=False)
    objs = []
    for cell in cells:
        s, c, z = rng.integers(len(SHAPES)), rng.integers(len(COLORS)), rng.integers(len(SIZES))
        objs.append(SceneObject(SHAPES[s], COLORS[c], SIZES[z], int(cell) // 3, int(cell) % 3))
    return Scene(tuple(objs))


def _style(scene: Scene, rng: np.random.Generator) -> dict[str, np.ndarray]:
    r"""Random rendering parameters of a scene (two object slots; absent slots are masked)."""
    p = {
        "present": np.zeros(2, bool),
        "shape": np.zeros(2, np.int64),
        "cx": np.zeros(2, np.float32),
        "cy": np.zeros(2, np.float32),
        "r": np.ones(2, np.float32),
        "rot": np.zeros(2, np.float32),
        "rgb": np.zeros((2, 3), np.float32),
        "tex": np.zeros((2, 4), np.float32),  # amplitude, frequency, angle, phase
    }
    for k, o in enumerate(scene.objects):
        lo, hi = _RADIUS[o.size]
        j = _JITTER[o.size]
        p["present"][k] = True
        p["shape"][k] = SHAPES.index(o.shape)
        p["cx"][k] = (o.col + 0.5) * _CELL + rng.uniform(-j, j)
        p["cy"][k] = (o.row + 0.5) * _CELL + rng.uniform(-j, j)
        p["r"][k] = rng.uniform(lo, hi)
        p["rot"][k] = rng.uniform(-0.2, 0.2)
        p["rgb"][k] = np.clip(_RGB[COLORS.index(o.color)] + rng.uniform(-0.06, 0.06, 3), 0, 1)
        p["tex"][k] = (rng.uniform(0.03, 0.09), rng.uniform(0.5, 1.2), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi))
    p["bg"] = np.clip(rng.uniform(0.12, 0.40) + rng.uniform(-0.04, 0.04, 3), 0, 1).astype(np.float32)
    p["grad"] = rng.uniform(-0.06, 0.06, 2).astype(np.float32)
    p["noise_seed"] = np.array(rng.integers(2**31))
    return p


def _sd_star(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    # Five-pointed star, one point up: signed distance to the star polygon along the ray.
    R, ri = 1.15 * r, 0.45 * 1.15 * r
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(u, -v)
    sector = 2 * np.pi / 5
    phi = np.abs(np.mod(theta, sector) - sector / 2)  # 0 at the inner vertex .. sector/2 at a point
    phi = sector / 2 - phi  # 0 at a point
    ax, ay = ri * np.cos(sector / 2) - R, ri * np.sin(sector / 2)  # edge from the point (R, 0)
    t = (R * ay) / (np.cos(phi) * ay - np.sin(phi) * ax)
    return 0.6 * (rho - t)


def _sd(shape: int, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    if shape == 0:  # circle
        return np.sqrt(u * u + v * v) - r
    if shape == 1:  # square
        return np.maximum(np.abs(u), np.abs(v)) - 0.82 * r
    if shape == 2:  # triangle, apex up, bounding box centered
        R = 1.15 * r
        v = v + 0.29 * R
        return np.maximum.reduce([v, 0.866 * u - 0.5 * v, -0.866 * u - 0.5 * v]) - 0.5 * R
    return _sd_star(u, v, r)


def render_scenes(styles: Sequence[Mapping[str, np.ndarray]], chunk: int = 256) -> np.ndarray:
    r"""Render scenes from their rendering parameters (vectorised over images).

    Arguments:
        styles: Rendering parameters, one per image (as made by the dataset).
        chunk: Images rendered at once.

    Returns:
        uint8 array of shape ``(N, 64, 64, 3)``.
    """
    n = len(styles)
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5
    for s0 in range(0, n, chunk):
        batch = styles[s0 : s0 + chunk]
        b = len(batch)
        stack = {k: np.stack([p[k] for p in batch]) for k in batch[0]}
        gx = (xs / IMAGE_SIZE - 0.5)[None] * stack["grad"][:, 0, None, None]
        gy = (ys / IMAGE_SIZE - 0.5)[None] * stack["grad"][:, 1, None, None]
        img = stack["bg"][:, None, None, :] + (gx + gy)[..., None]
        noise = np.stack(
            [np.random.default_rng(int(s)).standard_normal((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32) for s in stack["noise_seed"]]
        )
        for slot in range(2):
            for k in range(len(SHAPES)):
                idx = np.nonzero(stack["present"][:, slot] & (stack["shape"][:, slot] == k))[0]
                if len(idx) == 0:
                    continue
                cx, cy = stack["cx"][idx, slot, None, None], stack["cy"][idx, slot, None, None]
                r, rot = stack["r"][idx, slot, None, None], stack["rot"][idx, slot, None, None]
                dx, dy = xs[None] - cx, ys[None] - cy
                c, s = np.cos(rot), np.sin(rot)
                u, v = c * dx + s * dy, -s * dx + c * dy
                alpha = np.clip(0.5 - _sd(k, u, v, r), 0.0, 1.0)[..., None]
                amp, freq, ang, ph = (stack["tex"][idx, slot, i, None, None] for i in range(4))
                tex = 1.0 + amp * np.sin(freq * (np.cos(ang) * dx + np.sin(ang) * dy) + ph)
                color = stack["rgb"][idx, slot, None, None, :] * tex[..., None]
                img[idx] = img[idx] * (1 - alpha) + color * alpha
        img = img + 0.025 * noise
        out[s0 : s0 + b] = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    return out


class ShapesCaptions(Dataset):
    r"""A split of the shapes dataset, generated in memory (2,000 images in about a second).

    Items are dicts with ``image`` (a ``(3, 64, 64)`` float tensor in [0, 1]), ``captions``
    (``captions_per_image`` distinct true captions, like COCO's five), ``scene`` (the exact
    :class:`Scene`) and ``image_id`` (an int, unique across splits, see :func:`image_id`).
    Items hold a :class:`Scene`, which torch's default collate rejects: batch the tensors of
    :func:`flowkit.data.load_caption_data` instead, or write a collate of your own.

    Arguments:
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: The number of images.
        seed: The dataset seed; item ``i`` depends on ``(seed, split, i)`` only.
        captions_per_image: Captions sampled per image.
        p_two: The probability that an image has two objects.
        progress: Show a progress bar while generating.

    Example:
        >>> ds = ShapesCaptions("train", 8, seed=0)
        >>> item = ds[0]
        >>> item["image"].shape, all(is_true(c, item["scene"]) for c in item["captions"])
        (torch.Size([3, 64, 64]), True)
    """

    def __init__(
        self,
        split: str = "train",
        size: int = 2000,
        seed: int = 0,
        captions_per_image: int = 5,
        p_two: float = 0.5,
        progress: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.split, self.size, self.seed = split, int(size), int(seed)
        self.captions_per_image, self.p_two = int(captions_per_image), float(p_two)
        code = SPLITS.index(split)
        self.scenes: list[Scene] = []
        self.captions: list[list[str]] = []
        self.image_ids: list[int] = [image_id(split, i) for i in range(self.size)]
        styles = []
        for i in tqdm(range(self.size), desc=f"shapes/{split}", disable=not progress):
            rng = np.random.default_rng([self.seed, code, i])
            scene = random_scene(rng, self.p_two)
            styles.append(_style(scene, rng))
            self.scenes.append(scene)
            self.captions.append(sample_captions(scene, self.captions_per_image, rng))
        self.pixels: np.ndarray = render_scenes(styles) if styles else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)

    def __len__(self) -> int:
        return self.size

    def image(self, index: int) -> Tensor:
        r"""The ``(3, 64, 64)`` float image of item ``index``."""
        return torch.from_numpy(self.pixels[index]).permute(2, 0, 1).float().div_(255)

    def images(self) -> Tensor:
        r"""All images as one ``(N, 3, 64, 64)`` float tensor."""
        return torch.from_numpy(self.pixels).permute(0, 3, 1, 2).float().div_(255)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        index %= self.size
        return {
            "image": self.image(index),
            "captions": list(self.captions[index]),
            "scene": self.scenes[index],
            "image_id": self.image_ids[index],
        }


# ---------------------------------------------------------------------------------------------
# COCO export.
def _png_bytes(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


_MARKER = ".flowkit_export.json"


def shapes_export_root(sizes: Mapping[str, int] | None = None, seed: int = 0) -> Path:
    r"""The cache folder of the COCO export of the shapes data of ``sizes`` and ``seed``.

    The default data (:data:`DEFAULT_SIZES`, seed 0) lives in ``$FLOWKIT_CACHE/shapes_coco``,
    shared by the examples; other sizes and seeds get their own folder.

    Example:
        >>> shapes_export_root({"train": 120, "val": 8, "test": 8}, seed=3).name
        'shapes_coco_120_8_8_seed3'
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    if sizes == DEFAULT_SIZES and seed == 0:
        return cache_dir() / "shapes_coco"
    return cache_dir() / f"shapes_coco_{sizes['train']}_{sizes['val']}_{sizes['test']}_seed{seed}"


def export_coco(
    root: str | os.PathLike[str],
    splits: Sequence[str] = SPLITS,
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
    captions_per_image: int = 5,
    p_two: float = 0.5,
    features: Callable[[Tensor], Tensor] | None = None,
    progress: bool = False,
) -> Path:
    r"""Write the shapes dataset as COCO-format files.

    Layout under ``root``::

        images/<split>/<image_id>.png               64x64 RGB PNGs (lossless)
        annotations/captions_<split>.json           COCO captions (info, licenses, images, annotations)
        dataset_coco.json                           Karpathy split file (images with split,
                                                    filepath, filename, imgid, cocoid, sentences)
        <split>_ids.txt                             image ids of a split, one per line
        features.npz                                only with ``features``: arrays ``ids``, ``features``

    Every file is written atomically (temporary file + rename) and a marker holding the export
    settings is written last; a second call with the same settings finds the marker and
    returns at once (idempotent), other settings rewrite the files.

    Arguments:
        root: The output folder.
        splits: The splits to write.
        sizes: Images per split (default :data:`DEFAULT_SIZES`).
        seed, captions_per_image, p_two: As in :class:`ShapesCaptions`.
        features: Optional map from a ``(B, 3, 64, 64)`` image batch to ``(B, F)`` features,
            written to ``features.npz`` keyed by image id.
        progress: Show progress bars.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> root = export_coco(tempfile.mkdtemp(), sizes={"train": 20, "val": 5, "test": 5})
        >>> sorted(p.name for p in (root / "annotations").iterdir())
        ['captions_test.json', 'captions_train.json', 'captions_val.json']
    """
    root = Path(root)
    settings = _export_settings(splits, dict(DEFAULT_SIZES if sizes is None else sizes), seed, captions_per_image, p_two, features)
    marker = root / _MARKER
    if _export_is_current(marker, settings):
        return root
    karpathy: list[dict[str, Any]] = []
    all_ids: list[int] = []
    all_feats: list[np.ndarray] = []
    sent_id = 0
    for split in splits:
        ds = ShapesCaptions(split, settings["sizes"][split], seed, captions_per_image, p_two, progress=progress)
        sent_id = _export_split(root, ds, seed, karpathy, sent_id, progress)
        if features is not None and len(ds):
            all_feats += _image_features(ds.pixels, features)
            all_ids.extend(ds.image_ids)
    atomic_write_json(root / "dataset_coco.json", {"dataset": "coco", "images": karpathy}, durable=False)
    if features is not None:
        _write_features(root / "features.npz", all_ids, all_feats)
    atomic_write_json(marker, settings, durable=False)
    return root


def _export_settings(
    splits: Sequence[str],
    sizes: Mapping[str, int],
    seed: int,
    captions_per_image: int,
    p_two: float,
    features: Callable[[Tensor], Tensor] | None,
) -> dict[str, Any]:
    r"""The settings of an export (checked), as its marker file records them."""
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {s!r}")
        if s not in sizes:
            raise ValueError(f"sizes has no entry for split {s!r}: {sizes}")
    return {
        "format": "flowkit.shapes.coco/1",
        "splits": list(splits),
        "sizes": {s: int(sizes[s]) for s in splits},
        "seed": int(seed),
        "captions_per_image": int(captions_per_image),
        "p_two": float(p_two),
        "features": features is not None,
    }


def _export_is_current(marker: Path, settings: Mapping[str, Any]) -> bool:
    r"""Whether the export's marker records ``settings``; a marker of other (or damaged) settings is removed."""
    if not marker.is_file():
        return False
    with contextlib.suppress(json.JSONDecodeError):  # a damaged marker: export again
        if json.loads(marker.read_text()) == settings:
            return True
    marker.unlink()
    return False


def _export_split(root: Path, ds: ShapesCaptions, seed: int, karpathy: list[dict[str, Any]], sent_id: int, progress: bool) -> int:
    r"""Writes a split's PNGs, COCO captions file and id list, appends its images to the
    Karpathy list ``karpathy``; returns the last sentence id used (ids run on over the splits)."""
    split = ds.split
    images, annotations = [], []
    for i in tqdm(range(len(ds)), desc=f"export {split}", disable=not progress):
        iid, fname = ds.image_ids[i], f"{ds.image_ids[i]:012d}.png"
        atomic_write_bytes(root / "images" / split / fname, _png_bytes(ds.pixels[i]), durable=False)
        images.append({"id": iid, "file_name": fname, "width": IMAGE_SIZE, "height": IMAGE_SIZE, "license": 1})
        sentences = []
        for cap in ds.captions[i]:
            sent_id += 1
            annotations.append({"id": sent_id, "image_id": iid, "caption": cap})
            sentences.append({"raw": cap, "tokens": tokenize(cap), "imgid": len(karpathy), "sentid": sent_id})
        karpathy.append(
            {
                "split": split,
                "filepath": f"images/{split}",
                "filename": fname,
                "imgid": len(karpathy),
                "cocoid": iid,
                "sentids": [s["sentid"] for s in sentences],
                "sentences": sentences,
            }
        )
    coco = {
        "info": {"description": f"flowkit shapes ({split}, seed {seed})", "version": "1.0", "year": 2024},
        "licenses": [{"id": 1, "name": "MIT", "url": "https://opensource.org/licenses/MIT"}],
        "images": images,
        "annotations": annotations,
    }
    atomic_write_json(root / "annotations" / f"captions_{split}.json", coco, durable=False)
    atomic_write_bytes(root / f"{split}_ids.txt", "".join(f"{i}\n" for i in ds.image_ids).encode(), durable=False)
    return sent_id


@torch.no_grad()
def _image_features(pixels: np.ndarray, features: Callable[[Tensor], Tensor]) -> list[np.ndarray]:
    r"""``features`` of uint8 ``(N, 64, 64, 3)`` pixels, in float32 blocks of 256 images."""
    blocks = []
    for b0 in range(0, len(pixels), 256):
        x = torch.from_numpy(pixels[b0 : b0 + 256]).permute(0, 3, 1, 2).float().div(255)
        blocks.append(np.asarray(features(x).detach().cpu().numpy(), np.float32))
    return blocks


def _write_features(path: Path, ids: list[int], blocks: list[np.ndarray]) -> None:
    r"""Writes ``features.npz``: arrays ``ids`` (int64) and ``features`` (the blocks stacked)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, ids=np.asarray(ids, np.int64), features=np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32))
    atomic_write_bytes(path, buf.getvalue(), durable=False)


# ---------------------------------------------------------------------------------------------
def plot_samples(
    dataset: ShapesCaptions | None = None,
    n: int = 8,
    captions: int = 3,
    path: str | os.PathLike[str] | None = None,
    columns: int = 4,
) -> Any:
    r"""A matplotlib figure of ``n`` images with some of their captions.

    Arguments:
        dataset: The dataset (default: 8 training images of seed 0).
        n: The number of images shown.
        captions: Captions shown under each image.
        path: If given, the figure is saved there (PNG) and closed.
        columns: Images per row.

    Returns:
        The figure (None when saved to ``path``).

    ``docs/img/shapes_samples.png`` is ``plot_samples(path="docs/img/shapes_samples.png")``.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "samples.png"
        >>> plot_samples(ShapesCaptions("train", 4, seed=0), n=4, path=path)
        >>> path.is_file()
        True
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ds = dataset if dataset is not None else ShapesCaptions("train", n, seed=0)
    n = min(n, len(ds))
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.6 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(ds.pixels[k], interpolation="nearest")
        text = "\n".join(_wrap(c) for c in ds.captions[k][:captions])
        ax.set_title(text, fontsize=7.5, loc="left")
    fig.tight_layout()
    if path is None:
        return fig
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _wrap(text: str, width: int = 40) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
