"""Fault injection on data: COCO-format folders and features files damaged on the fly. Each
damage gives a DataError naming the file and the fix, or a warning where the data is still
usable, before any training (issue 11)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from flowkit.data import DataError, load_caption_data
from flowkit.data.shapes import export_coco

SIZES = {"train": 6, "val": 2, "test": 2}


def _mean_color(x):
    return x.mean(dim=(-1, -2))


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return export_coco(tmp_path_factory.mktemp("fault") / "coco", sizes=SIZES, seed=3, features=_mean_color)


@pytest.fixture
def root(clean: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "coco"
    shutil.copytree(clean, dst)
    return dst


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _load(root: Path, scheme: str = "coco", **kw):
    return load_caption_data("coco", root=root, split_scheme=scheme, vocab_threshold=1, **kw)


def _ann(root: Path, split: str) -> Path:
    return root / "annotations" / f"captions_{split}.json"


def test_image_in_two_splits_is_refused(root: Path) -> None:
    # Case 5: a test image id also listed in train trained its pixels under train captions.
    test_id = json.loads(_ann(root, "test").read_text())["images"][0]["id"]
    with (root / "train_ids.txt").open("a") as f:
        f.write(f"\n{test_id}\n")
    with pytest.raises(DataError, match=rf"in both 'train' and 'test' \(e.g. ids \[{test_id}\]\).*one split only"):
        _load(root, "ids")

    def move_first_train_image_to(d):
        old = d["images"][0]["id"]
        d["images"][0]["id"] = test_id
        for a in d["annotations"]:
            if a["image_id"] == old:
                a["image_id"] = test_id

    _edit(_ann(root, "train"), move_first_train_image_to)
    with pytest.raises(DataError, match="in both 'train' and 'test'"):
        _load(root, "coco")


@pytest.mark.parametrize("value", [3, None, 2.5, ["a"]])
def test_caption_that_is_not_a_string(root: Path, value) -> None:
    _edit(_ann(root, "train"), lambda d: d["annotations"][2].update(caption=value))
    with pytest.raises(DataError, match=r"captions_train.json: annotation #2 .* captions must be strings"):
        _load(root)


def test_string_image_ids(root: Path) -> None:
    _edit(_ann(root, "val"), lambda d: d["annotations"][0].update(image_id=str(d["annotations"][0]["image_id"])))
    with pytest.raises(
        DataError, match=r"annotation #0 has image id '\d+', a str; COCO image ids are integers \(write \d+ without quotes\)"
    ):
        _load(root)
    _edit(_ann(root, "val"), lambda d: d["images"][0].update(id="x"))
    with pytest.raises(DataError, match="image #0 has image id 'x'"):
        _load(root)


def test_karpathy_caption_that_is_null(root: Path) -> None:
    _edit(root / "dataset_coco.json", lambda d: d["images"][0]["sentences"][1].update(raw=None))
    with pytest.raises(DataError, match="dataset_coco.json: image #0 .* has caption None, a NoneType; captions must be strings"):
        _load(root, "karpathy")


def test_annotations_without_image_entry_are_named(root: Path) -> None:
    _edit(_ann(root, "train"), lambda d: d["annotations"].append({"id": 99999, "image_id": 424242, "caption": "a red circle"}))
    with pytest.warns(UserWarning, match=r"1 annotations refer to 1 image ids without an entry in 'images' \(e.g. \[424242\]\)"):
        _load(root)


def test_empty_and_punctuation_captions(root: Path) -> None:
    _edit(_ann(root, "train"), lambda d: (d["annotations"][0].update(caption=""), d["annotations"][1].update(caption=" ?!. ")))
    with pytest.warns(UserWarning, match="2 of 30 training captions have no word .* left out of training"):
        data = _load(root)
    assert len(data.train) == 28
    _edit(_ann(root, "train"), lambda d: [a.update(caption="...") for a in d["annotations"]])
    with pytest.raises(DataError, match="none of the 30 training captions has a word"):
        _load(root)


def test_truncated_npz_features(root: Path) -> None:
    # Case 8: a raw zipfile.BadZipFile traceback.
    f = root / "features.npz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(DataError, match=r"features file .*features.npz cannot be read \(truncated or corrupt\?\)"):
        _load(root, features=f)
    f.write_bytes(b"")
    with pytest.raises(DataError, match="cannot be read"):
        _load(root, features=f)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_found_before_training(root: Path, bad: float) -> None:
    f = root / "features.npz"
    with np.load(f) as z:
        ids, feats = z["ids"].copy(), z["features"].copy()
    feats[3, 1] = bad
    np.savez(f, ids=ids, features=feats)
    with pytest.raises(DataError, match=rf"features.npz: 1 images have NaN or inf features \(e.g. ids \[{ids[3]}\]\)"):
        _load(root, features=f)
