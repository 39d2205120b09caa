"""The text-to-image recipe's parts: the cells encoder (the shapes trunk inside the model), the
perceptual term of the image reconstruction, the recipes, and the image frontier."""

from __future__ import annotations

import math

import pytest
import torch

from flowkit.data.classifier import AttributeClassifier
from flowkit.evaluation.frontier import FrontierPoint, image_frontier
from flowkit.models import LNFMM, LNFMMConfig
from flowkit.models.lnfmm.encoders import CellEncoder
from flowkit.models.lnfmm.recipes import text_to_image_baseline, text_to_image_pixels_recipe, text_to_image_recipe

TINY = dict(
    vocab_size=20,
    max_caption_len=8,
    shared_dim=6,
    image_specific_dim=4,
    image_encoder_hidden=16,
    word_embedding_dim=8,
    text_encoder_hidden=8,
    text_encoder_layers=1,
    decoder_hidden=16,
    decoder_embedding_dim=8,
    generator_channels=4,
    fs_layers=2,
    fs_hidden=16,
    fv_layers=2,
    fv_hidden=16,
    ft_layers=2,
    ft_hidden=16,
)


def _model(**overrides) -> LNFMM:
    torch.manual_seed(0)
    model = LNFMM(LNFMMConfig.text_to_image_pixels(**{**TINY, **overrides}))
    trunk = AttributeClassifier()  # stands in for the pre-trained trunk (no 20 s training here)
    model.image_encoder.cells.load_state_dict(trunk.net[:-1].state_dict())
    model.image_trunk_initialized = True
    return model


def _batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(n, 3, 64, 64), torch.tensor([[1, 5, 6, 7, 2, 0, 0, 0]] * n)


def test_cells_encoder_computes_the_trunk_features_of_the_features_file():
    from flowkit.data.features import _TrunkFeatures

    torch.manual_seed(0)
    trunk = AttributeClassifier()
    # a trunk with non-trivial batch-norm statistics, as a trained one has
    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    enc = CellEncoder(16, 6)
    enc.cells.load_state_dict(trunk.net[:-1].state_dict())
    enc.freeze_trunk()
    enc.train()  # a frozen trunk keeps its running statistics in training mode
    x = torch.rand(3, 3, 64, 64)
    torch.testing.assert_close(enc.trunk(x), _TrunkFeatures(trunk)(x))
    assert not enc.cells.training and enc.body.training


def test_frozen_cells_trunk_gets_no_updates_and_keeps_its_statistics():
    model = _model()
    before = {k: v.clone() for k, v in model.image_encoder.cells.state_dict().items()}
    model.train()
    images, captions = _batch()
    out = model(images, captions)
    out["loss"].backward()
    assert all(p.grad is None for p in model.image_encoder.cells.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.image_encoder.cells.state_dict().items())
    assert model.image_encoder.body[0].weight.grad is not None
    assert all(p.grad is not None for p in model.image_decoder.to_rgb.parameters())
    # lambda_rec_v = 0: rec_v is a diagnostic without a graph; cross_v trains the decoder
    assert out["rec_v"].grad_fn is None and out["cross_v"].grad_fn is not None


def test_perceptual_term_adds_the_trunk_feature_distance():
    model = _model(lambda_rec_v=1.0)
    model.eval()
    images, _ = _batch()
    recon = torch.rand_like(images)
    with torch.no_grad():
        pixels = (recon - images).abs().flatten(1).sum(1)
        feats = (model.image_encoder.trunk(recon) - model.image_encoder.trunk(images)).square().sum(1)
        err = model._image_error(images, recon)
    torch.testing.assert_close(err, pixels + model.config.loss.image_perceptual * feats)
    off = _model(image_perceptual=0.0)
    torch.testing.assert_close(off._image_error(images, recon), pixels)


def test_config_checks_the_text_to_image_options():
    with pytest.raises(ValueError, match="image_perceptual=1.0 measures images with the frozen image trunk"):
        LNFMMConfig.text_to_image_pixels(freeze_image_trunk=False)
    with pytest.raises(ValueError, match="initializes the 'cells' image encoder, not 'conv'"):
        LNFMMConfig.small(image_encoder_init="shapes-trunk")
    with pytest.raises(ValueError, match="image_perceptual must be a finite number >= 0"):
        LNFMMConfig.text_to_image_pixels(image_perceptual=-1.0)


def test_text_to_image_recipes():
    r, b, px = text_to_image_recipe(), text_to_image_baseline(), text_to_image_pixels_recipe()
    # the recipe and its baseline: the trunk's reading, decoded from the caption's shared code
    assert r.image_input == b.image_input == "reading" and (r.steps, r.batch_size) == (b.steps, b.batch_size)
    c = r.config
    assert (c.image_encoder.kind, c.image_encoder.feature_dim, c.posterior.shared_norm) == ("features", 117, "batch-all")
    assert c.loss.cross_v > 0 and c.loss.rec_v == 0 and c.loss.image_distance == "mse" and c.image_specific_dim > 0
    assert c.loss.cross_v_prior > 0 and b.config.loss.cross_v_prior == 0  # no z'_v in the baseline: nothing to draw
    same = b.config.replace(image_specific_dim=c.image_specific_dim, notes=c.notes, loss={"cross_v_prior": c.loss.cross_v_prior})
    assert b.config.image_specific_dim == 0 and same == c
    model = LNFMM(b.config.replace(**{**TINY, "image_specific_dim": 0}))
    assert model.f_v is None
    # end to end on pixels: the pre-trained trunk inside the model, a perceptual term
    p = px.config
    assert px.image_input == "pixels" and (p.image_encoder.kind, p.image_encoder.init, p.image_encoder.freeze_trunk) == (
        "cells",
        "shapes-trunk",
        True,
    )
    assert p.loss.cross_v > 0 and p.loss.rec_v == 0 and p.loss.image_perceptual > 0


def test_image_frontier_judges_every_temperature():
    from flowkit.data import Vocabulary

    vocab = Vocabulary.build(["a red circle", "a blue square"], threshold=1)
    model = _model(vocab_size=len(vocab)).eval()

    class AlwaysRedCircle:  # a scene reader that sees a red circle in the middle of every image
        def read_scenes(self, images):
            from flowkit.data.grammar import Scene, SceneObject

            return [Scene((SceneObject("circle", "red", "small", 1, 1),)) for _ in images]

    points = image_frontier(model, ["a red circle", "a blue square"], vocab, (0.0, 1.0), num_samples=3, judge=AlwaysRedCircle())
    assert [p.label for p in points] == ["T=0", "T=1"] and all(isinstance(p, FrontierPoint) for p in points)
    for p in points:
        assert p.accuracy == 0.5 and p.distinct == 1.0  # one caption of two has true images
        assert 0.0 <= p.coverage <= 1.0 and not math.isnan(p.coverage)


def test_the_pixel_recipe_refuses_feature_data():
    from types import SimpleNamespace

    from flowkit.models.lnfmm.step import adapt_config

    data = SimpleNamespace(vocab=range(30), train=[], image_kind="features", image_shape=(576,), max_len=12)
    with pytest.raises(ValueError, match="compares generated images with the data's pixels, but the data holds image features"):
        adapt_config(text_to_image_pixels_recipe().config, data)
