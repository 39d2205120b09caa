"""The training engine: exact resume, non-finite losses, logs, clipping, data order, GAN steps."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from flowkit.models.lnfmm import LNFMMStep
from flowkit.training import (
    NonFiniteLossError,
    Trainer,
    TrainSettings,
    epoch_order,
    labeled_mask,
    load_checkpoint,
    read_csv_log,
    seed_everything,
    shard,
    train,
)

# -- a toy model that uses every source of randomness the engine must restore ----------------


class Toy(nn.Module):
    """Returns LNFMM-like loss terms (trained with LNFMM's step, whose calling convention it has); draws torch, numpy and Python random numbers; has a
    data-dependent init flag (a buffer, as ActNorm's) and two param groups with value clips."""

    def __init__(self, nan_at: int | None = None, nan_term: str = "kl", huge_grad: bool = False) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 3)
        self.emb = nn.Embedding(10, 3)
        self.dec = nn.Linear(3, 4)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("initialized", torch.tensor(False))
        self.loc = nn.Parameter(torch.zeros(3))
        self.nan_at, self.nan_term, self.huge_grad = nan_at, nan_term, huge_grad
        self.calls = 0
        self.labeled_seen: list[torch.Tensor] = []

    def forward(self, images, captions, labeled=None):
        self.calls += 1
        if labeled is not None:
            self.labeled_seen.append(labeled.clone())
        h = self.enc(images)
        if not bool(self.initialized):
            with torch.no_grad():
                self.loc.copy_(-h.mean(0))
                self.initialized.fill_(True)
        noise = torch.randn_like(h) * float(np.random.uniform(0.5, 1.0)) * random.uniform(0.5, 1.0)
        z = self.drop(h + self.loc + noise) + self.emb(captions).mean(1)
        rec = (self.dec(z) - images).pow(2).sum(1).mean()
        kl = z.pow(2).sum(1).mean() * 0.1
        if self.huge_grad:
            rec = rec * 1e6
        if self.nan_at is not None and self.calls >= self.nan_at:
            if self.nan_term == "kl":
                kl = kl * float("nan")
            else:
                rec = rec + float("inf")
        return {"loss": rec + kl, "rec": rec, "kl": kl}

    def optimizer_groups(self):
        return [
            {"name": "encoder", "params": list(self.enc.parameters()) + [self.loc], "lr": 1e-2, "clip_value": 1.0},
            {"name": "decoder", "params": list(self.emb.parameters()) + list(self.dec.parameters()), "lr": 5e-3, "clip_value": 5.0},
        ]


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int = 10) -> None:
        self.n = n
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        self.loaded.append(i)
        g = torch.Generator().manual_seed(1000 + i)
        return {"image": torch.randn(4, generator=g), "caption": torch.randint(0, 10, (5,), generator=g), "image_id": i}


def _settings(**kw) -> TrainSettings:
    base = dict(steps=6, batch_size=4, seed=3, progress=False, device="cpu", log="csv")
    base.update(kw)
    return TrainSettings(**base)


def _toy_trainer(out, dataset=None, model_kw=None, **kw) -> Trainer:
    seed_everything(kw.get("seed", 3))
    data = dataset if dataset is not None else Pairs()
    return Trainer(Toy(**(model_kw or {})), data, _settings(**kw), step=LNFMMStep(), out=out, config={"toy": 1})


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(v, b["state"][i][k]), (i, k)


# -- exact resume ------------------------------------------------------------------------------


def test_exact_resume_toy_bit_identical(tmp_path):
    # 10 pairs, batches of 4: 2 batches per epoch, so 3 + 3 steps resume mid-epoch and cross
    # epoch boundaries on both sides.
    straight = _toy_trainer(tmp_path / "a", steps=6)
    straight.fit()

    first = _toy_trainer(tmp_path / "b", steps=3)
    first.fit()
    ckpt = load_checkpoint(tmp_path / "b")
    assert ckpt["step"] == 3 and ckpt["data"]["epoch"] == 1 and ckpt["data"]["batch"] == 1

    torch.manual_seed(12345), np.random.seed(7), random.seed(7)  # a new process' RNGs
    data = Pairs()
    second = _toy_trainer(tmp_path / "b", dataset=data, steps=6)
    second.load(tmp_path / "b")
    second.fit()

    _assert_same_state(straight.module.state_dict(), second.module.state_dict())
    _assert_same_optimizer(straight.optimizer.state_dict(), second.optimizer.state_dict())
    _assert_same_state(straight.module.state_dict(), load_checkpoint(tmp_path / "b")["model"])
    # The batch consumed before the checkpoint in epoch 1 was skipped, not loaded.
    assert len(data.loaded) == 3 * 4
    assert not straight.module.state_dict()["enc.weight"].equal(Toy().state_dict()["enc.weight"])


