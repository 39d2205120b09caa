"""Pre-training of the conv image encoder (image_encoder_init="shapes-attributes"): seeded,
cached atomically, leaves the global RNG alone, lands in new runs but not in resumed ones, and
a frozen trunk stays frozen."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from flowkit.data import load_caption_data
from flowkit.data.shapes import Scene, SceneObject
from flowkit.models import LNFMM, LNFMMConfig
from flowkit.training import TrainSettings, attribute_targets, pretrain_shapes_encoder, train

FAST = dict(steps=3, images=16, batch_size=4)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_attribute_targets() -> None:
    scene = Scene((SceneObject("star", "blue", "large", 1, 1), SceneObject("circle", "blue", "small", 0, 2)))
    t = attribute_targets(scene, ("red", "blue"), ("circle", "star"))
    assert t.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]


def test_pretraining_is_seeded_cached_and_rng_neutral(_cache: Path) -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = pretrain_shapes_encoder(8, 16, **FAST)
    after = torch.rand(3)
    assert torch.equal(before, after)  # the global RNG stream is untouched
    assert len(list(_cache.glob("shapes_encoder-*.pt"))) == 1
    assert not list(_cache.glob(".*.tmp"))
    b = pretrain_shapes_encoder(8, 16, **FAST)  # from the cache
    c = pretrain_shapes_encoder(8, 16, cache=False, **FAST)  # trained again: the same numbers
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k])
    d = pretrain_shapes_encoder(8, 16, seed=8, cache=False, **FAST)
    assert any(not torch.equal(a[k], d[k]) for k in a)
    assert set(a) == {
        k
        for k in LNFMM(LNFMMConfig.small(vocab_size=20, conv_encoder_channels=8, image_encoder_hidden=16)).image_encoder.trunk_state_dict()
    }
    with pytest.raises(ValueError, match="steps must be a positive int"):
        pretrain_shapes_encoder(8, 16, steps=0)


def test_config_checks_the_options() -> None:
    with pytest.raises(ValueError, match="image_encoder.init='imagenet' is not one of"):
        LNFMMConfig.small(image_encoder_init="imagenet")
    with pytest.raises(ValueError, match="image_encoder.freeze_trunk applies to the 'conv' and 'cells' image encoders, not 'features'"):
        LNFMMConfig.paper(freeze_image_trunk=True)
    model = LNFMM(LNFMMConfig.small(vocab_size=20, freeze_image_trunk=True))
    names = {g["name"]: g for g in model.optimizer_groups()}
    trainable = {id(p) for p in names["image_encoder"]["params"]}
    assert all(id(p) not in trainable for p in model.image_encoder.convs.parameters())
    assert all(id(p) in trainable for p in model.image_encoder.head.parameters())
    with pytest.raises(ValueError, match="trunk weights do not fit"):
        model.image_encoder.load_trunk_state_dict({"convs.0.weight": torch.zeros(1)})


def test_new_runs_start_from_the_pretrained_trunk_and_resume_keeps_it(tmp_path: Path) -> None:
    data = load_caption_data("shapes", sizes={"train": 24, "val": 4, "test": 4}, seed=0)
    cfg = LNFMMConfig.small(
        conv_encoder_channels=4,
        image_encoder_hidden=16,
        image_encoder_init="shapes-attributes",
        image_encoder_init_steps=3,
        freeze_image_trunk=True,
    )
    trunk = pretrain_shapes_encoder(4, 16, steps=3)
    out = tmp_path / "run"
    trainer = train(cfg, data, TrainSettings(steps=2, batch_size=4, progress=False), out=out)
    got = trainer.module.image_encoder.trunk_state_dict()
    for k, v in trunk.items():
        assert torch.equal(got[k], v), k  # loaded, and frozen through two steps
    resumed = train(cfg, data, TrainSettings(steps=4, batch_size=4, progress=False), out=out, resume=out)
    for k, v in trunk.items():
        assert torch.equal(resumed.module.image_encoder.trunk_state_dict()[k], v)


def test_small_preset_uses_the_pretrained_trunk_and_warns_in_a_bare_loop() -> None:
    cfg = LNFMMConfig.small(vocab_size=20, conv_encoder_channels=4, image_encoder_hidden=16, image_encoder_init_steps=3)
    assert cfg.image_encoder.init == "shapes-attributes" and cfg.image_encoder.freeze_trunk
    assert LNFMMConfig.small(image_encoder="features").image_encoder.init == "random"
    model = LNFMM(cfg)
    images, captions = torch.rand(2, 3, 64, 64), torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
    with pytest.warns(UserWarning, match="trunk was never initialized"):
        model(images, captions)
    from flowkit.training import initialize_image_encoder

    fresh = LNFMM(cfg)
    assert initialize_image_encoder(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh(images, captions)  # initialized: no warning
    loaded = LNFMM(cfg)
    loaded.load_state_dict(fresh.state_dict())
    assert loaded.image_trunk_initialized
