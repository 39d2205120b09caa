"""The shapes trunk's reading and the cell renderer that draws it (text-to-image through features)."""

from __future__ import annotations

import pytest
import torch

from flowkit.data import features
from flowkit.data.classifier import AttributeClassifier, ClassifierConfig, get_attribute_classifier
from flowkit.data.features import _TrunkFeatures, _TrunkReading, load_shapes_coco
from flowkit.data.renderer import (
    CELL_READING,
    READING_DIM,
    CellRenderer,
    RendererConfig,
    _best_offsets,
    discretize_reading,
    get_cell_renderer,
    reading_of,
    render_readings,
)


def _empty(batch: int = 1) -> torch.Tensor:
    r = torch.zeros(batch, READING_DIM)
    r[:, 0::CELL_READING] = 1.0
    return r


def _cells(r: torch.Tensor) -> torch.Tensor:
    return r.view(len(r), 9, CELL_READING)


def test_reading_is_probabilities_scaled_by_occupancy():
    torch.manual_seed(0)
    logits = torch.randn(4, 9, 13)
    groups = {"shape": logits[..., :5].softmax(-1), "color": logits[..., 5:11].softmax(-1), "size": logits[..., 11:].softmax(-1)}
    r = _cells(reading_of(groups))
    occupied = 1 - r[..., 0]
    torch.testing.assert_close(r[..., :5].sum(-1), torch.ones(4, 9))
    torch.testing.assert_close(r[..., 5:11].sum(-1), occupied)
    torch.testing.assert_close(r[..., 11:].sum(-1), occupied)


def test_discretize_counts_objects_by_the_summed_occupancy():
    r = _empty(3)
    c = _cells(r)
    c[0, 4, 0] = 0.2  # one confident object in the centre
    c[1, [0, 1, 2], 0] = 0.67  # one object, unsure in which top cell: 3 x 0.33 -> 1 object
    c[1, 1, 0] = 0.6
    c[2, [3, 8], 0] = 0.2  # two objects (0.8 + 0.8)
    c[:, :, 1 + 2] = 0.4  # shape 3 (star) everywhere it is read
    c[:, :, 5 + 4] = 0.9  # colour 4
    c[:, :, 12] = 0.5  # size 1
    d = _cells(discretize_reading(r))
    assert (1 - d[..., 0]).sum(1).tolist() == [1.0, 1.0, 2.0]
    assert d[0, 4, 0] == 0 and d[1, 1, 0] == 0 and d[2, 3, 0] == d[2, 8, 0] == 0
    occupied = d[..., 0] == 0
    assert (d[occupied][:, 3] == 1).all() and (d[occupied][:, 9] == 1).all() and (d[occupied][:, 12] == 1).all()
    assert (d[~occupied][:, 1:] == 0).all()  # empty cells: no colour, no size
    assert ((d[..., :5].sum(-1)) == 1).all()
    # at least one object, at most two
    assert (1 - _cells(discretize_reading(_empty()))[..., 0]).sum() == 1
    assert (1 - _cells(discretize_reading(torch.zeros(1, READING_DIM)))[..., 0]).sum() == 2
    with pytest.raises(ValueError, match="readings must be"):
        discretize_reading(torch.zeros(2, 100))


def test_renderer_draws_only_the_background_for_empty_cells_and_trains():
    torch.manual_seed(0)
    g = CellRenderer(width=4)
    blank = g(_empty(2))
    assert blank.shape == (2, 3, 64, 64)
    torch.testing.assert_close(blank, torch.sigmoid(g.background).view(1, 3, 1, 1).expand_as(blank))
    r = _empty(2)
    _cells(r)[:, 4, 0], _cells(r)[:, 4, 1], _cells(r)[:, 4, 5], _cells(r)[:, 4, 11] = 0.0, 1.0, 1.0, 1.0
    drawn = g(r)
    assert 0 <= drawn.min() and drawn.max() <= 1
    assert not torch.allclose(drawn, blank) and torch.allclose(drawn[..., :16, :16], blank[..., :16, :16])  # only the centre
    drawn.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g.embed.parameters())
    torch.testing.assert_close(g(r), g.compose(*g.layers(r)))


def test_render_readings_keeps_leading_dims_and_checks_input():
    g = CellRenderer(width=4).eval()
    assert render_readings(torch.rand(2, 3, READING_DIM), g).shape == (2, 3, 3, 64, 64)
    assert render_readings(torch.rand(0, READING_DIM), g).shape == (0, 3, 64, 64)
    with pytest.raises(ValueError, match="117"):
        render_readings(torch.rand(2, 576), g)


