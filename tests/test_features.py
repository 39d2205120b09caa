"""Pre-extracted image features: extraction from a COCO-format folder into a cached .npz keyed
by image id, read back by load_caption_data; the shapes trunk's extractor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowkit.data import load_caption_data
from flowkit.data.coco import load_features
from flowkit.data.features import _TrunkFeatures, extract_features, shapes_trunk
from flowkit.data.judges import AttributeClassifier, ClassifierConfig
from flowkit.data.shapes import ShapesCaptions, export_coco

SIZES = {"train": 12, "val": 3, "test": 3}


class MeanColour:
    r"""A stand-in extractor: the mean colour of each image, counting its calls."""

    key = "mean-colour-v1"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return images.mean(dim=(2, 3))


def test_extract_features_writes_once_and_loads_by_id(tmp_path):
    root = export_coco(tmp_path / "coco", sizes=SIZES, seed=3)
    extractor = MeanColour()
    path = extract_features(root, extractor, name="rgb", batch_size=5)
    assert path.parent == root / "features" and path.name.startswith("rgb-") and path.suffix == ".npz"
    calls = extractor.calls
    assert calls == 4  # 18 images in batches of 5
    assert extract_features(root, extractor, name="rgb") == path and extractor.calls == calls  # cached
    rows, feats = load_features(path)
    # the features are those of the exported pixels, keyed by the right ids
    for split in ("train", "test"):
        ds = ShapesCaptions(split, SIZES[split], 3)
        for i, iid in enumerate(ds.image_ids):
            expected = ds.pixels[i].reshape(-1, 3).mean(0) / 255.0
            np.testing.assert_allclose(feats[rows[iid]], expected, atol=2e-3)
    data = load_caption_data("coco", root=root, features=path, split_scheme="coco")
    assert data.image_kind == "features" and data.image_shape == (3,)
    assert not list((root / "features").glob(".*tmp*"))  # no temp files left behind


def test_extract_features_keys_the_file_by_extractor(tmp_path):
    root = export_coco(tmp_path / "coco", sizes=SIZES, seed=3)
    a = extract_features(root, MeanColour(), name="f")
    other = MeanColour()
    other.key = "another-extractor"
    assert extract_features(root, other, name="f") != a


def test_extract_features_rejects_bad_output(tmp_path):
    root = export_coco(tmp_path / "coco", sizes=SIZES, seed=3)
    with pytest.raises(Exception, match="NaN|shape"):
        extract_features(root, lambda x: torch.full((len(x), 2), float("nan")), name="bad")
    with pytest.raises(ValueError, match=".npz"):
        extract_features(root, MeanColour(), out=tmp_path / "f.npy")


def test_trunk_features_shape_and_seed_guard():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        extract = _TrunkFeatures(AttributeClassifier())
    out = extract(torch.rand(3, 3, 64, 64))
    assert out.shape == (3, 576) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="64, 64"):
        extract(torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match="judges"):
        shapes_trunk(seed=ClassifierConfig().seed)