def test_resume_with_other_settings_is_refused(tmp_path):
    _toy_trainer(tmp_path, steps=2).fit()
    other = _toy_trainer(tmp_path, steps=4, batch_size=2)
    with pytest.raises(ValueError, match="batch_size: checkpoint 4, now 2"):
        other.load(tmp_path)
    seed_everything(3)
    other = Trainer(Toy(), Pairs(), _settings(steps=4), step=LNFMMStep(), out=tmp_path, config={"toy": 2})
    with pytest.raises(ValueError, match=r"config\.toy: checkpoint 1, now 2"):
        other.load(tmp_path)


def _tiny_config(**kw):
    from flowkit.models import LNFMMConfig

    tiny = dict(
        shared_dim=8,
        image_specific_dim=4,
        text_specific_dim=4,
        image_encoder_hidden=16,
        conv_encoder_channels=4,
        word_embedding_dim=8,
        text_encoder_hidden=8,
        text_encoder_layers=1,
        decoder_hidden=16,
        decoder_embedding_dim=8,
        generator_channels=4,
        discriminator_channels=4,
        feature_decoder_hidden=16,
        fs_layers=2,
        fs_hidden=16,
        fv_layers=2,
        fv_hidden=16,
        ft_layers=2,
        ft_hidden=16,
        image_encoder_init_steps=10,
    )
    tiny.update(kw)
    return LNFMMConfig.small(**tiny)


@pytest.fixture(scope="module")
def tiny_data():
    from flowkit.data import load_caption_data

    return load_caption_data("shapes", sizes={"train": 2, "val": 1, "test": 1}, max_len=12)


def test_exact_resume_lnfmm_bit_identical(tmp_path, tiny_data):
    # 10 training pairs, batches of 4: 2 steps per epoch.
    cfg = _tiny_config()
    a = train(cfg, tiny_data, _settings(steps=4, seed=5), out=tmp_path / "a")
    train(cfg, tiny_data, _settings(steps=2, seed=5), out=tmp_path / "b")
    torch.manual_seed(999)
    b = train(cfg, tiny_data, _settings(steps=4, seed=5), out=tmp_path / "b", resume=tmp_path / "b")
    assert b.step == 4
    _assert_same_state(a.module.state_dict(), b.module.state_dict())
    _assert_same_optimizer(a.optimizer.state_dict(), b.optimizer.state_dict())
    assert read_csv_log(tmp_path / "a") == [{**row, "time": pytest.approx(row["time"], abs=1e9)} for row in read_csv_log(tmp_path / "b")]


# -- non-finite losses -------------------------------------------------------------------------


@pytest.mark.parametrize("term,value", [("kl", "nan"), ("rec", "inf")])
def test_non_finite_loss_names_term_and_step(tmp_path, term, value):
    trainer = _toy_trainer(tmp_path, model_kw={"nan_at": 4, "nan_term": term}, steps=6, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=rf"'{term}'.* at step 4") as info:
        trainer.fit()
    assert info.value.step == 4 and term in info.value.bad and "loss" in info.value.bad
    assert math.isnan(info.value.terms[term]) if value == "nan" else math.isinf(info.value.terms[term])
    # the last good checkpoint (step 2) stays; step 3 was done but never saved
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert [r["step"] for r in read_csv_log(tmp_path)] == [1, 2, 3]


def test_non_finite_gradient_is_caught_before_the_update(tmp_path):
    trainer = _toy_trainer(None, steps=2)
    before = {k: v.clone() for k, v in trainer.module.state_dict().items()}

    def poison(grad):
        return grad * float("nan")

    trainer.module.dec.weight.register_hook(poison)
    with pytest.raises(NonFiniteLossError, match=r"'grad:decoder' at step 1"):
        trainer.fit()
    after = trainer.module.state_dict()
    assert torch.equal(before["dec.weight"], after["dec.weight"])


# -- logs --------------------------------------------------------------------------------------


def test_csv_log_content_and_resume_truncation(tmp_path):
    trainer = _toy_trainer(tmp_path, steps=4, checkpoint_every=2, log_every=1)
    trainer.fit()
    rows = read_csv_log(tmp_path / "log.csv")
    header = (tmp_path / "log.csv").read_text().splitlines()[0]
    assert header == "step,loss,rec,kl,lr,time"
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["lr"] == 1e-2 for r in rows)  # the largest group lr
    assert all(math.isfinite(r["loss"]) and r["loss"] == pytest.approx(r["rec"] + r["kl"], rel=1e-5) for r in rows)
    times = [r["time"] for r in rows]
    assert times == sorted(times) and times[0] > 0
    assert rows[-1]["loss"] == pytest.approx(trainer.last_terms["loss"])

    # A crash after step 4 but before its checkpoint: rows 3-4 are dropped on resume from 2.
    from flowkit.training import save_checkpoint

    ckpt = load_checkpoint(tmp_path)
    first = _toy_trainer(tmp_path / "two", steps=2)
    first.fit()
    save_checkpoint(tmp_path / "checkpoint.pt", load_checkpoint(tmp_path / "two"))
    resumed = _toy_trainer(tmp_path, steps=3)
    resumed.load(tmp_path)
    resumed.fit()
    assert [r["step"] for r in read_csv_log(tmp_path)] == [1, 2, 3]
    assert ckpt["step"] == 4


