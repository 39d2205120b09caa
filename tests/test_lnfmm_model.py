"""LNFMM model: config, loss terms of every variant, gradients, KL estimate, f_s, checkpoints,
input errors. Tiny sizes so the file runs in seconds on one thread."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowkit.models import LNFMM, LNFMMConfig, LNFMMInputError

VOCAB = 20
KEYS = {"loss", "kl_t", "kl_v", "logdet_fs", "align", "rec_t", "rec_v"}


def tiny(**overrides) -> LNFMMConfig:
    base = dict(
        vocab_size=VOCAB,
        max_caption_len=8,
        shared_dim=6,
        image_specific_dim=4,
        text_specific_dim=4,
        image_encoder="features",
        image_feature_dim=10,
        image_encoder_hidden=16,
        conv_encoder_channels=2,
        word_embedding_dim=8,
        text_encoder_hidden=8,
        text_encoder_layers=2,
        decoder_hidden=16,
        decoder_embedding_dim=8,
        generator_channels=2,
        discriminator_channels=2,
        feature_decoder_hidden=16,
        fs_layers=2,
        fs_hidden=16,
        fv_layers=2,
        fv_hidden=16,
        ft_layers=2,
        ft_hidden=16,
        # the model's mechanics with a trainable conv trunk; the pre-trained one: test_pretraining.py
        image_encoder_init="random",
        freeze_image_trunk=False,
    )
    base.update(overrides)
    return LNFMMConfig.small(**base)


def batch(cfg: LNFMMConfig, b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if cfg.pixels:
        images = torch.rand(b, *cfg.image_shape, generator=g)
    else:
        images = torch.randn(b, cfg.image_encoder.feature_dim, generator=g)
    captions = torch.zeros(b, cfg.max_caption_len, dtype=torch.long)
    for i in range(b):
        n = 2 + i % 4
        captions[i, 0] = 1
        captions[i, 1 : 1 + n] = torch.randint(4, cfg.vocab_size, (n,), generator=g)
        captions[i, 1 + n] = 2
    return images, captions


VARIANTS = {
    "flow": {},
    "mse": {"alignment": "mse"},
    "gaussian": {"prior": "gaussian"},
    "txt": {"image_specific_dim": 0},
    "frozen": {"freeze_image_encoder": True},
    "affine_fs_conv1x1": {"fs_coupling": "affine", "ft_conv1x1": True, "clamp": "atan"},
    "learned_variance": {"learned_variance": True},
    "own_condition": {"cross_condition": False},
    "conv": {"image_encoder": "conv"},
    "gan": {"image_encoder": "conv", "gan": True},
    "mse_image_loss": {"image_rec_loss": "mse"},
    "cross_reconstruction": {"image_encoder": "conv", "lambda_cross_t": 0.5, "lambda_cross_v": 2.0},
    "no_cross_reconstruction": {"lambda_cross_t": 0.0, "lambda_cross_v": 0.0},
    "shared_norm": {"shared_norm": "batch"},
    "shared_norm_all": {"shared_norm": "batch-all"},
    "no_text_latent": {"text_specific_dim": 0},
    "gaussian_no_text_latent": {"prior": "gaussian", "text_specific_dim": 0},
}


def expected_keys(cfg: LNFMMConfig) -> set[str]:
    keys = set(KEYS)
    keys |= {"cross_t"} if cfg.loss.cross_t > 0 else set()
    keys |= {"cross_v"} if cfg.loss.cross_v > 0 else set()
    return keys | ({"adv"} if cfg.image_decoder.gan else set())


def _weighted(cfg: LNFMMConfig, out: dict) -> torch.Tensor:
    loss = (
        cfg.loss.kl_t * out["kl_t"]
        + cfg.loss.kl_v * out["kl_v"]
        - cfg.loss.logdet * out["logdet_fs"]
        + cfg.loss.align * out["align"]
        + cfg.loss.rec_t * out["rec_t"]
        + cfg.loss.rec_v * out["rec_v"]
    )
    loss = loss + cfg.loss.cross_t * out.get("cross_t", 0.0) + cfg.loss.cross_v * out.get("cross_v", 0.0)
    loss = loss + cfg.loss.cross_v_prior * out.get("cross_v_prior", 0.0)
    return loss + cfg.loss.adv * out["adv"] if "adv" in out else loss


# -- config ------------------------------------------------------------------------------------


def test_config_roundtrip_json():
    for cfg in (LNFMMConfig.paper(), LNFMMConfig.small(vocab_size=33), tiny(gan=True, image_encoder="conv")):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert LNFMMConfig.from_dict(d) == cfg


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"alignment": "cca"}, "flows.alignment"),
        ({"prior": "vamp"}, "flows.prior"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"shared_dim": 1}, "shared_dim"),
        ({"image_specific_dim": -1}, "image_specific_dim"),
        ({"word_dropout": 1.0}, "text_decoder.word_dropout"),
        ({"lambda_kl_t": -1.0}, "loss.kl_t"),
        ({"base_std": 0.0}, "flows.base_std"),
        ({"gan": True, "image_encoder": "features"}, "image_decoder.gan"),
        ({"image_encoder": "conv", "image_size": 32}, "image_size"),
        ({"loss": {"rec_t": -1.0}}, "loss.rec_t"),
    ],
)
def test_config_validation(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        LNFMMConfig.paper(**overrides)


def test_config_unknown_key():
    d = LNFMMConfig.paper().to_dict()
    d["lambda_6"] = 1.0
    with pytest.raises(ValueError, match="lambda_6"):
        LNFMMConfig.from_dict(d)


def test_paper_preset_sizes():
    cfg = LNFMMConfig.paper()
    assert (cfg.shared_dim, cfg.image_specific_dim, cfg.text_specific_dim) == (992, 64, 32)
    assert (cfg.image_code_dim, cfg.text_code_dim) == (1056, 1024)
    assert (cfg.loss.kl_t, cfg.loss.kl_v, cfg.loss.logdet, cfg.loss.rec_t, cfg.loss.rec_v) == (1, 5000, 200, 0.6, 20)
    model = LNFMM(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    h, d = 1024, 992 // 2
    # f_s: 12 steps x 4 additive couplings (496 -> 1024 -> 496) + a 992-d scale per step
    assert count(model.f_s) == 12 * (4 * (d * h + h + h * d + d) + 992)
    # f_t: 16 x [cond. actnorm 992 -> 1024 -> 64, coupling (16 + 992) -> 1024 -> 32]
    assert count(model.f_t) == 16 * ((992 * h + h + h * 64 + 64) + ((16 + 992) * h + h + h * 32 + 32))
    # f_v: 16 x [cond. actnorm 992 -> 512 -> 128, coupling (32 + 992) -> 512 -> 64]
    assert count(model.f_v) == 16 * ((992 * 512 + 512 + 512 * 128 + 128) + ((32 + 992) * 512 + 512 + 512 * 64 + 64))
    enc = model.image_encoder
    assert enc.body[0].in_features == 4096 and enc.body[0].out_features == 2048
    assert enc.head.mean.out_features == 1056
    assert model.text_encoder.gru.hidden_size == 1024 and model.text_encoder.gru.num_layers == 2
    assert model.text_encoder.gru.bidirectional and model.text_encoder.head.mean.out_features == 1024
    assert model.text_decoder.lstm.hidden_size == 512
    assert model.text_decoder.lstm.input_size == 512 + 1024
    # one cheap forward at full size (batch 2, eval) keeps the wiring honest
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 4096), torch.tensor([[1, 5, 9, 2], [1, 7, 2, 0]]))
    assert all(torch.isfinite(v) for v in out.values())


# -- loss terms --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_loss_terms(name):
    torch.manual_seed(0)
    cfg = tiny(**VARIANTS[name])
    model = LNFMM(cfg)
    images, captions = batch(cfg)
    out = model(images, captions)
    assert set(out) == expected_keys(cfg)
    for k, v in out.items():
        assert v.shape == () and torch.isfinite(v), (k, v)
    torch.testing.assert_close(out["loss"], _weighted(cfg, out))
    assert out["rec_t"] > 0 and out["rec_v"] > 0 and out["align"] > 0
    if cfg.flows.alignment == "mse":
        assert model.f_s is None and out["logdet_fs"] == 0
    if cfg.image_specific_dim == 0:
        assert model.f_v is None and out["kl_v"] == 0
    else:
        assert out["kl_v"] != 0
    if cfg.text_specific_dim == 0:
        assert model.f_t is None and out["kl_t"] == 0
    out["loss"].backward()


# the switches of forward: which terms exist, how they are weighed, which carry a graph
SWITCH_CASES = {
    "small": ({}, "both", False),
    "labeled": ({}, "both", True),
    "free_bits": ({"kl_free_nats": 1e4}, "both", True),
    "own_condition_cross_v": ({"cross_condition": False, "lambda_cross_v": 0.5, "image_encoder": "conv"}, "both", True),
    "align_text_target_rec_t": ({"align_text_target": True, "lambda_rec_t": 0.3, "lambda_cross_t": 0.0}, "both", False),
    "no_rec_v": ({"lambda_rec_v": 0.0, "lambda_cross_v": 2.0, "image_rec_loss": "mse"}, "both", False),
    "gan": ({"image_encoder": "conv", "gan": True, "kl_free_nats": 0.5}, "both", True),
    "gan_images_only": ({"image_encoder": "conv", "gan": True}, "images", False),
    "captions_only": ({}, "captions", False),
    "captioning": ({"preset": "captioning"}, "both", False),
    "text_to_image": ({"preset": "text_to_image"}, "both", True),
}


def _switch_model(overrides: dict) -> LNFMM:
    overrides = dict(overrides)
    preset = overrides.pop("preset", None)
    if preset is None:
        return LNFMM(tiny(**overrides))
    sizes = dict(
        vocab_size=VOCAB,
        max_caption_len=8,
        shared_dim=6,
        image_specific_dim=4,
        text_specific_dim=4,
        image_encoder_hidden=16,
        word_embedding_dim=8,
        text_encoder_hidden=8,
        text_encoder_layers=1,
        decoder_hidden=16,
        decoder_embedding_dim=8,
        generator_channels=4,
        feature_decoder_hidden=16,
        fs_layers=2,
        fs_hidden=16,
        fv_layers=2,
        fv_hidden=16,
        ft_layers=2,
        ft_hidden=16,
    )
    if preset == "captioning":
        return LNFMM(LNFMMConfig.captioning(image_feature_dim=10, **sizes))
    from flowkit.data.classifier import AttributeClassifier

    model = LNFMM(LNFMMConfig.text_to_image_pixels(**sizes))
    # a random trunk stands in for the pre-trained one
    model.image_encoder.cells.load_state_dict(AttributeClassifier().net[:-1].state_dict())
    model.image_trunk_initialized = True
    return model


def _reference_loss(cfg: LNFMMConfig, out: dict) -> torch.Tensor:
    # Eq. 10 written out from the config, with free bits on the KL terms
    free = cfg.loss.kl_free_nats
    kl_t = out["kl_t"].clamp(min=free) if free > 0 else out["kl_t"]
    kl_v = out["kl_v"].clamp(min=free) if free > 0 else out["kl_v"]
    loss = (
        cfg.loss.kl_t * kl_t
        + cfg.loss.kl_v * kl_v
        - cfg.loss.logdet * out["logdet_fs"]
        + cfg.loss.align * out["align"]
        + cfg.loss.rec_t * out["rec_t"]
        + cfg.loss.rec_v * out["rec_v"]
    )
    for name, weight in (("cross_t", cfg.loss.cross_t), ("cross_v", cfg.loss.cross_v), ("adv", cfg.loss.adv)):
        if name in out:
            loss = loss + weight * out[name]
    return loss


@pytest.mark.parametrize("name", list(SWITCH_CASES))
def test_loss_is_the_weighted_sum_of_the_terms_the_switches_enable(name):
    from flowkit.models.lnfmm.model import LOSS_WEIGHTS

    overrides, domains, with_mask = SWITCH_CASES[name]
    torch.manual_seed(0)
    model = _switch_model(overrides)
    cfg = model.config
    images, captions = batch(cfg, b=4)
    if cfg.pixels:
        images = torch.rand(4, *cfg.image_shape, generator=torch.Generator().manual_seed(1))
    labeled = torch.tensor([True, False, True, True]) if with_mask else None
    images, captions = (None if domains == "captions" else images), (None if domains == "images" else captions)
    out = model(images, captions, labeled)
    paired = images is not None and captions is not None
    expected = set(KEYS)
    expected |= {"cross_t"} if paired and cfg.loss.cross_t > 0 else set()
    expected |= {"cross_v"} if paired and cfg.loss.cross_v > 0 else set()
    expected |= {"adv"} if cfg.image_decoder.gan and images is not None else set()
    assert set(out) == expected
    assert set(out) - {"loss"} <= set(LOSS_WEIGHTS) and all(hasattr(cfg.loss, a) for a in LOSS_WEIGHTS.values())
    assert torch.equal(out["loss"], _reference_loss(cfg, out))
    # a reconstruction weighted 0 is a diagnostic computed without a graph
    if captions is not None:
        assert out["rec_t"].requires_grad == (cfg.loss.rec_t > 0)
    if images is not None:
        assert out["rec_v"].requires_grad == (cfg.loss.rec_v > 0)
    out["loss"].backward()


def test_shared_norm_standardizes_both_shared_codes_and_keeps_the_specific_ones():
    torch.manual_seed(0)
    cfg = tiny(shared_norm="batch")
    model = LNFMM(cfg)
    images, captions = batch(cfg, b=16)
    S = cfg.shared_dim
    model.train()
    img, txt = model.encode_images(images), model.encode_captions(captions)
    raw = model.image_encoder(images)[0]
    for code, unnormed in ((img["shared"], raw[:, :S]), (txt["shared"], model.text_encoder(captions)[0][:, :S])):
        expected = (unnormed - unnormed.mean(0)) / (unnormed.var(0, unbiased=False) + 1e-5).sqrt()
        torch.testing.assert_close(code, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(code.mean(0), torch.zeros(S), atol=1e-5, rtol=0)
    torch.testing.assert_close(img["specific"], raw[:, S:])
    # eval mode uses the running statistics: one row is encoded the same alone or in a batch
    model.eval()
    one = model.encode_images(images[:1])["shared"]
    torch.testing.assert_close(one, model.encode_images(images)["shared"][:1])
    assert {"image_shared_norm.running_mean", "text_shared_norm.running_var"} <= set(model.state_dict())


def test_batch_all_norm_standardizes_the_specific_codes_too():
    torch.manual_seed(0)
    cfg = tiny(shared_norm="batch-all")
    model = LNFMM(cfg).train()
    images, captions = batch(cfg, b=16)
    for code, raw in (
        (model.encode_images(images)["code"], model.image_encoder(images)[0]),
        (model.encode_captions(captions)["code"], model.text_encoder(captions)[0]),
    ):
        expected = (raw - raw.mean(0)) / (raw.var(0, unbiased=False) + 1e-5).sqrt()
        torch.testing.assert_close(code, expected, atol=1e-4, rtol=1e-4)


def test_shared_norm_keeps_the_code_scale_under_the_alignment_term():
    # the alignment term alone shrinks unnormalized codes towards a constant; normalized ones cannot
    def final_scale(norm: str) -> float:
        torch.manual_seed(0)
        cfg = tiny(shared_norm=norm, lambda_kl_t=0, lambda_kl_v=0, lambda_rec_t=0, lambda_rec_v=0, lambda_cross_t=0, lambda_logdet=0)
        model = LNFMM(cfg)
        images, captions = batch(cfg, b=16)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(60):
            loss = model(images, captions)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(model.encode_captions(captions)["shared"].var(0).sum())

    shared = tiny().shared_dim
    assert final_scale("none") < 0.05 * shared
    assert final_scale("batch") > 0.5 * shared


def test_free_bits_clamp_the_kl_in_the_loss_only():
    torch.manual_seed(0)
    cfg = tiny(kl_free_nats=1e4)
    model = LNFMM(cfg).eval()
    images, captions = batch(cfg)
    out = model(images, captions)
    free = LNFMM(tiny()).eval()
    free.load_state_dict(model.state_dict())
    ref = free(images, captions)
    for k in ("kl_t", "kl_v", "rec_t", "align"):
        torch.testing.assert_close(out[k], ref[k])  # the logged terms are the true ones
    shift = cfg.loss.kl_t * (1e4 - ref["kl_t"]) + cfg.loss.kl_v * (1e4 - ref["kl_v"])
    torch.testing.assert_close(out["loss"], ref["loss"] + shift)
    # below the threshold the KL gets no gradient
    model.train()
    out = model(images, captions)
    out["loss"].backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.f_t.parameters())


def test_cross_reconstruction_decodes_from_the_other_domains_shared_code():
    # cross_t is the caption NLL given [f_s(z_s^v), z'_t]: what captioning decodes at inference;
    # cross_v the image error given [f_s^-1(z_s^t), z'_v]: what text-to-image decodes.
    torch.manual_seed(0)
    cfg = tiny(lambda_cross_t=1.0, lambda_cross_v=1.0, image_rec_loss="mse")
    model = LNFMM(cfg).eval()
    images, captions = batch(cfg)
    out = model(images, captions)
    S = cfg.shared_dim
    with torch.no_grad():
        mu_v, _ = model.image_encoder(images)
        mu_t, _ = model.text_encoder(captions)
        fs_v, _ = model.f_s(mu_v[:, :S])
        back, _ = model.f_s.inverse(mu_t[:, :S])
        logits = model.text_decoder(captions[:, :-1], torch.cat([fs_v, mu_t[:, S:]], dim=1))
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), captions[:, 1:], ignore_index=0, reduction="none")
        recon = model.image_decoder(torch.cat([back, mu_v[:, S:]], dim=1))
    torch.testing.assert_close(out["cross_t"], nll.sum(dim=1).mean())
    torch.testing.assert_close(out["cross_v"], (recon - images).square().sum(dim=1).mean())
    # an image-only or caption-only batch has no pair to cross
    assert "cross_t" not in model(None, captions) and "cross_v" not in model(images, None)
    # unlabeled rows are left out of the cross terms like the alignment
    labeled = torch.tensor([True, False, True, False])
    part = model(images, captions, labeled=labeled)
    torch.testing.assert_close(part["cross_t"], nll.sum(dim=1)[labeled].mean())


def test_cross_v_prior_decodes_a_prior_sample_and_trains_the_decoder_only():
    # cross_v_prior: the image from [f_s^-1(z_s^t), z'_v ~ p(z'_v | f_s^-1(z_s^t))], as
    # text-to-image draws it; the prior is trained by kl_v alone.
    torch.manual_seed(0)
    cfg = tiny(image_rec_loss="mse").replace(loss={"cross_v_prior": 2.0})
    model = LNFMM(cfg)
    images, captions = batch(cfg)
    assert "cross_v_prior" not in LNFMM(tiny(image_rec_loss="mse"))(images, captions)
    out = model(images, captions)
    assert torch.isfinite(out["cross_v_prior"]) and out["cross_v_prior"] > 0
    torch.testing.assert_close(out["loss"], _weighted(cfg, out))
    out["cross_v_prior"].backward()
    assert all(p.grad is None for p in model.f_v.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.image_decoder.parameters())
    assert "cross_v_prior" not in model(images, None)  # no caption, no prior context


def test_align_text_target_stops_the_alignment_gradient_into_the_text_encoder():
    torch.manual_seed(0)
    for detach in (False, True):
        model = LNFMM(tiny(align_text_target=detach))
        images, captions = batch(model.config)
        model(images, captions)["align"].backward()
        text_grad = sum(p.grad.abs().sum() for p in model.text_encoder.parameters() if p.grad is not None)
        image_grad = sum(p.grad.abs().sum() for p in model.image_encoder.parameters() if p.grad is not None)
        assert image_grad > 0
        assert (text_grad == 0) if detach else (text_grad > 0)


def test_semi_supervised_masks():
    torch.manual_seed(0)
    cfg = tiny()
    model = LNFMM(cfg).eval()
    images, captions = batch(cfg, b=6)
    labeled = torch.tensor([True, True, False, True, False, False])
    out = model(images, captions, labeled)
    # unlabeled rows do not reach the alignment terms: changing their captions changes nothing there
    other = captions.clone()
    other[~labeled, 1] = (other[~labeled, 1] + 1 - 4) % (VOCAB - 4) + 4
    out2 = model(images, other, labeled)
    torch.testing.assert_close(out["align"], out2["align"])
    torch.testing.assert_close(out["logdet_fs"], out2["logdet_fs"])
    assert not torch.allclose(out["rec_t"], out2["rec_t"])
    # align over labeled rows equals the fully paired loss of those rows alone
    sub = model(images[labeled], captions[labeled])
    torch.testing.assert_close(out["align"], sub["align"])
    # nothing labeled: no gradient reaches f_s
    model.train()
    none = model(images, captions, torch.zeros(6, dtype=torch.bool))
    assert none["align"] == 0 and none["logdet_fs"] == 0
    none["loss"].backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.f_s.parameters())


def test_single_domain_batches():
    torch.manual_seed(0)
    cfg = tiny()
    model = LNFMM(cfg)
    images, captions = batch(cfg)
    img = model(images, None)
    assert img["kl_t"] == 0 and img["rec_t"] == 0 and img["align"] == 0 and img["rec_v"] > 0
    img["loss"].backward()
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert all(p.grad is None for p in model.text_decoder.parameters())
    assert any(p.grad is not None for p in model.f_v.parameters())
    model.zero_grad(set_to_none=True)
    txt = model(None, captions)
    assert txt["kl_v"] == 0 and txt["rec_v"] == 0 and txt["rec_t"] > 0
    txt["loss"].backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert all(p.grad is None for p in model.image_decoder.parameters())


# -- gradients ---------------------------------------------------------------------------------


def _steps(model: LNFMM, images, captions, n: int) -> None:
    opt = torch.optim.Adam(model.optimizer_groups(), lr=1e-2)
    d_opt = torch.optim.Adam([model.discriminator_group()]) if model.discriminator is not None else None
    for _ in range(n):
        opt.zero_grad()
        model(images, captions)["loss"].backward()
        opt.step()
        if d_opt is not None:
            d_opt.zero_grad()
            model.discriminator_loss(images, captions).backward()
            d_opt.step()


@pytest.mark.parametrize("name", ["flow", "gan", "gaussian", "affine_fs_conv1x1"])
def test_gradients_reach_every_part(name):
    # zero-initialized last layers (couplings, actnorm nets, attention gamma) block gradients to
    # the layers before them at step 0, so check after two optimizer steps
    torch.manual_seed(0)
    cfg = tiny(**VARIANTS[name])
    model = LNFMM(cfg)
    images, captions = batch(cfg)
    _steps(model, images, captions, 2)
    model.zero_grad(set_to_none=True)
    model(images, captions)["loss"].backward()
    trainable = {id(p) for g in model.optimizer_groups() for p in g["params"]}
    missing = [n for n, p in model.named_parameters() if id(p) in trainable and (p.grad is None or p.grad.abs().max() == 0)]
    assert not missing, f"parameters without gradient: {missing}"
    if model.discriminator is not None:
        model.zero_grad(set_to_none=True)
        model.discriminator_loss(images, captions).backward()
        missing = [n for n, p in model.discriminator.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
        assert not missing, f"discriminator parameters without gradient: {missing}"
        gen = [p for p in model.image_decoder.parameters() if p.grad is not None and p.grad.abs().max() > 0]
        assert not gen, "the discriminator loss must not train the generator"


def test_frozen_encoder_gets_no_gradient():
    torch.manual_seed(0)
    cfg = tiny(freeze_image_encoder=True)
    model = LNFMM(cfg)
    assert "image_encoder" not in [g["name"] for g in model.optimizer_groups()]
    images, captions = batch(cfg)
    model(images, captions)["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in model.image_encoder.parameters())
    assert any(p.grad is not None for p in model.image_decoder.parameters())


def test_optimizer_groups_format():
    cfg = tiny(image_encoder="conv", gan=True)
    model = LNFMM(cfg)
    groups = model.optimizer_groups()
    names = [g["name"] for g in groups]
    assert names == ["image_encoder", "text_encoder", "text_decoder", "image_decoder", "f_s", "f_t", "f_v"]
    by = {g["name"]: g for g in groups}
    assert by["image_encoder"]["lr"] == cfg.optim.image_encoder_lr and by["f_t"]["lr"] == cfg.optim.lr
    assert by["f_v"]["clip_value"] == cfg.optim.fv_grad_clip and by["f_s"]["clip_value"] == cfg.optim.grad_clip
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    disc = {id(p) for p in model.discriminator_parameters()}
    assert disc and not disc & set(ids)
    everything = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(ids) | disc == everything
    paper = LNFMMConfig.paper()
    assert (paper.optim.lr, paper.optim.image_encoder_lr, paper.optim.grad_clip, paper.optim.fv_grad_clip) == (1e-4, 1e-5, 1.0, 5.0)
    torch.optim.Adam(groups)  # the format is accepted as is


# -- KL, f_s -----------------------------------------------------------------------------------


def test_kl_matches_monte_carlo_reference():
    """kl_t and kl_v (one reparameterized sample per row) averaged over many rows against an
    independent estimate: torch.distributions for q, the flows' log_prob for p."""
    torch.manual_seed(0)
    cfg = tiny(noise_std=0.3, text_noise_std=0.2, image_noise_std=0.1)
    model = LNFMM(cfg)
    with torch.no_grad():  # make the flows non-trivial (their last layers start at zero)
        for flow in (model.f_s, model.f_t, model.f_v):
            for p in flow.parameters():
                p.add_(0.3 * torch.randn_like(p))
    images, captions = batch(cfg, b=1, seed=3)
    n = 4000
    images, captions = images.expand(n, -1).contiguous(), captions.expand(n, -1).contiguous()
    S = cfg.shared_dim
    with torch.no_grad():
        out = model.eval()(images, captions, sample_posterior=True)
        mu_v, mu_t = model.image_encoder(images[:1])[0][0], model.text_encoder(captions[:1])[0][0]
        std_v = torch.tensor([0.3] * S + [math.hypot(0.3, 0.1)] * cfg.image_specific_dim)
        std_t = torch.tensor([0.3] * S + [math.hypot(0.3, 0.2)] * cfg.text_specific_dim)
        qv, qt = torch.distributions.Normal(mu_v, std_v), torch.distributions.Normal(mu_t, std_t)
        zv, zt = qv.sample((n,)), qt.sample((n,))
        fs_v = model.f_s(zv[:, :S])[0]  # paired rows: f_t conditions on f_s(z_s^v)
        back = model.f_s.inverse(zt[:, :S])[0]  # and f_v on f_s^-1(z_s^t)
        kl_t = qt.log_prob(zt)[:, S:].sum(1) - model.f_t.log_prob(zt[:, S:], context=fs_v)
        kl_v = qv.log_prob(zv)[:, S:].sum(1) - model.f_v.log_prob(zv[:, S:], context=back)
    for key, ref in (("kl_t", kl_t), ("kl_v", kl_v)):
        se = ref.std() / math.sqrt(n)
        assert abs(out[key] - ref.mean()) < 5 * se * math.sqrt(2), (key, out[key].item(), ref.mean().item(), se.item())


