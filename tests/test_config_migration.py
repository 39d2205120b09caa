"""LNFMMConfig's groups and its migration: configs and checkpoints written by the flat
LNFMMConfig (before the groups) load with identical values; presets, replace and the CLI keep
taking the flat names. The fixtures in tests/data were written by that flat version (4fe04e8)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from flowkit.commands.train import parse_overrides
from flowkit.io import load_checkpoint
from flowkit.models import LNFMM, LNFMMConfig
from flowkit.models.lnfmm.config import DROPPED_NAMES, FLAT_NAMES, GROUPS, LossConfig

DATA = Path(__file__).parent / "data"
OLD = json.loads((DATA / "lnfmm_config_flat_v1.json").read_text())
PRESETS = {"paper": {}, "small": {}, "captioning": {"vocab_size": 40}, "text_to_image": {"vocab_size": 40}}
# presets tuned since the fixtures were written (docs/lnfmm.md): the old values, to compare with
TUNED_SINCE_V1 = {
    "text_to_image": {"shared_norm": "batch", "image_noise_std": 0.5, "fv_layers": 4, "fv_hidden": 64, "notes": {"preset": "text_to_image"}}
}
# presets renamed since: the pixel text-to-image model (the recipe now reads the trunk's reading)
RENAMED_SINCE_V1 = {"text_to_image": "text_to_image_pixels"}


def test_at_most_15_top_level_fields_and_one_table_for_every_old_name():
    assert len(dataclasses.fields(LNFMMConfig)) <= 15
    old_names = set(OLD["paper"])
    assert set(FLAT_NAMES) | DROPPED_NAMES == old_names and not set(FLAT_NAMES) & DROPPED_NAMES
    # every place of the table exists, and every field of the config has exactly one old name
    cfg = LNFMMConfig()
    places = set(FLAT_NAMES.values())
    assert len(places) == len(FLAT_NAMES)
    expected = {f.name for f in dataclasses.fields(LNFMMConfig) if f.name not in GROUPS}
    expected |= {f"{g}.{f.name}" for g, cls in GROUPS.items() for f in dataclasses.fields(cls)}
    # fields added after the groups never had a flat name: only "group.field" names them
    added_since = {"loss.cross_v_prior"}
    assert added_since <= expected and not added_since & places
    assert places == expected - added_since
    assert all(isinstance(getattr(cfg, g), cls) for g, cls in GROUPS.items())


@pytest.mark.parametrize("name", sorted(OLD))
def test_old_flat_config_loads_with_identical_values(name):
    old = OLD[name]
    cfg = LNFMMConfig.from_dict(old)
    flat = cfg.to_flat_dict()
    for key, value in old.items():
        if key in DROPPED_NAMES:
            continue
        assert flat[key] == value and type(flat[key]) is type(value), key
    # the dropped options held nothing: one legal image size, no VGG-16 file
    assert (old["image_size"], old["vgg16_weights"]) == (64, None)
    # the nested form round-trips through JSON
    assert LNFMMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    if name in PRESETS:
        preset = getattr(LNFMMConfig, RENAMED_SINCE_V1.get(name, name))
        assert cfg == preset(**PRESETS[name], **TUNED_SINCE_V1.get(name, {}))


def test_old_checkpoint_builds_the_same_model():
    ckpt = load_checkpoint(DATA / "lnfmm_tiny_flat_v1.pt", map_location="cpu")
    assert "lambda_rec_t" in ckpt["config"] and "loss" not in ckpt["config"]  # truly the old layout
    cfg = LNFMMConfig.from_dict(ckpt["config"])
    assert (cfg.shared_dim, cfg.image_encoder.kind, cfg.posterior.shared_norm) == (2, "features", "batch")
    model = LNFMM(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ckpt["model"].items()}
    model.load_state_dict(ckpt["model"])  # strict
    # the evaluation's loader reads it too
    from flowkit.evaluation import load_model

    loaded, _ = load_model(DATA / "lnfmm_tiny_flat_v1.pt")
    assert loaded.config == cfg
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ckpt["model"].values()))


def test_presets_take_flat_nested_and_dotted_overrides():
    flat = LNFMMConfig.small(vocab_size=40, shared_norm="batch", lambda_rec_t=1.0)
    nested = LNFMMConfig.small(vocab_size=40, posterior={"shared_norm": "batch"}, loss={"rec_t": 1.0})
    dotted = LNFMMConfig.small(**{"vocab_size": 40, "posterior.shared_norm": "batch", "loss.rec_t": 1.0})
    assert flat == nested == dotted
    assert (flat.posterior.shared_norm, flat.loss.rec_t, flat.loss.cross_t) == ("batch", 1.0, 1.0)  # the rest stays small's
    # a group object replaces the whole group
    assert LNFMMConfig.small(loss=LossConfig(rec_t=2.0)).loss == LossConfig(rec_t=2.0)
    # replace takes the same forms
    assert flat.replace(lambda_rec_t=0.5) == flat.replace(loss={"rec_t": 0.5}) == flat.replace(**{"loss.rec_t": 0.5})
    with pytest.raises(ValueError, match="loss.rec_t is given twice"):
        LNFMMConfig.small(lambda_rec_t=1.0, loss={"rec_t": 2.0})
    with pytest.raises(ValueError, match="lambda_6"):
        LNFMMConfig.small(lambda_6=1.0)
    with pytest.raises(ValueError, match="loss.rec_x"):
        LNFMMConfig.small(loss={"rec_x": 1.0})


def test_errors_name_the_group_and_collect_every_problem():
    with pytest.raises(ValueError) as e:
        LNFMMConfig.small(lambda_rec_t=-1.0, word_dropout=2.0, vocab_size=0)
    msg = str(e.value)
    assert "loss.rec_t must be" in msg and "text_decoder.word_dropout must be" in msg and "vocab_size" in msg
    with pytest.raises(ValueError, match=r"loss.image_perceptual=1.0 .* set image_encoder.freeze_trunk=True"):
        LNFMMConfig.text_to_image_pixels(freeze_image_trunk=False)


def test_dropped_options():
    base = dict(OLD["small"])
    with pytest.raises(ValueError, match="image_size=32"):
        LNFMMConfig.from_dict({**base, "image_size": 32})
    # a features model never used image_size: any value is nothing lost
    assert LNFMMConfig.from_dict({**OLD["captioning"], "image_size": 7}) == LNFMMConfig.from_dict(OLD["captioning"])
    with pytest.warns(UserWarning, match="vgg16_weights"):
        cfg = LNFMMConfig.from_dict({**base, "vgg16_weights": "vgg16.pth"})
    assert cfg == LNFMMConfig.from_dict(base)


def test_cli_overrides_take_flat_and_dotted_names():
    got = parse_overrides(["lambda_rec_t=1", "loss.cross_t=0", "shared_norm=batch", "flows.fs_layers=2"], LNFMMConfig)
    assert got == {"lambda_rec_t": 1.0, "loss.cross_t": 0.0, "shared_norm": "batch", "flows.fs_layers": 2}
    cfg = LNFMMConfig.small(**got)
    assert (cfg.loss.rec_t, cfg.loss.cross_t, cfg.posterior.shared_norm, cfg.flows.fs_layers) == (1.0, 0.0, "batch", 2)
    with pytest.raises(ValueError, match="image_size: unknown config field"):
        parse_overrides(["image_size=64"], LNFMMConfig)


def test_resume_reads_an_old_checkpoint_config():
    # the engine compares the checkpoint's config read by the config's class: an old flat config
    # of the same model is no difference; a changed field is named with its group
    from flowkit.models.lnfmm import LNFMMStep
    from flowkit.training import Trainer, TrainSettings

    ckpt = load_checkpoint(DATA / "lnfmm_tiny_flat_v1.pt", map_location="cpu")
    cfg = LNFMMConfig.from_dict(ckpt["config"])
    data = [{"image": torch.randn(3), "caption": torch.tensor([1, 5, 2, 0])} for _ in range(4)]
    settings = TrainSettings(steps=1, batch_size=2, progress=False, device="cpu")
    trainer = Trainer(LNFMM(cfg), data, settings, step=LNFMMStep())
    assert trainer._resume_problems({"config": ckpt["config"]}) == []
    changed = trainer._resume_problems({"config": {**ckpt["config"], "lambda_rec_t": 0.25}})
    assert changed == [f"config.loss.rec_t: checkpoint 0.25, now {cfg.loss.rec_t!r}"]