def test_log_every_writes_the_last_step(tmp_path):
    _toy_trainer(tmp_path, steps=5, log_every=2).fit()
    assert [r["step"] for r in read_csv_log(tmp_path)] == [2, 4, 5]


def test_tensorboard_events_when_asked(tmp_path):
    pytest.importorskip("tensorboard")
    _toy_trainer(tmp_path, steps=2, log="both").fit()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "log.csv").is_file()


# -- optimisation ------------------------------------------------------------------------------


def test_gradient_values_are_clipped_per_group():
    trainer = _toy_trainer(None, model_kw={"huge_grad": True}, steps=1)
    seen = {}
    step = trainer.optimizer.step

    def spy(*args, **kwargs):
        for g in trainer.optimizer.param_groups:
            seen[g["name"]] = max(p.grad.abs().max().item() for p in g["params"] if p.grad is not None)
        return step(*args, **kwargs)

    trainer.optimizer.step = spy
    trainer.fit()
    assert seen["encoder"] == pytest.approx(1.0)  # hit the clip exactly
    assert seen["decoder"] == pytest.approx(5.0)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-2, 5e-3]


def test_labeled_fraction_passes_a_fixed_mask():
    data = Pairs(20)
    trainer = _toy_trainer(None, dataset=data, steps=5, labeled_fraction=0.3)
    trainer.fit()
    mask = labeled_mask(20, 0.3, 3)
    assert mask.sum() == 6
    assert torch.equal(trainer.mask, mask)
    assert len(trainer.module.labeled_seen) == 5
    # each batch's mask is the fixed mask at the batch's indices
    for epoch_step, seen in enumerate(trainer.module.labeled_seen):
        epoch, b = divmod(epoch_step, 5)
        idx = epoch_order(20, 3, epoch)[b * 4 : (b + 1) * 4]
        assert torch.equal(seen, mask[idx])
    full = _toy_trainer(None, steps=1)
    full.fit()
    assert full.module.labeled_seen == [] and full.mask is None