def test_fs_invertible_in_model_float64():
    torch.manual_seed(0)
    for coupling in ("additive", "affine"):
        model = LNFMM(tiny(fs_coupling=coupling)).double()
        with torch.no_grad():
            for p in model.f_s.parameters():
                p.add_(0.5 * torch.randn_like(p))
        z = torch.randn(16, 6, dtype=torch.float64)
        y, ladj = model.f_s(z)
        x, inv_ladj = model.f_s.inverse(y)
        assert y.dtype == torch.float64 and not torch.allclose(y, z)
        torch.testing.assert_close(x, z, atol=1e-10, rtol=0)
        torch.testing.assert_close(ladj, -inv_ladj, atol=1e-10, rtol=0)
        jac = torch.autograd.functional.jacobian(lambda v: model.f_s(v.unsqueeze(0))[0].squeeze(0), z[0])
        torch.testing.assert_close(ladj[0], torch.linalg.slogdet(jac)[1], atol=1e-8, rtol=0)
        # the captioning condition is f_s of the image shared code
        feats = torch.randn(3, 10, dtype=torch.float64)
        enc = model.encode_images(feats)
        torch.testing.assert_close(enc["shared_text"], model.f_s(enc["shared"])[0])


# -- checkpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["flow", "gan"])
def test_checkpoint_roundtrip_identical_eval_losses(name, tmp_path):
    torch.manual_seed(0)
    cfg = tiny(**VARIANTS[name])
    model = LNFMM(cfg)
    images, captions = batch(cfg)
    _steps(model, images, captions, 2)  # move batch-norm statistics and spectral-norm vectors
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    fresh = LNFMM(LNFMMConfig.from_dict(ckpt["config"]))
    fresh.load_state_dict(ckpt["model"])
    model.eval(), fresh.eval()
    with torch.no_grad():
        a, b = model(images, captions), fresh(images, captions)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# -- input errors ------------------------------------------------------------------------------


