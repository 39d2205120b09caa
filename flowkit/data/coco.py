r"""Reading COCO-format caption data: annotations, split files, image files and features.

Accepted layouts under a ``root`` folder (the one :func:`flowkit.data.shapes.export_coco`
writes has all of them):

* ``split_scheme="karpathy"``: ``root/dataset_coco.json``, Karpathy's split file: ``images``
  with ``split`` (``train``, ``restval`` -> train, ``val``, ``test``), ``filepath``, ``filename``,
  ``cocoid`` and ``sentences`` (``raw``). Image files are ``root/<filepath>/<filename>``.
* ``split_scheme="coco"``: one COCO captions file per split, ``root/annotations/captions_<split>.json``
  (read with pycocotools), images in ``root/images/<split>/`` or ``root/<split>/``.
* ``split_scheme="ids"``: id-list files ``root/<split>_ids.txt`` or ``root/coco_<split>.txt``
  (one image per line: an integer id, or a COCO file name such as
  ``COCO_val2014_000000391895.jpg`` whose trailing digits are the id, as in the
  arctic-captions ``coco_test.txt`` files); the captions come from every
  ``root/annotations/captions_*.json``, images from ``root/images/<name>/``, ``root/<name>/``
  with ``<name>`` the ``*`` of the annotation file (``train2014``, ...).
* ``split_scheme="mrnn"``: the m-RNN split (Mao et al.: 118,286 train / 4,000 val / 1,000
  test images) as id lists ``root/mrnn_<split>.txt``, same line format as ``"ids"``. The m-RNN
  release ships pickled ``.npy`` lists; flowkit never unpickles data, convert them once with
  ``"\n".join(str(d["id"]) for d in np.load(f, allow_pickle=True))``.

Any file can be named explicitly with ``split_files={"train": path, ...}``. Features (instead
of pixels) come from ``.npy`` (a ``(N, F)`` array, ids in ``<stem>_ids.txt`` or
``<file>.ids.txt`` beside it), ``.npz`` (arrays ``ids`` and ``features``) or ``.h5``/``.hdf5``
(datasets ``ids`` and ``features``, or one dataset per image id; needs ``h5py``).

Every problem is reported as a :class:`~flowkit.data.errors.DataError` before training:
missing files, malformed JSON (file, line, column), images without captions, features missing
for some caption images, features of the wrong size.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowkit.data.errors import DataError

__all__ = [
    "DataError",
    "ImageRecord",
    "SPLIT_SCHEMES",
    "read_json",
    "load_coco",
    "read_id_list",
    "read_splits",
    "load_features",
    "check_disjoint",
    "load_image",
    "pil_to_tensor",
    "vgg16_fc7",
]

SPLIT_SCHEMES: tuple[str, ...] = ("karpathy", "coco", "ids", "mrnn")
_SPLITS = ("train", "val", "test")
_EXAMPLES = 5


@dataclass
class ImageRecord:
    r"""One image of a split: its id, its file (None when unknown) and its captions."""

    image_id: int
    path: Path | None
    captions: list[str] = field(default_factory=list)


def _missing(path: Path, what: str, hint: str) -> DataError:
    return DataError(f"{what} not found: {path}" + (f". {hint}" if hint else ""))


def read_json(path: str | os.PathLike[str], what: str = "JSON file", hint: str = "") -> Any:
    r"""Load a JSON file; a missing file or malformed JSON raises :class:`DataError`.

    Arguments:
        path: The file.
        what: What the file is, for the message.
        hint: What to pass instead, for the message.

    Example:
        >>> read_json("/nonexistent.json", "captions file")
        Traceback (most recent call last):
        ...
        flowkit.data.errors.DataError: captions file not found: /nonexistent.json
    """
    path = Path(path)
    if not path.is_file():
        raise _missing(path, what, hint)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{what} {path} is malformed JSON: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path} is not UTF-8 text: {e}") from e


def load_coco(path: str | os.PathLike[str]) -> Any:
    r"""A ``pycocotools.coco.COCO`` index of a captions file, with clear errors.

    The JSON is parsed first (so malformed files name their line and column), then checked
    for the keys a captions file needs, then indexed by pycocotools (quietly).

    Arguments:
        path: A COCO captions file (``captions_<split>.json``).

    Example:
        >>> import tempfile
        >>> from flowkit.data.shapes import export_coco
        >>> root = export_coco(tempfile.mkdtemp(), splits=["val"], sizes={"val": 4})
        >>> coco = load_coco(root / "annotations" / "captions_val.json")
        >>> len(coco.getAnnIds())  # five captions per image
        20
    """
    try:
        from pycocotools.coco import COCO
    except ImportError as e:  # pragma: no cover - pycocotools is in the 'coco' extra
        raise ImportError("reading COCO files needs pycocotools: pip install 'flowkit[coco]'") from e
    path = Path(path)
    data = read_json(
        path,
        "COCO captions file",
        "Pass root= a folder with annotations/captions_<split>.json (e.g. one written by flowkit.data.shapes.export_coco).",
    )
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"COCO captions file {path} needs the keys 'images' and 'annotations', got {keys}")
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im:
            raise DataError(f"COCO captions file {path}: image #{k} has no 'id': {im!r}")
        _check_id(im["id"], path, f"image #{k}")
    for k, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or not {"id", "image_id", "caption"} <= set(a):
            raise DataError(f"COCO captions file {path}: annotation #{k} needs 'id', 'image_id' and 'caption', got {a!r}")
        _check_id(a["image_id"], path, f"annotation #{k}")
        if not isinstance(a["caption"], str):
            raise DataError(
                f"COCO captions file {path}: annotation #{k} (image {a['image_id']}) has caption {a['caption']!r}, "
                f"a {type(a['caption']).__name__}; captions must be strings: fix or remove that annotation"
            )
    _warn_orphans(data, path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_id(value: Any, path: Path, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        fix = f" (write {value.strip()} without quotes)" if isinstance(value, str) and value.strip().isdigit() else ""
        raise DataError(
            f"COCO captions file {path}: {where} has image id {value!r}, a {type(value).__name__}; COCO image ids are integers{fix}"
        )


def _warn_orphans(data: Mapping[str, Any], path: Path) -> None:
    # Captions of an image id without an image entry cannot be used: say so instead of
    # dropping them silently.
    known = {im["id"] for im in data["images"]}
    orphans = sorted({a["image_id"] for a in data["annotations"]} - known)
    if orphans:
        n = sum(a["image_id"] not in known for a in data["annotations"])
        warnings.warn(
            f"COCO captions file {path}: {n} annotations refer to {len(orphans)} image ids without an entry in "
            f"'images' (e.g. {orphans[:_EXAMPLES]}); they are ignored. Add the images or remove the annotations",
            stacklevel=3,
        )


def check_disjoint(splits: Mapping[str, Sequence[ImageRecord]], source: Path) -> None:
    r"""Raises :class:`DataError` when an image id is in two splits (test would leak into training)."""
    seen: dict[int, str] = {}
    shared: dict[tuple[str, str], list[int]] = {}
    for s in _SPLITS:
        for r in splits.get(s, []):
            first = seen.setdefault(r.image_id, s)
            if first != s:
                shared.setdefault((first, s), []).append(r.image_id)
    if shared:
        parts = "; ".join(f"{len(v)} in both {a!r} and {b!r} (e.g. ids {v[:_EXAMPLES]})" for (a, b), v in shared.items())
        raise DataError(f"image ids in two splits of {source}: {parts}. Each image must be in one split only: fix the split files")


_TRAILING_INT = re.compile(r"(\d+)(?:\.[A-Za-z0-9]+)?\s*$")


def read_id_list(path: str | os.PathLike[str]) -> list[int]:
    r"""Image ids of an id-list file: one integer id or one COCO file name per line.

    Arguments:
        path: The file; blank lines and lines starting with ``#`` are skipped.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "coco_test.txt"
        >>> _ = p.write_text("COCO_val2014_000000391895.jpg\n42\n")
        >>> read_id_list(p)
        [391895, 42]
    """
    path = Path(path)
    if not path.is_file():
        raise _missing(path, "id-list file", "Pass split_files={split: path} or write one image id (or COCO file name) per line.")
    ids = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _TRAILING_INT.search(line.split()[0])
        if m is None:
            raise DataError(f"id-list file {path}, line {n}: {line!r} is neither an image id nor a COCO file name")
        ids.append(int(m.group(1)))
    return ids


def _check_captions(records: Sequence[ImageRecord], split: str, source: Path) -> None:
    bad = [r.image_id for r in records if not r.captions]
    if bad:
        raise DataError(
            f"{len(bad)} of {len(records)} images of split {split!r} have no captions in {source} "
            f"(e.g. image ids {bad[:_EXAMPLES]}); remove them from the split or add their captions"
        )


def _karpathy(root: Path, path: Path) -> dict[str, list[ImageRecord]]:
    data = read_json(path, "Karpathy split file", "Pass root= a folder with dataset_coco.json, or split_scheme='coco'/'ids'.")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"Karpathy split file {path} needs a list 'images'")
    out: dict[str, list[ImageRecord]] = {s: [] for s in _SPLITS}
    for k, im in enumerate(data["images"]):
        try:
            split = {"restval": "train"}.get(im["split"], im["split"])
            iid = int(im.get("cocoid", im.get("imgid")))
            caps = [s["raw"] for s in im.get("sentences", [])]
            bad = [c for c in caps if not isinstance(c, str)]
            if bad:
                raise DataError(
                    f"Karpathy split file {path}: image #{k} (cocoid {iid}) has caption {bad[0]!r}, a {type(bad[0]).__name__}; captions must be strings"
                )
            file = root / im.get("filepath", "") / im["filename"]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"Karpathy split file {path}: image #{k} lacks {e} (needs split, filename, cocoid, sentences[].raw)") from e
        if split in out:
            out[split].append(ImageRecord(iid, file, caps))
    return out


def _image_dir(root: Path, name: str) -> Path:
    for d in (root / "images" / name, root / name, root / "images"):
        if d.is_dir():
            return d
    return root / "images" / name


def _coco_records(coco: Any, image_dir: Path, ids: Sequence[int] | None = None) -> list[ImageRecord]:
    ids = sorted(coco.imgs) if ids is None else ids
    out = []
    for iid in ids:
        im = coco.imgs.get(iid)
        caps = [coco.anns[a]["caption"] for a in coco.getAnnIds(imgIds=[iid])] if im is not None else []
        path = image_dir / im["file_name"] if im is not None and "file_name" in im else None
        out.append(ImageRecord(int(iid), path, caps))
    return out


def read_splits(
    root: str | os.PathLike[str],
    split_scheme: str = "karpathy",
    split_files: Mapping[str, str | os.PathLike[str]] | None = None,
) -> dict[str, list[ImageRecord]]:
    r"""The train/val/test images of a COCO-format folder with their captions.

    Arguments:
        root: The data folder (see the module docstring for the layouts).
        split_scheme: ``"karpathy"``, ``"coco"``, ``"ids"`` or ``"mrnn"``.
        split_files: Optional explicit files: ``{"karpathy": path}`` for the Karpathy file,
            ``{split: path}`` for per-split annotation files (``"coco"``) or id lists
            (``"ids"``, ``"mrnn"``).

    Returns:
        ``{split: [ImageRecord, ...]}``, each split checked to have captions for every image.

    Example:
        >>> import tempfile
        >>> from flowkit.data.shapes import export_coco
        >>> splits = read_splits(export_coco(tempfile.mkdtemp(), sizes={"train": 4, "val": 2, "test": 2}))
        >>> [len(splits[s]) for s in ("train", "val", "test")]
        [4, 2, 2]
    """
    root = Path(root)
    files = {k: Path(v) for k, v in (split_files or {}).items()}
    if not root.is_dir():
        raise _missing(root, "data folder", "Pass root= a COCO-format folder, e.g. one written by flowkit.data.shapes.export_coco(root).")
    if split_scheme == "karpathy":
        path = files.get("karpathy", root / "dataset_coco.json")
        out = _karpathy(root, path)
        source = path
        for s in _SPLITS:
            _check_captions(out[s], s, source)
        check_disjoint(out, source)
        return out
    if split_scheme == "coco":
        out = {}
        for s in _SPLITS:
            path = files.get(s, root / "annotations" / f"captions_{s}.json")
            out[s] = _coco_records(load_coco(path), _image_dir(root, s))
            _check_captions(out[s], s, path)
        check_disjoint(out, root)
        return out
    if split_scheme in ("ids", "mrnn"):
        ann_files = sorted((root / "annotations").glob("captions_*.json"))
        if not ann_files:
            raise _missing(
                root / "annotations" / "captions_*.json",
                "COCO captions files",
                "The 'ids'/'mrnn' schemes read captions from every annotations/captions_*.json under root.",
            )
        records: dict[int, ImageRecord] = {}
        for f in ann_files:
            coco = load_coco(f)
            for r in _coco_records(coco, _image_dir(root, f.stem[len("captions_") :])):
                if r.image_id in records:
                    records[r.image_id].captions.extend(r.captions)
                else:
                    records[r.image_id] = r
        out = {}
        for s in _SPLITS:
            if s in files:
                path = files[s]
            elif split_scheme == "mrnn":
                path = root / f"mrnn_{s}.txt"
            else:
                path = root / f"{s}_ids.txt"
                if not path.is_file() and (root / f"coco_{s}.txt").is_file():
                    path = root / f"coco_{s}.txt"
            ids = read_id_list(path)
            out[s] = [records.get(i, ImageRecord(i, None, [])) for i in ids]
            _check_captions(out[s], s, path)
        check_disjoint(out, root)
        return out
    raise ValueError(f"split_scheme must be one of {SPLIT_SCHEMES}, got {split_scheme!r}")


# ---------------------------------------------------------------------------------------------
# Features.
def _npy_ids(path: Path) -> Path:
    for p in (path.with_name(path.stem + "_ids.txt"), path.with_name(path.name + ".ids.txt")):
        if p.is_file():
            return p
    raise _missing(
        path.with_name(path.stem + "_ids.txt"),
        f"ids file of the features {path}",
        "A .npy features file needs its image ids, one per row, in <stem>_ids.txt (or use .npz with arrays 'ids' and 'features').",
    )


def load_features(
    path: str | os.PathLike[str],
    required_ids: Sequence[int] | None = None,
    expected_dim: int | None = None,
) -> tuple[dict[int, int], np.ndarray]:
    r"""Image features keyed by image id, checked against the images that need them.

    Arguments:
        path: A ``.npy`` (+ ids file), ``.npz`` or ``.h5`` features file (see the module doc).
        required_ids: Image ids that must have features (e.g. every caption image).
        expected_dim: The feature size the model expects, if known.

    Returns:
        ``(row_of_id, features)`` with ``features`` a float32 ``(N, F)`` array.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "features.npz"
        >>> np.savez(path, ids=np.array([1, 2, 3]), features=np.zeros((3, 4), np.float32))
        >>> rows, feats = load_features(path, required_ids=[1, 2], expected_dim=4)
        >>> rows[2], feats.shape
        (1, (3, 4))
    """
    path = Path(path)
    hint = "Pass features= a .npy (+ <stem>_ids.txt), .npz (ids, features) or .h5 file keyed by image id."
    if not path.is_file():
        raise _missing(path, "features file", hint)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            feats = np.load(path, allow_pickle=False)
            ids = np.asarray(read_id_list(_npy_ids(path)), np.int64)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("ids", "features") if k not in z.files]
                if missing:
                    raise DataError(f"features file {path} lacks the arrays {missing} (has {z.files})")
                ids, feats = np.asarray(z["ids"]).astype(np.int64), np.asarray(z["features"])
        elif suffix in (".h5", ".hdf5"):
            ids, feats = _load_h5(path)
        else:
            raise DataError(f"features file {path}: unknown format {suffix!r}. {hint}")
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"features file {path} cannot be read (truncated or corrupt?): {type(e).__name__}: {e}; write it again") from e
    feats = np.asarray(feats, np.float32)
    if feats.ndim != 2:
        raise DataError(f"features file {path}: expected a 2-d (images, features) array, got shape {feats.shape}")
    if len(ids) != len(feats):
        raise DataError(f"features file {path}: {len(ids)} ids but {len(feats)} feature rows")
    if expected_dim is not None and feats.shape[1] != expected_dim:
        raise DataError(f"features file {path}: wrong feature size: expected {expected_dim}, got {feats.shape[1]}")
    rows = {int(i): k for k, i in enumerate(ids.tolist())}
    if len(rows) != len(ids):
        raise DataError(f"features file {path}: {len(ids) - len(rows)} duplicate image ids")
    _check_finite_rows(path, feats, rows, required_ids)
    if required_ids is not None:
        lacking = [i for i in required_ids if i not in rows]
        if lacking:
            raise DataError(
                f"features file {path} does not match the captions: {len(lacking)} of {len(required_ids)} caption "
                f"images have no features (e.g. ids {lacking[:_EXAMPLES]}; the file has {len(rows)} ids, e.g. {list(rows)[:_EXAMPLES]})"
            )
    return rows, feats


def _check_finite_rows(path: Path, feats: np.ndarray, rows: Mapping[int, int], required_ids: Sequence[int] | None) -> None:
    # NaN or inf in a row that training will read: found now, not when a batch reaches it.
    bad_rows = np.flatnonzero(~np.isfinite(feats).all(axis=1))
    if bad_rows.size == 0:
        return
    ids = {k: i for i, k in rows.items()}
    needed = None if required_ids is None else set(required_ids)
    bad = [ids[int(k)] for k in bad_rows if int(k) in ids and (needed is None or ids[int(k)] in needed)]
    if bad:
        raise DataError(
            f"features file {path}: {len(bad)} images have NaN or inf features (e.g. ids {bad[:_EXAMPLES]}); "
            f"recompute their features or remove those images from the splits"
        )


def _load_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        import h5py
    except ImportError as e:
        raise ImportError(f"reading {path} needs h5py: pip install h5py (or save the features as .npz)") from e
    with h5py.File(path, "r") as f:
        if "ids" in f and "features" in f:
            return np.asarray(f["ids"]).astype(np.int64), np.asarray(f["features"])
        keys = [k for k in f.keys() if k.isdigit()]
        if not keys:
            raise DataError(f"features file {path} needs datasets 'ids' and 'features', or one dataset per image id")
        return np.asarray([int(k) for k in keys], np.int64), np.stack([np.asarray(f[k]).reshape(-1) for k in keys])


# ---------------------------------------------------------------------------------------------
# Images.
def load_image(path: str | os.PathLike[str], size: int | None = 64) -> np.ndarray:
    r"""An image file as a uint8 ``(H, W, 3)`` RGB array, resized to ``size x size`` if needed.

    Arguments:
        path: The image file.
        size: The side length (bilinear resize when it differs); None keeps the file's size.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError as e:
        raise _missing(Path(path), "image file", "Check root= and the image paths of the split file.") from e
    except OSError as e:
        raise DataError(f"image file {path} cannot be read: {e}") from e