def test_data_order_is_seeded_and_sharded():
    assert torch.equal(epoch_order(50, 1, 2), epoch_order(50, 1, 2))
    assert not torch.equal(epoch_order(50, 1, 2), epoch_order(50, 1, 3))
    assert not torch.equal(epoch_order(50, 1, 2), epoch_order(50, 2, 2))
    order = epoch_order(11, 0, 0)
    parts = [shard(order, r, 3) for r in range(3)]
    assert all(len(p) == 4 for p in parts)
    assert set(torch.cat(parts).tolist()) == set(range(11))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="labeled_fraction"):
        TrainSettings(labeled_fraction=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainSettings(batch_size=0)
    with pytest.raises(ValueError, match="log must be"):
        TrainSettings(log="wandb")


# -- GAN alternation ---------------------------------------------------------------------------


def test_gan_alternates_discriminator_then_generator(tmp_path, tiny_data, monkeypatch):
    from flowkit.models import LNFMM

    cfg = _tiny_config(gan=True)
    calls: list[str] = []
    d_loss, fwd = LNFMM.discriminator_loss, LNFMM.forward
    monkeypatch.setattr(LNFMM, "discriminator_loss", lambda self, *a, **k: (calls.append("D"), d_loss(self, *a, **k))[1])
    monkeypatch.setattr(LNFMM, "forward", lambda self, *a, **k: (calls.append("G"), fwd(self, *a, **k))[1])
    seed_everything(0)
    trainer = train(cfg, tiny_data, _settings(steps=2, seed=0), out=tmp_path)
    assert calls == ["D", "G", "D", "G"]
    assert {"adv", "d_loss"} <= set(trainer.last_terms)
    ckpt = load_checkpoint(tmp_path)
    assert "optimizer_d" in ckpt and "discriminator" in ckpt
    assert ckpt["optimizer_d"]["param_groups"][0]["name"] == "discriminator"
    # the discriminator moved, and its parameters are in no generator group
    seed_everything(0)
    fresh = LNFMM(trainer.module.config)
    pairs = zip(fresh.discriminator.parameters(), trainer.module.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in pairs)
    g_ids = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not g_ids & {id(p) for p in trainer.module.discriminator_parameters()}


def test_adapt_config_follows_the_data():
    from types import SimpleNamespace

    from flowkit.data import Vocabulary
    from flowkit.training import adapt_config

    vocab = Vocabulary(["a", "red", "circle"])
    features = SimpleNamespace(vocab=vocab, train=[], image_shape=(512,), image_kind="features", max_len=9)
    cfg = adapt_config(_tiny_config(), features)
    assert (cfg.vocab_size, cfg.max_caption_len, cfg.image_encoder.kind, cfg.image_encoder.feature_dim) == (7, 9, "features", 512)
    with pytest.raises(ValueError, match="gan=True needs pixel images"):
        adapt_config(_tiny_config(gan=True), features)
    pixels = SimpleNamespace(vocab=vocab, train=[], image_shape=(3, 64, 64), image_kind="pixels", max_len=12)
    cfg = adapt_config(_tiny_config(image_encoder="features"), pixels)
    assert (cfg.image_encoder.kind, cfg.image_shape[-1], cfg.max_caption_len) == ("conv", 64, 12)


# -- validation during training ----------------------------------------------------------------


def test_validation_runs_every_n_steps_and_changes_nothing(tmp_path):
    seen = []

    def validate(model):
        assert not model.training and not torch.is_grad_enabled()
        seen.append(model.calls)
        # draws from every RNG: the engine must restore them all
        return {"score": float(torch.rand(()) + np.random.rand() + random.random()), "calls": model.calls}

    plain = _toy_trainer(tmp_path / "a", steps=6)
    plain.fit()
    seed_everything(3)
    checked = Trainer(
        Toy(), Pairs(), _settings(steps=6, validate_every=4), step=LNFMMStep(), out=tmp_path / "b", config={"toy": 1}, validate=validate
    )
    checked.fit()
    assert checked.module.training
    _assert_same_state(plain.module.state_dict(), checked.module.state_dict())
    rows = read_csv_log(tmp_path / "b" / "validation.csv")
    assert [r["step"] for r in rows] == [4, 6]  # every 4 steps and the last one
    assert [r["calls"] for r in rows] == [4, 6] and seen == [4, 6]
    assert not (tmp_path / "a" / "validation.csv").exists()
    with pytest.raises(ValueError, match="validate_every"):
        _settings(validate_every=-1)


def test_caption_validator_reports_the_learning_curve_keys(tiny_data):
    from flowkit.evaluation.diagnostics import caption_validator
    from flowkit.models import LNFMM

    cfg = _tiny_config(image_encoder_init="random", freeze_image_trunk=False, vocab_size=len(tiny_data.vocab), max_caption_len=12)
    torch.manual_seed(0)
    model = LNFMM(cfg).eval()
    metrics = caption_validator(tiny_data, num_images=1, num_samples=3, num_pairs=4)(model)
    assert set(metrics) == {
        "accuracy",
        "coverage",
        "accuracy_t0",
        "recon_own",
        "recon_cross",
        "scale_text",
        "scale_image",
        "noise",
        "scale_to_noise",
        "align",
    }
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("accuracy", "coverage", "accuracy_t0", "recon_own", "recon_cross"))
    assert metrics["noise"] == pytest.approx(cfg.shared_dim * cfg.posterior.noise_std**2)
    assert metrics["scale_to_noise"] == pytest.approx(metrics["scale_text"] / metrics["noise"])
    with pytest.raises(ValueError, match="scenes"):
        caption_validator(type("D", (), {"scenes": None})())


def test_cosine_schedule_follows_the_step_and_resumes_exactly(tmp_path):
    straight = _toy_trainer(tmp_path / "a", steps=6, lr_schedule="cosine")
    straight.fit()
    rows = read_csv_log(tmp_path / "a")
    # the log's lr is the largest group's (encoder, 1e-2) at each step t of T=6
    expected = [1e-2 * 0.5 * (1 + math.cos(math.pi * (t - 1) / 6)) for t in range(1, 7)]
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-5)
    _toy_trainer(tmp_path / "b", steps=6, lr_schedule="cosine").fit(steps=3)  # a run of 6 stopped at 3
    # resumed: the schedule is a function of the step and the planned total, so bit-identical
    torch.manual_seed(12345), np.random.seed(7), random.seed(7)
    second = _toy_trainer(tmp_path / "b", steps=6, lr_schedule="cosine")
    second.load(tmp_path / "b")
    second.fit()
    _assert_same_state(straight.module.state_dict(), second.module.state_dict())
    other = _toy_trainer(tmp_path / "b", steps=8)
    with pytest.raises(ValueError, match="lr_schedule"):
        other.load(tmp_path / "b")
    with pytest.raises(ValueError, match="lr_schedule"):
        _settings(lr_schedule="linear")
