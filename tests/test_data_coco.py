"""COCO export and loading, the vocabulary, and the loader's errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from flowkit.data import CaptionData, DataError, Vocabulary, load_caption_data, tokenize
from flowkit.data.coco import load_coco, load_features, read_id_list, read_splits, vgg16_fc7
from flowkit.data.shapes import ShapesCaptions, export_coco, is_true

SIZES = {"train": 40, "val": 8, "test": 8}


def _mean_color(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(-1, -2))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return export_coco(tmp_path_factory.mktemp("coco") / "shapes", sizes=SIZES, seed=1, features=_mean_color)


@pytest.fixture(scope="module")
def shapes() -> CaptionData:
    return load_caption_data("shapes", sizes=SIZES, seed=1, vocab_threshold=2)


def copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


# ---------------------------------------------------------------------------------------------
def test_export_layout_and_pycocotools(root: Path) -> None:
    from pycocotools.coco import COCO

    ds = ShapesCaptions("val", SIZES["val"], seed=1)
    coco = COCO(str(root / "annotations" / "captions_val.json"))
    assert sorted(coco.getImgIds()) == sorted(ds.image_ids)
    assert len(coco.getAnnIds()) == 5 * SIZES["val"]
    for iid, caps in zip(ds.image_ids, ds.captions):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[iid]))
        assert [a["caption"] for a in anns] == caps
        img = coco.loadImgs([iid])[0]
        assert (img["width"], img["height"]) == (64, 64)
        assert (root / "images" / "val" / img["file_name"]).is_file()
    data = json.loads((root / "annotations" / "captions_val.json").read_text())
    assert set(data) == {"info", "licenses", "images", "annotations"}
    karpathy = json.loads((root / "dataset_coco.json").read_text())
    assert len(karpathy["images"]) == sum(SIZES.values())
    first = karpathy["images"][0]
    assert {"split", "filepath", "filename", "imgid", "cocoid", "sentences"} <= set(first)
    assert first["sentences"][0]["tokens"] == tokenize(first["sentences"][0]["raw"])
    for s, n in SIZES.items():
        assert len(read_id_list(root / f"{s}_ids.txt")) == n
    with np.load(root / "features.npz") as z:
        assert z["features"].shape == (sum(SIZES.values()), 3)


def test_export_is_idempotent(root: Path, tmp_path: Path) -> None:
    target = tmp_path / "again"
    export_coco(target, sizes={"train": 3, "val": 2, "test": 2})
    ann = target / "annotations" / "captions_train.json"
    mtime = ann.stat().st_mtime_ns
    export_coco(target, sizes={"train": 3, "val": 2, "test": 2})
    assert ann.stat().st_mtime_ns == mtime
    export_coco(target, sizes={"train": 4, "val": 2, "test": 2})
    assert len(json.loads(ann.read_text())["images"]) == 4
    assert not list(target.rglob("*.tmp"))


@pytest.mark.parametrize("scheme", ["karpathy", "coco", "ids"])
def test_coco_source_equals_shapes(root: Path, shapes: CaptionData, scheme: str) -> None:
    data = load_caption_data("coco", root=root, max_len=20, vocab_threshold=2, split_scheme=scheme)
    assert data.vocab == shapes.vocab and data.references == shapes.references
    assert data.train_captions == shapes.train_captions
    assert torch.equal(data.train.captions, shapes.train.captions)
    assert data.image_shape == shapes.image_shape == (3, 64, 64) and data.image_kind == "pixels"
    for a, b in ((data.train, shapes.train), (data.val, shapes.val), (data.test, shapes.test)):
        assert len(a) == len(b)
        for i in range(0, len(a), 7):
            x, y = a[i], b[i]
            assert x["image_id"] == y["image_id"] and torch.equal(x["image"], y["image"])
    assert data.scenes is None and shapes.scenes is not None


def test_caption_data_contract(shapes: CaptionData) -> None:
    assert len(shapes.train) == 5 * SIZES["train"] and len(shapes.val) == SIZES["val"]
    batch = next(iter(DataLoader(shapes.train, batch_size=6, shuffle=True)))
    assert batch["image"].shape == (6, 3, 64, 64) and batch["caption"].shape == (6, 20)
    assert batch["caption"].dtype == torch.long and batch["image_id"].shape == (6,)
    assert (batch["caption"][:, 0] == Vocabulary.start).all()
    val = next(iter(DataLoader(shapes.test, batch_size=4)))
    assert set(val) == {"image", "image_id"} and val["image"].shape == (4, 3, 64, 64)
    for iid, caps in shapes.references["test"].items():
        assert all(is_true(c, shapes.scenes[iid]) for c in caps)
    item = shapes.train[3]
    assert shapes.vocab.decode(item["caption"]) == " ".join(tokenize(shapes.train.raw_captions[3]))


def test_features_path(root: Path) -> None:
    data = load_caption_data("coco", root=root, features=root / "features.npz", feature_dim=3)
    assert data.image_kind == "features" and data.image_shape == (3,)
    pix = load_caption_data("coco", root=root)
    for i in (0, 5):
        assert torch.allclose(data.test[i]["image"], _mean_color(pix.test[i]["image"]), atol=1e-6)
    batch = next(iter(DataLoader(data.train, batch_size=3)))
    assert batch["image"].shape == (3, 3)


def test_npy_features_with_ids_file(root: Path, tmp_path: Path) -> None:
    with np.load(root / "features.npz") as z:
        ids, feats = z["ids"], z["features"]
    np.save(tmp_path / "feats.npy", feats)
    (tmp_path / "feats_ids.txt").write_text("\n".join(map(str, ids)))
    rows, f = load_features(tmp_path / "feats.npy", required_ids=ids.tolist())
    assert np.array_equal(f[rows[int(ids[4])]], feats[4])
    np.save(tmp_path / "lonely.npy", feats)
    with pytest.raises(DataError, match="lonely_ids.txt"):
        load_features(tmp_path / "lonely.npy")


def test_h5_features(root: Path, tmp_path: Path) -> None:
    with np.load(root / "features.npz") as z:
        ids, feats = z["ids"], z["features"]
    try:
        import h5py
    except ImportError:
        (tmp_path / "f.h5").write_bytes(b"not really hdf5")
        with pytest.raises(ImportError, match="h5py"):
            load_features(tmp_path / "f.h5")
        return
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["ids"], f["features"] = ids, feats
    rows, got = load_features(tmp_path / "f.h5")
    assert np.array_equal(got[rows[int(ids[2])]], feats[2])


def test_mrnn_and_filename_lists(root: Path, tmp_path: Path) -> None:
    d = copy(root, tmp_path)
    for s in ("train", "val", "test"):
        ids = read_id_list(d / f"{s}_ids.txt")
        (d / f"mrnn_{s}.txt").write_text("".join(f"COCO_val2014_{i:012d}.jpg\n" for i in ids))
    data = load_caption_data("coco", root=d, split_scheme="mrnn", max_len=20, vocab_threshold=2)
    ref = load_caption_data("coco", root=d, split_scheme="karpathy", max_len=20, vocab_threshold=2)
    assert data.references == ref.references


def test_restval_is_train(root: Path, tmp_path: Path) -> None:
    d = copy(root, tmp_path)
    k = json.loads((d / "dataset_coco.json").read_text())
    k["images"][0]["split"] = "restval"
    (d / "dataset_coco.json").write_text(json.dumps(k))
    splits = read_splits(d)
    assert splits["train"][0].image_id == k["images"][0]["cocoid"]


# ---------------------------------------------------------------------------------------------
# Errors: every one a DataError naming the file and the fix, raised before any training.
def test_error_missing_files(tmp_path: Path) -> None:
    assert issubclass(DataError, ValueError)
    with pytest.raises(DataError, match="needs root="):
        load_caption_data("coco")
    with pytest.raises(DataError, match="data folder not found"):
        load_caption_data("coco", root=tmp_path / "nope")
    with pytest.raises(DataError, match=r"dataset_coco\.json.*root="):
        load_caption_data("coco", root=tmp_path)
    with pytest.raises(DataError, match=r"captions_train\.json.*export_coco"):
        load_caption_data("coco", root=tmp_path, split_scheme="coco")
    with pytest.raises(DataError, match="captions_"):
        load_caption_data("coco", root=tmp_path, split_scheme="ids")
    with pytest.raises(ValueError, match="split_scheme"):
        read_splits(tmp_path, "flickr")


def test_error_malformed_json(root: Path, tmp_path: Path) -> None:
    d = copy(root, tmp_path)
    (d / "dataset_coco.json").write_text('{"images": [\n  {"split": "train",}\n]}')
    with pytest.raises(DataError, match=r"dataset_coco\.json is malformed JSON: .* line 2 column"):
        load_caption_data("coco", root=d)
    (d / "annotations" / "captions_val.json").write_text('{"images": []')
    with pytest.raises(DataError, match=r"captions_val\.json is malformed JSON"):
        load_caption_data("coco", root=d, split_scheme="coco")
    (d / "annotations" / "captions_val.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="'annotations'"):
        load_coco(d / "annotations" / "captions_val.json")


def test_error_images_without_captions(root: Path, tmp_path: Path) -> None:
    d = copy(root, tmp_path)
    path = d / "annotations" / "captions_test.json"
    coco = json.loads(path.read_text())
    dropped = [im["id"] for im in coco["images"][:3]]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] not in dropped]
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=rf"3 of 8 images of split 'test' have no captions .*{dropped[0]}"):
        load_caption_data("coco", root=d, split_scheme="coco")
    k = json.loads((d / "dataset_coco.json").read_text())
    k["images"][1]["sentences"] = []
    (d / "dataset_coco.json").write_text(json.dumps(k))
    with pytest.raises(DataError, match=rf"1 of 40 images of split 'train' have no captions .*{k['images'][1]['cocoid']}"):
        load_caption_data("coco", root=d)
    (d / "test_ids.txt").write_text("12345\n")
    with pytest.raises(DataError, match="12345"):
        load_caption_data("coco", root=d, split_scheme="ids")
    (d / "test_ids.txt").write_text("twelve\n")
    with pytest.raises(DataError, match="line 1"):
        load_caption_data("coco", root=d, split_scheme="ids")


def test_error_features_mismatch(root: Path, tmp_path: Path) -> None:
    with np.load(root / "features.npz") as z:
        ids, feats = z["ids"], z["features"]
    np.savez(tmp_path / "some.npz", ids=ids[5:], features=feats[5:])
    with pytest.raises(DataError, match=r"5 of 56 caption images have no features \(e\.g\. ids \[1, 2"):
        load_caption_data("coco", root=root, features=tmp_path / "some.npz")
    with pytest.raises(DataError, match="wrong feature size: expected 4096, got 3"):
        load_caption_data("coco", root=root, features=root / "features.npz", feature_dim=4096)
    np.savez(tmp_path / "keys.npz", image_ids=ids, features=feats)
    with pytest.raises(DataError, match=r"lacks the arrays \['ids'\]"):
        load_features(tmp_path / "keys.npz")
    with pytest.raises(DataError, match="features file not found"):
        load_caption_data("coco", root=root, features=tmp_path / "missing.npz")
    (tmp_path / "f.csv").write_text("1,2")
    with pytest.raises(DataError, match="unknown format"):
        load_features(tmp_path / "f.csv")


def test_error_missing_image_file(root: Path, tmp_path: Path) -> None:
    d = copy(root, tmp_path)
    victim = sorted((d / "images" / "val").iterdir())[0]
    victim.unlink()
    with pytest.raises(DataError, match=rf"1 image files of split 'val' are missing .*{victim.name}"):
        load_caption_data("coco", root=d)


def test_shapes_rejects_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="export_coco"):
        load_caption_data("shapes", root=tmp_path)


def test_vgg16_needs_torchvision(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match="torchvision that matches your torch.*features="):
        vgg16_fc7()


# ---------------------------------------------------------------------------------------------
# Vocabulary.
def test_tokenize() -> None:
    assert tokenize("Two shapes: a Red circle, and a blue square.") == "two shapes a red circle and a blue square".split()
    assert tokenize("A man's T-shirt isn't  red!?") == ["a", "man", "'s", "t-shirt", "is", "n't", "red"]
    assert tokenize("(hello) -- world ... ;") == ["hello", "world"]


@pytest.mark.skipif(shutil.which("java") is None, reason="PTBTokenizer needs Java")
def test_tokenize_matches_ptb_tokenizer() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    caps = [
        "Two shapes: a red circle and a blue square.",
        "A man's T-shirt isn't red!",
        "A dog, a cat; and a bird -- outside...",
        "People walk down the street in 3 rows?",
        "(a bird)",
    ]
    ptb = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(caps)})
    for i, c in enumerate(caps[:-1]):
        assert " ".join(tokenize(c)) == ptb[i][0], (c, ptb[i][0])
    # the one documented difference: lowercased brackets escape pycocoevalcap's removal list
    assert ptb[len(caps) - 1][0] == "-lrb- a bird -rrb-" and tokenize(caps[-1]) == ["a", "bird"]


def test_vocabulary() -> None:
    caps = ["a red circle", "a red square", "a blue circle", "a red star", "A RED circle."]
    v = Vocabulary.build(caps, threshold=2)
    assert v.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert (v.pad, v.start, v.end, v.unk) == (0, 1, 2, 3)
    assert v.itos[4:] == ["a", "red", "circle"] and len(v) == 7  # by count, threshold 2
    assert Vocabulary.build(caps, threshold=1).itos[4:] == ["a", "red", "circle", "blue", "square", "star"]
    ids = v.encode("a red square", max_len=6)
    assert ids == [1, 4, 5, 3, 2, 0] and v.decode(ids) == "a red <unk>"
    assert v.encode("a red circle a red circle", max_len=5) == [1, 4, 5, 6, 2]  # truncated, keeps <end>
    assert v.decode([1, 4, 0, 5, 2, 6, 6]) == "a red"
    assert v.decode(torch.tensor(v.encode("a red circle", 8))) == "a red circle"
    d = json.loads(json.dumps(v.to_dict()))
    assert Vocabulary.from_dict(d) == v
    with pytest.raises(ValueError):
        Vocabulary.from_dict({"itos": ["a", "b"]})
    with pytest.raises(ValueError):
        v.encode("a", max_len=1)
    assert v.encode_tensor("a red", 4).dtype == torch.long