def test_bad_inputs_features():
    cfg = tiny()
    model = LNFMM(cfg)
    images, captions = batch(cfg)
    bad = captions.clone()
    bad[0, 1] = VOCAB + 3
    with pytest.raises(LNFMMInputError, match=rf"{VOCAB + 3}.*vocab_size={VOCAB}|vocab_size={VOCAB}.*{VOCAB + 3}"):
        model(images, bad)
    with pytest.raises(LNFMMInputError, match="vocab_size"):
        model(images, captions - 5)
    with pytest.raises(LNFMMInputError, match=r"\(batch, 10\).*feature size 12"):
        model(torch.randn(4, 12), captions)
    with pytest.raises(LNFMMInputError, match="empty batch"):
        model(images[:0], captions[:0])
    with pytest.raises(LNFMMInputError, match="mismatched batch sizes: 3 images and 4 captions"):
        model(images[:3], captions)
    with pytest.raises(LNFMMInputError, match="integer"):
        model(images, captions.float())
    with pytest.raises(LNFMMInputError, match="labeled"):
        model(images, captions, torch.ones(3, dtype=torch.bool))
    with pytest.raises(LNFMMInputError, match="images, captions or both"):
        model(None, None)
    with pytest.raises(LNFMMInputError, match="all padding"):
        model(images, torch.tensor([[1, 0, 0]] * 4))


def test_bad_inputs_pixels():
    cfg = tiny(image_encoder="conv")
    model = LNFMM(cfg)
    _, captions = batch(cfg)
    with pytest.raises(LNFMMInputError, match=r"\(batch, 3, 64, 64\).*\(4, 3, 32, 32\)"):
        model(torch.rand(4, 3, 32, 32), captions)
    with pytest.raises(LNFMMInputError, match=r"\(batch, 3, 64, 64\)"):
        model(torch.rand(4, 64, 64, 3), captions)
    with pytest.raises(LNFMMInputError, match="NaN"):
        model(torch.full((4, 3, 64, 64), float("nan")), captions)


def test_vgg16_encoder_fails_clearly_without_torchvision():
    try:
        import torchvision  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("torchvision imports here; the error path cannot be exercised")
    with pytest.raises(ImportError, match="image_encoder='features'"):
        LNFMM(tiny(image_encoder="vgg16"))