def test_offsets_move_patches_whole_pixels_and_best_of_k_picks_the_closest():
    torch.manual_seed(0)
    g = CellRenderer(width=4, shift=2).eval()
    r = _empty(2)
    _cells(r)[:, 4, 0], _cells(r)[:, 4, 1], _cells(r)[:, 4, 5], _cells(r)[:, 4, 11] = 0.0, 1.0, 1.0, 1.0
    torch.testing.assert_close(g(r), g(r, torch.zeros(2, 9, 2, dtype=torch.long)))  # None means centred
    # one pixel down and two right: the centre cell's colour and alpha move exactly so
    moved = torch.zeros(2, 9, 2, dtype=torch.long)
    moved[:, 4] = torch.tensor([1, 2])
    (rgb, alpha), (rgb_m, alpha_m) = g.layers(r), g.layers(r, moved)
    torch.testing.assert_close(alpha_m[:, 4, :, 1:, 2:], alpha[:, 4, :, :-1, :-2])
    torch.testing.assert_close(rgb_m[:, 4, :, 1:, 2:], rgb[:, 4, :, :-1, :-2])
    assert alpha_m[:, 4, :, 0].max() < 1e-12  # the new border is transparent
    # best of K: the target drawn at known offsets is found again, and no offset fits better
    target = g(r, moved)
    occupied, logits = g.patches(r)
    found = _best_offsets(g, occupied, logits, target)
    torch.testing.assert_close(found, moved[occupied])
    assert _best_offsets(CellRenderer(width=4), occupied, logits, target) is None
    # drawing leaves the patches centred
    torch.testing.assert_close(render_readings(r, g), g(r))


@pytest.fixture
def small_trunk(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path))
    trunk = get_attribute_classifier(ClassifierConfig(seed=features.SHAPES_TRUNK_SEED, train_size=32, test_size=8, epochs=1), cache=False)
    monkeypatch.setattr(features, "shapes_trunk", lambda *a, **k: trunk)
    return trunk


def test_get_cell_renderer_trains_once_then_loads_from_the_cache(small_trunk, tmp_path, monkeypatch):
    cfg = RendererConfig(steps=3, batch_size=4, width=4, train_size=16)
    g = get_cell_renderer(cfg)
    assert set(g.metrics) == {"scene", "train_seconds"} and 0 <= g.metrics["scene"] <= 1
    assert len(list(tmp_path.glob("cell_renderer-*.pt"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr("flowkit.data.renderer.train_cell_renderer", no_training)
    again = get_cell_renderer(cfg)
    r = discretize_reading(torch.rand(3, READING_DIM))
    torch.testing.assert_close(again(r), g(r))
    assert again.metrics == g.metrics


def test_trunk_reading_extractor():
    torch.manual_seed(0)
    trunk = AttributeClassifier()
    extract = _TrunkReading(trunk)
    out = extract(torch.rand(3, 3, 64, 64))
    assert out.shape == (3, READING_DIM) and torch.isfinite(out).all()
    assert extract.key != _TrunkFeatures(trunk).key  # its own features file
    with pytest.raises(ValueError, match="64, 64"):
        extract(torch.rand(3, 3, 32, 32))


def test_load_shapes_coco_routes(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path))
    sizes = {"train": 6, "val": 2, "test": 2}
    pixels = load_shapes_coco("pixels", sizes, seed=1)
    assert pixels.features is None and pixels.data.image_kind == "pixels" and (pixels.root / "annotations").is_dir()
    with pytest.raises(ValueError, match="image_input must be one of"):
        load_shapes_coco("fc7", sizes, seed=1)


def test_image_drawer_draws_readings_and_refuses_other_features():
    from flowkit.evaluation import image_drawer
    from flowkit.models import LNFMM, LNFMMConfig

    sizes = dict(vocab_size=20, shared_dim=4, image_specific_dim=2, text_specific_dim=2, fv_layers=2, fv_hidden=8, ft_layers=2, ft_hidden=8)
    reading_model = LNFMM(LNFMMConfig.text_to_image(**sizes))
    draw = image_drawer(reading_model, renderer=CellRenderer(width=4))
    assert draw is not None and draw(torch.rand(2, 3, READING_DIM)).shape == (2, 3, 3, 64, 64)
    with pytest.raises(ValueError, match="not the shapes trunk's 117-number reading"):
        image_drawer(LNFMM(LNFMMConfig.captioning(image_feature_dim=10, **sizes)))
