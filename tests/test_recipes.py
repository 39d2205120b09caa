"""Recipes: the captioning recipe and its baselines are configurations of one model class, and
the same training engine trains each of them."""

from __future__ import annotations

import pytest
import torch

from flowkit.data import load_caption_data
from flowkit.data.features import extract_features
from flowkit.data.shapes import export_coco
from flowkit.models import LNFMM, LNFMMConfig
from flowkit.models.lnfmm.recipes import RECIPES, Recipe, captioner_baseline, captioning_recipe, cvae_baseline, text_to_image_recipe
from flowkit.training import TrainSettings, train

TINY = dict(
    shared_dim=6,
    image_specific_dim=4,
    image_encoder_hidden=16,
    word_embedding_dim=8,
    text_encoder_hidden=8,
    text_encoder_layers=1,
    decoder_hidden=16,
    decoder_embedding_dim=8,
    feature_decoder_hidden=16,
    fs_layers=2,
    fs_hidden=16,
    fv_layers=2,
    fv_hidden=16,
    ft_layers=2,
    ft_hidden=16,
)


def test_recipes_are_one_model_class_with_documented_choices():
    cap = captioning_recipe()
    assert isinstance(cap, Recipe) and cap.image_input == "features" and cap.steps > 0 and cap.batch_size > 0
    c = cap.config
    assert (c.image_encoder.kind, c.posterior.shared_norm, c.loss.rec_t) == ("features", "batch", 1.0)
    assert c == LNFMMConfig.captioning()
    sup = captioner_baseline().config
    assert sup.text_specific_dim == 0 and sup.loss.cross_t == 1.0
    assert all(getattr(sup.loss, k) == 0 for k in ("kl_t", "kl_v", "logdet", "align", "rec_t", "rec_v"))
    cvae = cvae_baseline().config
    assert cvae.flows.prior == "gaussian" and cvae.loss.kl_free_nats > 0
    # the same budget and data route for every model of a comparison (captioning; text-to-image)
    captioning = [RECIPES[k] for k in ("captioning", "captioner", "cvae")]
    assert {(r().steps, r().batch_size, r().image_input) for r in captioning} == {(cap.steps, cap.batch_size, "features")}
    t2i = text_to_image_recipe()
    assert {(r().steps, r().batch_size, r().image_input) for r in (RECIPES["text_to_image"], RECIPES["text_to_image_deterministic"])} == {
        (t2i.steps, t2i.batch_size, "reading")
    }
    assert RECIPES["text_to_image_pixels"]().image_input == "pixels"
    assert set(RECIPES) == {"captioning", "captioner", "cvae", "text_to_image", "text_to_image_deterministic", "text_to_image_pixels"}
    assert captioning_recipe(word_dropout=0.1).config.text_decoder.word_dropout == 0.1
    # each latent is decoded by beams of 5 (chosen on validation), the CVAE's as LNFMM's; the
    # captioner has no latent, so its samples draw words
    assert cap.decoding == cvae_baseline().decoding == {"method": "beam", "beam_width": 5}
    assert captioner_baseline().decoding["method"] == "sample" and t2i.decoding == {"method": "greedy"}


def _colour_statistics(images: torch.Tensor) -> torch.Tensor:
    return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1)


@pytest.fixture(scope="module")
def feature_data(tmp_path_factory):
    # the recipes' route: a COCO-format export, features extracted once, read back by id
    root = export_coco(tmp_path_factory.mktemp("coco"), sizes={"train": 6, "val": 2, "test": 2}, seed=1)
    path = extract_features(root, _colour_statistics, name="stats")
    return load_caption_data("coco", root=root, features=path, split_scheme="coco", max_len=12)


@pytest.fixture(scope="module")
def pixel_data(tmp_path_factory):
    root = export_coco(tmp_path_factory.mktemp("coco_pixels"), sizes={"train": 6, "val": 2, "test": 2}, seed=1)
    return load_caption_data("coco", root=root, split_scheme="coco", max_len=12)


@pytest.mark.parametrize("name", list(RECIPES))
def test_the_engine_trains_every_recipe(name, tmp_path, feature_data, pixel_data, monkeypatch):
    recipe = RECIPES[name](**TINY)
    settings = TrainSettings(steps=3, batch_size=4, progress=False, device="cpu")
    data = pixel_data if recipe.image_input == "pixels" else feature_data
    if recipe.config.image_encoder.init == "shapes-trunk":  # a small trunk instead of the 20 s pre-training
        from flowkit.data import features

        monkeypatch.setattr(
            features,
            "shapes_trunk",
            lambda progress=False: features.get_attribute_classifier(
                features.ClassifierConfig(seed=features.SHAPES_TRUNK_SEED, train_size=32, test_size=8, epochs=1)
            ),
        )
    trainer = train(recipe.config, data, settings, out=tmp_path)
    model = trainer.module
    assert isinstance(model, LNFMM) and trainer.step == 3 and (tmp_path / "checkpoint.pt").is_file()
    assert all(torch.isfinite(torch.tensor(v)) for v in trainer.last_terms.values())
    if name == "captioner":
        assert model.f_t is None and trainer.last_terms["kl_t"] == 0
    if recipe.image_input == "pixels":
        assert model.config.pixels and trainer.last_terms["cross_v"] > 0
