"""The embedded shapes dataset: exact captions, grammar, reproducibility, splits."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from flowkit.data.grammar import (
    COLORS,
    SHAPES,
    SIZES,
    Constraints,
    ObjectSpec,
    Phrasing,
    all_true_captions,
    all_true_constraints,
    canonical,
    parse,
    render,
    sample_captions,
)
from flowkit.data.shapes import (
    Scene,
    SceneObject,
    ShapesCaptions,
    image_id,
    is_true,
    plot_samples,
    random_scene,
)


@pytest.fixture(scope="module")
def train() -> ShapesCaptions:
    return ShapesCaptions("train", 300, seed=3)


def obj(shape: str, color: str, size: str, row: int, col: int) -> SceneObject:
    return SceneObject(shape, color, size, row, col)


RED_CIRCLE_TL = obj("circle", "red", "small", 0, 0)
BLUE_SQUARE_TR = obj("square", "blue", "large", 0, 2)
TWO = Scene((RED_CIRCLE_TL, BLUE_SQUARE_TR))
ONE = Scene((obj("triangle", "green", "large", 1, 1),))


def test_items(train: ShapesCaptions) -> None:
    item = train[0]
    assert set(item) == {"image", "captions", "scene", "image_id"}
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    x = train.images()
    assert x.shape == (300, 3, 64, 64) and 0.0 <= x.min() and x.max() <= 1.0
    assert len(item["captions"]) == 5 and isinstance(item["scene"], Scene)
    assert torch.equal(train[-1]["image"], train[299]["image"])
    with pytest.raises(IndexError):
        train[300]
    # not trivially clean: background pixels vary (noise + gradient)
    assert x[:, :, :4, :4].std() > 0.01


def test_every_generated_caption_is_true(train: ShapesCaptions) -> None:
    for scene, caps in zip(train.scenes, train.captions):
        truth = set(all_true_captions(scene))
        for c in caps:
            assert is_true(c, scene), (c, scene)
            assert c in truth, (c, scene)


def test_all_true_captions_are_true_and_round_trip(train: ShapesCaptions) -> None:
    for scene in train.scenes[:40]:
        caps = all_true_captions(scene)
        assert len(caps) >= 100
        for c in caps:
            p = parse(c)
            assert p is not None and p.holds(scene), c
            assert render(p) == c


def test_many_distinct_captions_per_image(train: ShapesCaptions) -> None:
    sampled = np.mean([len(set(c)) for c in train.captions])
    assert sampled >= 4.9
    assert np.mean([len(all_true_captions(s)) for s in train.scenes[:100]]) >= 100
    # one-to-many the other way: a caption fits many images
    assert sum(is_true("a red shape", s) for s in train.scenes) >= 20


def test_captions_discriminate(train: ShapesCaptions) -> None:
    scenes = train.scenes
    for caps in train.captions[:60]:
        for c in caps:
            assert any(not is_true(c, other) for other in scenes), c


def _alternatives(spec: ObjectSpec) -> list[ObjectSpec]:
    out = []
    values = {"shape": SHAPES, "color": COLORS, "size": SIZES, "row": (0, 1, 2), "col": (0, 1, 2)}
    for attr, vals in values.items():
        v = getattr(spec, attr)
        if v is not None:
            out += [dataclasses.replace(spec, **{attr: w}) for w in vals if w != v]
    return out


def test_changing_a_named_attribute_makes_it_false(train: ShapesCaptions) -> None:
    checked = 0
    for scene in train.scenes:
        if len(scene.objects) != 1:
            continue
        for c in all_true_captions(scene)[::7]:
            p = parse(c)
            for spec in _alternatives(p.objects[0]):
                wrong = render(dataclasses.replace(p, objects=(spec,)))
                assert not is_true(wrong, scene), (wrong, scene)
                checked += 1
    assert checked > 500


def test_wrong_relation_is_false() -> None:
    full = [ObjectSpec(o.shape, o.color, o.size) for o in TWO.objects]
    assert Constraints(tuple(full), "left").holds(TWO)
    for rel in ("right", "above", "below"):
        assert not is_true(render(Constraints(tuple(full), rel)), TWO)
    assert is_true(render(Constraints((full[1], full[0]), "right")), TWO)


def test_hand_made_captions() -> None:
    true = [
        "a red circle",
        "A small red circle at the top left.",
        "there is a blue square at the top right",
        "a circle to the left of a blue square",
        "a large blue square to the right of a small shape",
        "two shapes: a red circle and a blue square",
        "a blue square and a red shape",
        "in the top row there is a large shape",
        "a square in the right column",
        "an image of a small red circle",
    ]
    false = [
        "a blue circle",  # wrong color
        "a large red circle",  # wrong size
        "a red circle at the top right",  # wrong cell
        "a red circle in the center",
        "a red circle above a blue square",  # wrong relation (same row)
        "a circle to the right of a blue square",
        "a green star",  # absent object
        "only one shape: a red circle",  # wrong count
        "a red circle and a red circle",  # needs two red circles
        "a circle to the left of a circle",
    ]
    ungrammatical = [
        "",
        "circle",
        "red circle a",
        "a circle red",
        "a shape",
        "an red circle",
        "a red circle at the middle center",
        "there is a red circle and a blue square",
        "a small small circle",
        "the red circle",
        "a red circle to the left of",
    ]
    for c in true:
        assert is_true(c, TWO), c
    for c in false + ungrammatical:
        assert not is_true(c, TWO), c
    for c in ungrammatical:
        assert parse(c) is None, c
    assert is_true("only one shape: a large green triangle in the center", ONE)
    assert not is_true("two shapes: a triangle and a triangle", ONE)
    assert not is_true("a triangle to the left of a shape", ONE)
    assert is_true("in the center there is a triangle", ONE)
    assert is_true("a triangle in the center column", ONE) and not is_true("a triangle in the left column", ONE)


@given(st.text(max_size=60))
def test_is_true_never_raises(text: str) -> None:
    assert is_true(text, TWO) in (True, False)


@given(
    st.lists(
        st.sampled_from(
            "a an the red blue small large circle square shape to left of above and there is at in top center row two shapes only one".split()
        ),
        max_size=12,
    )
)
def test_is_true_on_word_salad(words: list[str]) -> None:
    c = " ".join(words)
    p = parse(c)
    assert is_true(c, TWO) == (p is not None and p.holds(TWO))
    if p is not None:
        assert parse(render(p)) == p


def test_non_string_is_false() -> None:
    assert parse(None) is None  # type: ignore[arg-type]
    assert not is_true(3, TWO)  # type: ignore[arg-type]


def test_canonical_meanings() -> None:
    a = canonical(parse("a square to the right of a red circle"))
    b = canonical(parse("there is a red circle to the left of a square"))
    assert a == b
    assert canonical(parse("a red circle and a square")) == canonical(parse("a square and a red circle"))
    assert canonical(parse("a red circle")) == canonical(parse("an image of a red circle"))
    assert canonical(parse("a red circle")) != canonical(parse("only one shape: a red circle"))
    meanings = all_true_constraints(TWO)
    assert len(meanings) < len(all_true_captions(TWO))
    assert all(canonical(parse(c)) in meanings for c in all_true_captions(TWO))


def test_scene_validation() -> None:
    with pytest.raises(ValueError):
        Scene((RED_CIRCLE_TL, obj("star", "cyan", "large", 0, 0)))
    with pytest.raises(ValueError):
        Scene(())
    with pytest.raises(ValueError):
        obj("hexagon", "red", "small", 0, 0)
    assert Scene((BLUE_SQUARE_TR, RED_CIRCLE_TL)) == TWO  # objects sorted by cell


def test_sample_captions_distinct_and_true() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = random_scene(rng)
        caps = sample_captions(s, 8, rng)
        assert len(caps) == len(set(caps)) == 8
        assert all(is_true(c, s) for c in caps)


def test_reproducible() -> None:
    a, b = ShapesCaptions("val", 20, seed=5), ShapesCaptions("val", 20, seed=5)
    assert np.array_equal(a.pixels, b.pixels) and a.captions == b.captions and a.scenes == b.scenes
    c = ShapesCaptions("val", 20, seed=6)
    assert not np.array_equal(a.pixels, c.pixels) and a.captions != c.captions
    # an item depends on (seed, split, index) only, not on the dataset size
    d = ShapesCaptions("val", 8, seed=5)
    assert np.array_equal(a.pixels[:8], d.pixels) and a.captions[:8] == d.captions


def test_captions_are_stable_across_versions() -> None:
    # Hashes of the captions as made before the phrasings became named constants (commit
    # a6e76b2): the same seeds must keep giving the same captions.
    def digest(ds: ShapesCaptions) -> str:
        return hashlib.sha256(json.dumps(ds.captions).encode()).hexdigest()

    assert digest(ShapesCaptions("train", 200, seed=0)) == "dd66209b22159297710133d9bd86207d51a625a3227b202bd10d17643595b513"
    assert digest(ShapesCaptions("test", 100, seed=3)) == "82e8485a9177833524075dbc6755bd3c62c96d86c32d87c259e38e12e680bc17"


def test_phrasings_are_named_and_round_trip() -> None:
    spec = ObjectSpec(shape="circle", color="red", row=0, col=0)
    square = ObjectSpec(shape="square")
    cases = {
        Phrasing.PLAIN: Constraints((spec,)),
        Phrasing.THERE_IS: Constraints((spec,), template=Phrasing.THERE_IS),
        Phrasing.AN_IMAGE_OF: Constraints((spec,), template=Phrasing.AN_IMAGE_OF),
        Phrasing.POSITION_FIRST: Constraints((spec,), template=Phrasing.POSITION_FIRST),
        Phrasing.ONLY_ONE: Constraints((spec,), count=1, template=Phrasing.ONLY_ONE),
        Phrasing.RELATION: Constraints((spec, square), "left", template=Phrasing.RELATION),
        Phrasing.THERE_IS_RELATION: Constraints((spec, square), "left", template=Phrasing.THERE_IS_RELATION),
        Phrasing.AND: Constraints((spec, square), template=Phrasing.AND),
        Phrasing.TWO_SHAPES: Constraints((spec, square), count=2, template=Phrasing.TWO_SHAPES),
    }
    texts = {render(c) for c in cases.values()}
    assert len(texts) == len(Phrasing)  # every phrasing reads differently
    for phrasing, c in cases.items():
        assert parse(render(c)).template is phrasing
    assert Constraints((spec,), template=3).template is Phrasing.POSITION_FIRST  # ints convert
    with pytest.raises(ValueError):
        Constraints((spec,), template=5)


def test_splits_disjoint() -> None:
    splits = {s: ShapesCaptions(s, 50, seed=0) for s in ("train", "val", "test")}
    ids = [set(d.image_ids) for d in splits.values()]
    for x, y in itertools.combinations(ids, 2):
        assert not x & y
    assert all(len(x) == 50 for x in ids)
    assert image_id("train", 0) == 1 and image_id("test", 4) == 20_000_005
    for (_, x), (_, y) in itertools.combinations(splits.items(), 2):
        assert not np.array_equal(x.pixels, y.pixels)
    with pytest.raises(ValueError):
        ShapesCaptions("restval", 3)


def test_generation_is_fast() -> None:
    t = time.perf_counter()
    ShapesCaptions("train", 500, seed=11)
    assert time.perf_counter() - t < 15.0  # about 0.4 s alone; generous for shared CI machines


def test_plot_samples(tmp_path) -> None:
    path = tmp_path / "img" / "samples.png"
    plot_samples(ShapesCaptions("train", 4, seed=0), n=4, path=path)
    from PIL import Image

    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 100