def pil_to_tensor(pixels: np.ndarray) -> Tensor:
    r"""A uint8 ``(H, W, 3)`` array (or PIL image) as a float ``(3, H, W)`` tensor in [0, 1]."""
    arr = np.asarray(pixels, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)


def vgg16_fc7(device: str | torch.device = "cpu") -> Callable[[Tensor], Tensor]:
    r"""A function mapping ``(B, 3, H, W)`` images in [0, 1] to VGG-16 fc7 features ``(B, 4096)``.

    Needs a working torchvision with downloadable (or cached) ImageNet weights; imported
    lazily, so the rest of flowkit works without it.

    Arguments:
        device: Where the network runs.
    """
    try:
        import torchvision
    except Exception as e:  # a CUDA torchvision beside a CPU torch fails with a RuntimeError
        raise ImportError(
            "VGG-16 features need a torchvision that matches your torch "
            f"(import failed: {type(e).__name__}: {e}). Install the matching build, or pass "
            "precomputed features with features=<.npy/.npz/.h5>, or train on pixels."
        ) from e
    net = torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1).eval().to(device)
    head = torch.nn.Sequential(*list(net.classifier.children())[:5])  # fc6-relu-drop-fc7-relu
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def extract(images: Tensor) -> Tensor:
        x = torch.nn.functional.interpolate(images.to(device), size=(224, 224), mode="bilinear", align_corners=False)
        x = net.avgpool(net.features((x - mean) / std)).flatten(1)
        return head(x)

    return extract
