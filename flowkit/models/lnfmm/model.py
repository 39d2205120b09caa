r"""LNFMM: latent normalizing flows for many-to-many cross-domain mappings (ICLR 2020).

The model (paper Fig. 2, appendix A.1; official code github.com/visinf/lnfmm):

* image encoder :math:`x_v \mapsto z_v = [z_s^v, z'_v]`, text encoder :math:`x_t \mapsto z_t = [z_s^t, z'_t]`,
  Gaussian posteriors with reparameterization;
* :math:`f_s`: a bijection from the shared image code to the shared text code;
* conditional flow priors :math:`p(z'_t | z_s)` (``f_t``, conditioned on a *text-space* shared
  code) and :math:`p(z'_v | z_s)` (``f_v``, conditioned on an *image-space* shared code);
* an LSTM text decoder on :math:`[z_s^t, z'_t]` and an image decoder on :math:`[z_s^v, z'_v]`.

Loss (Eq. 10): ``l1 kl_t + l2 kl_v - l3 logdet_fs + align + l4 rec_t + l5 rec_v`` (+ ``adv``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from flowkit._validation import check_positive_int
from flowkit.models.lnfmm.config import LNFMMConfig
from flowkit.models.lnfmm.decoders import Discriminator64, FeatureDecoder, Generator64, TextDecoder
from flowkit.models.lnfmm.encoders import CellEncoder, ConvEncoder, FeatureEncoder, TextEncoder, VGG16Encoder
from flowkit.models.lnfmm.priors import ConditionalGaussian, build_fs, build_prior_flow
from flowkit.models.lnfmm.sampling import beam_search, greedy_decode, sample_decode
from flowkit.transforms.base import _is_compiling

__all__ = ["LNFMM", "LNFMMInputError"]

_LOG_2PI = math.log(2 * math.pi)


class LNFMMInputError(ValueError):
    r"""Raised for inputs the model cannot take (shapes, ids, batch sizes)."""


def _gaussian_log_q(eps: Tensor, std: Tensor) -> Tensor:
    r"""log N(mu + std * eps; mu, std^2), summed over the last dim (exact, no sampling noise)."""
    return (-0.5 * eps.square() - torch.log(std) - 0.5 * _LOG_2PI).sum(dim=-1)


def _masked_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


#: The loss's weights: term name -> the field of ``config.loss`` (:class:`LossConfig`) that
#: weighs it, in summation order.
LOSS_WEIGHTS: dict[str, str] = {
    "kl_t": "kl_t",
    "kl_v": "kl_v",
    "logdet_fs": "logdet",
    "align": "align",
    "rec_t": "rec_t",
    "rec_v": "rec_v",
    "cross_t": "cross_t",
    "cross_v": "cross_v",
    "cross_v_prior": "cross_v_prior",
    "adv": "adv",
}
#: Terms subtracted from the loss (the log-determinant of f_s is maximized).
SUBTRACTED_TERMS = frozenset({"logdet_fs"})
#: Terms clamped below at ``loss.kl_free_nats`` in the loss (free bits); the logged values are not.
FREE_BITS_TERMS = frozenset({"kl_t", "kl_v"})
#: The terms every forward returns (0 where absent).
_CORE_TERMS = ("kl_t", "kl_v", "logdet_fs", "align", "rec_t", "rec_v")


@dataclass(frozen=True)
class _Code:
    r"""One domain's posterior code ``z = mu + std * eps = [shared, specific]``."""

    z: Tensor
    eps: Tensor
    std: Tensor
    shared: Tensor
    specific: Tensor


def _image_encoder(cfg: LNFMMConfig) -> nn.Module:
    r"""The image encoder of ``cfg.image_encoder.kind``, frozen as the config says."""
    c, lv = cfg.image_encoder, cfg.posterior.learned_variance
    if c.kind == "features":
        encoder: nn.Module = FeatureEncoder(c.feature_dim, c.hidden, cfg.image_code_dim, lv)
    elif c.kind == "conv":
        encoder = ConvEncoder(c.conv_channels, c.hidden, cfg.image_code_dim, lv)
    elif c.kind == "cells":
        encoder = CellEncoder(c.hidden, cfg.image_code_dim, lv)
    else:
        encoder = VGG16Encoder(c.hidden, cfg.image_code_dim, lv)
    if c.freeze:
        # LNFMM (pre-trained): the image codes stay fixed, everything else adapts to them
        encoder.requires_grad_(False)
    if c.freeze_trunk:
        # a pre-trained trunk keeps its features; the code head still adapts
        encoder.freeze_trunk()
    return encoder


def _prior(cfg: LNFMMConfig, dim: int, layers: int, hidden: int, conv1x1: bool) -> nn.Module | None:
    r"""The conditional prior of a ``dim``-d specific code given the shared code (None for 0)."""
    if dim == 0:
        return None
    f = cfg.flows
    if f.prior == "flow":
        return build_prior_flow(dim, cfg.shared_dim, layers, hidden, conv1x1, f.clamp, f.base_std)
    return ConditionalGaussian(dim, cfg.shared_dim, hidden, f.base_std)


class LNFMM(nn.Module):
    r"""The LNFMM model for image captioning and text-to-image synthesis.

    Which shared code conditions which prior: ``f_t`` models :math:`p(z'_t | z_s)` with
    :math:`z_s` in *text space* (the space of the text encoder's shared code and of
    :math:`f_s`'s output); ``f_v`` models :math:`p(z'_v | z_s)` with :math:`z_s` in *image space*.
    In training, paired rows condition on the other domain's code mapped through :math:`f_s`
    (``f_t`` on :math:`f_s(z_s^v)`, ``f_v`` on :math:`f_s^{-1}(z_s^t)`), as the official code
    does and as inference does (``flows.cross_condition=False``: each on its own code); unpaired
    rows always use their own code.

    Arguments:
        config: The configuration (:class:`LNFMMConfig`).

    Example (with a random image trunk: the small preset's pre-trained one is set up by
    :func:`flowkit.training.train`):
        >>> model = LNFMM(LNFMMConfig.small(vocab_size=20, image_encoder_init="random", freeze_image_trunk=False))
        >>> images = torch.rand(4, 3, 64, 64)
        >>> captions = torch.tensor([[1, 5, 6, 2, 0, 0]] * 4)
        >>> out = model(images, captions)
        >>> sorted(out)
        ['align', 'cross_t', 'kl_t', 'kl_v', 'logdet_fs', 'loss', 'rec_t', 'rec_v']
        >>> model.sample_captions(images, num_samples=3).shape[:2]
        torch.Size([4, 3])
    """

    def __init__(self, config: LNFMMConfig) -> None:
        super().__init__()
        if not isinstance(config, LNFMMConfig):
            raise TypeError(f"config must be an LNFMMConfig, got {type(config).__name__}")
        cfg = config
        self.config = cfg
        S = cfg.shared_dim
        lv = cfg.posterior.learned_variance

        # -- encoders --------------------------------------------------------------------------
        self.image_encoder: nn.Module = _image_encoder(cfg)
        # image_encoder.init is applied by flowkit.training (initialize_image_encoder) or comes
        # with loaded weights; training without it (a frozen random trunk) gets a warning
        self.image_trunk_initialized = cfg.image_encoder.init == "random"
        self.text_encoder = TextEncoder(
            cfg.vocab_size, cfg.text_encoder.embedding_dim, cfg.text_encoder.hidden, cfg.text_encoder.layers, cfg.text_code_dim, lv
        )

        # -- decoders --------------------------------------------------------------------------
        self.text_decoder = TextDecoder(
            cfg.vocab_size,
            cfg.text_code_dim,
            cfg.text_decoder.embedding_dim,
            cfg.text_decoder.hidden,
            cfg.text_decoder.word_dropout,
            cfg.text_decoder.embedding_dropout,
        )
        if cfg.pixels:
            self.image_decoder: nn.Module = Generator64(cfg.image_code_dim, S, cfg.image_decoder.generator_channels)
        else:
            self.image_decoder = FeatureDecoder(cfg.image_code_dim, cfg.image_encoder.feature_dim, cfg.image_decoder.feature_hidden)
        self.discriminator = Discriminator64(S, cfg.image_decoder.discriminator_channels) if cfg.image_decoder.gan else None

        # -- flows -----------------------------------------------------------------------------
        self.f_s = (
            build_fs(S, cfg.flows.fs_layers, cfg.flows.fs_hidden, cfg.flows.fs_coupling, cfg.flows.clamp)
            if cfg.flows.alignment == "flow"
            else None
        )
        self.f_t = _prior(cfg, cfg.text_specific_dim, cfg.flows.ft_layers, cfg.flows.ft_hidden, cfg.flows.ft_conv1x1)
        self.f_v = _prior(cfg, cfg.image_specific_dim, cfg.flows.fv_layers, cfg.flows.fv_hidden, False)

        # -- shared-code normalization: the codes cannot shrink below the fixed noise ---------------
        # (batch statistics in training, running ones in eval; no affine part, so no scale to lose)
        # ("batch-all": the specific codes too; the modules keep their names for old checkpoints)
        full = cfg.posterior.shared_norm == "batch-all"
        self.image_shared_norm = self._code_norm(S + cfg.image_specific_dim if full else S)
        self.text_shared_norm = self._code_norm(S + cfg.text_specific_dim if full else S)

        # -- fixed posterior std (official: 0.05 on every dim; +0.10 on z'_t, +0.05 on z'_v) -----
        # independent noises add in variance, hence the square root
        self.register_buffer("image_std", self._std_vector(cfg.image_specific_dim, cfg.posterior.image_noise_std), persistent=False)
        self.register_buffer("text_std", self._std_vector(cfg.text_specific_dim, cfg.posterior.text_noise_std), persistent=False)

    def _code_norm(self, dims: int) -> nn.BatchNorm1d | None:
        return nn.BatchNorm1d(dims, affine=False, momentum=0.01) if self.config.posterior.shared_norm != "none" else None

    def _std_vector(self, specific: int, extra: float) -> Tensor:
        cfg = self.config
        shared = torch.full((cfg.shared_dim,), float(cfg.posterior.noise_std))
        spec = torch.full((specific,), math.sqrt(cfg.posterior.noise_std**2 + extra**2))
        return torch.cat([shared, spec])

    # ------------------------------------------------------------------------------------------
    # validation
    # ------------------------------------------------------------------------------------------
    def _check_images(self, images: Tensor, name: str = "images") -> int:
        cfg = self.config
        if not isinstance(images, Tensor):
            raise LNFMMInputError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
        if _is_compiling():
            return images.shape[0]
        if cfg.pixels:
            expected = cfg.image_shape
            if images.dim() != 4 or tuple(images.shape[1:]) != expected:
                raise LNFMMInputError(
                    f"{name}: expected pixels of shape (batch, {', '.join(map(str, expected))}) for "
                    f"image_encoder.kind={cfg.image_encoder.kind!r}, got {tuple(images.shape)}"
                )
        else:
            if images.dim() != 2 or images.shape[1] != cfg.image_encoder.feature_dim:
                got = images.shape[-1] if images.dim() >= 1 else "a scalar"
                raise LNFMMInputError(
                    f"{name}: expected features of shape (batch, {cfg.image_encoder.feature_dim}) (image_encoder.feature_dim), "
                    f"got shape {tuple(images.shape)} (feature size {got})"
                )
        if images.shape[0] == 0:
            raise LNFMMInputError(f"{name}: empty batch (0 rows)")
        if not images.is_floating_point():
            raise LNFMMInputError(f"{name} must be floating point, got {images.dtype}")
        if not torch.isfinite(images).all():
            raise LNFMMInputError(f"{name} contain NaN or inf")
        self._check_image_values(images, name)
        return images.shape[0]

    def _check_image_values(self, images: Tensor, name: str) -> None:
        # The dtype of the weights (unless autocast casts) and, for pixels, the documented [0, 1].
        dtype = next(self.parameters()).dtype
        if images.dtype != dtype and not torch.is_autocast_enabled(images.device.type):
            raise LNFMMInputError(f"{name} are {images.dtype} but the model is {dtype}: pass {name}.to({dtype}) (or convert the model)")
        if self.config.pixels:
            lo, hi = torch.aminmax(images)
            if float(lo) < 0.0 or float(hi) > 1.0:
                raise LNFMMInputError(
                    f"{name}: pixels must be in [0, 1], got values in [{float(lo):.4g}, {float(hi):.4g}]"
                    + ("; divide 8-bit pixels by 255" if float(hi) > 1.0 else "")
                )

    def _check_captions(self, captions: Tensor, name: str = "captions") -> int:
        cfg = self.config
        if not isinstance(captions, Tensor):
            raise LNFMMInputError(f"{name} must be a torch.Tensor of token ids, got {type(captions).__name__}")
        if _is_compiling():
            return captions.shape[0]
        if captions.dim() != 2:
            raise LNFMMInputError(f"{name}: expected token ids of shape (batch, length), got {tuple(captions.shape)}")
        if captions.shape[0] == 0:
            raise LNFMMInputError(f"{name}: empty batch (0 rows)")
        if captions.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise LNFMMInputError(f"{name} must be integer token ids, got {captions.dtype}")
        if captions.shape[1] < 2:
            raise LNFMMInputError(f"{name}: need at least 2 tokens per row (start, end), got length {captions.shape[1]}")
        lo, hi = int(captions.min()), int(captions.max())
        if lo < 0 or hi >= cfg.vocab_size:
            bad = hi if hi >= cfg.vocab_size else lo
            raise LNFMMInputError(
                f"{name}: token ids must be in [0, vocab_size={cfg.vocab_size}), got id {bad} (max id {hi}, "
                f"min id {lo}); build the config with vocab_size=len(vocab)"
            )
        empty = ~(captions[:, 1:] != 0).any(dim=1)
        if bool(empty.any()):
            rows = empty.nonzero().flatten()[:5].tolist()
            raise LNFMMInputError(f"{name}: rows {rows} have no token after the first (all padding)")
        return captions.shape[0]

    def _check_batch(self, images: Tensor | None, captions: Tensor | None, labeled: Tensor | None) -> int:
        if images is None and captions is None:
            raise LNFMMInputError("give images, captions or both")
        b_img = None if images is None else self._check_images(images)
        b_cap = None if captions is None else self._check_captions(captions)
        if b_img is not None and b_cap is not None and b_img != b_cap:
            raise LNFMMInputError(f"mismatched batch sizes: {b_img} images and {b_cap} captions")
        b = b_img if b_img is not None else b_cap
        assert b is not None
        if labeled is not None:
            if images is None or captions is None:
                raise LNFMMInputError("labeled marks image-caption pairs; it needs both images and captions")
            if not isinstance(labeled, Tensor) or labeled.dtype != torch.bool or tuple(labeled.shape) != (b,):
                shape = tuple(labeled.shape) if isinstance(labeled, Tensor) else type(labeled).__name__
                raise LNFMMInputError(f"labeled must be a bool tensor of shape ({b},), got {shape}")
        return b

    # ------------------------------------------------------------------------------------------
    # codes
    # ------------------------------------------------------------------------------------------
    def _posterior(self, mu: Tensor, logvar: Tensor | None, fixed_std: Tensor, sample: bool) -> tuple[Tensor, Tensor, Tensor]:
        r"""Returns (z, eps, std) with z = mu + std * eps; eps = 0 when not sampling."""
        std = torch.exp(0.5 * logvar) if logvar is not None else fixed_std.to(mu.dtype).expand_as(mu)
        eps = torch.randn_like(mu) if sample else torch.zeros_like(mu)
        return mu + std * eps, eps, std

    def _normalized(self, mu: Tensor, norm: nn.BatchNorm1d | None) -> Tensor:
        if norm is None:
            return mu
        n = norm.num_features  # the shared code, or the whole code ("batch-all")
        return norm(mu) if n == mu.shape[1] else torch.cat([norm(mu[:, :n]), mu[:, n:]], dim=1)

    def _image_posterior(self, images: Tensor, trunk_features: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        # a frozen trunk's features, when the perceptual term needs them too, are computed once
        mu, logvar = self.image_encoder(images) if trunk_features is None else self.image_encoder.from_trunk(trunk_features)
        return self._normalized(mu, self.image_shared_norm), logvar

    def _text_posterior(self, captions: Tensor) -> tuple[Tensor, Tensor | None]:
        mu, logvar = self.text_encoder(captions)
        return self._normalized(mu, self.text_shared_norm), logvar

    def _fs(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.f_s is None:  # LNFMM-MSE: the shared codes are compared directly
            return z, z.new_zeros(z.shape[0])
        return self.f_s(z)

    def _fs_inverse(self, z: Tensor) -> Tensor:
        return z if self.f_s is None else self.f_s.inverse(z)[0]

    def encode_images(self, images: Tensor) -> dict[str, Tensor]:
        r"""Posterior means of an image batch.

        Returns a dict with ``code`` [z_s^v, z'_v] (B, shared+image_specific), ``shared`` (image
        space), ``specific``, ``shared_text`` (:math:`f_s` of ``shared``, the captioning
        condition) and ``logvar`` when the variance is learned. ``shared``/``code`` are the
        image features used by consensus re-ranking.

        Arguments:
            images: (B, 3, H, W) in [0, 1], or (B, F) features.
        """
        self._check_images(images)
        mu, logvar = self._image_posterior(images)
        S = self.config.shared_dim
        out = {"code": mu, "shared": mu[:, :S], "specific": mu[:, S:], "shared_text": self._fs(mu[:, :S])[0]}
        if logvar is not None:
            out["logvar"] = logvar
        return out

    def encode_captions(self, captions: Tensor) -> dict[str, Tensor]:
        r"""Posterior means of a caption batch.

        Returns ``code`` [z_s^t, z'_t], ``shared`` (text space), ``specific``, ``shared_image``
        (:math:`f_s^{-1}` of ``shared``, the text-to-image condition) and ``logvar`` if learned.

        Arguments:
            captions: (B, L) token ids ``[start, words..., end, pad...]``.
        """
        self._check_captions(captions)
        mu, logvar = self._text_posterior(captions)
        S = self.config.shared_dim
        out = {"code": mu, "shared": mu[:, :S], "specific": mu[:, S:], "shared_image": self._fs_inverse(mu[:, :S])}
        if logvar is not None:
            out["logvar"] = logvar
        return out

    def decode_images(self, shared_image: Tensor, specific: Tensor | None = None) -> Tensor:
        r"""Image decoder on an image-space shared code and z'_v (None for LNFMM-TXT).

        Returns (B, 3, H, W) in [0, 1] or (B, F) features. Differentiable (for IvOM).
        """
        code = shared_image if specific is None else torch.cat([shared_image, specific], dim=-1)
        return self.image_decoder(code)

    # ------------------------------------------------------------------------------------------
    # training loss
    # ------------------------------------------------------------------------------------------
    def forward(
        self,
        images: Tensor | None,
        captions: Tensor | None,
        labeled: Tensor | None = None,
        *,
        sample_posterior: bool | None = None,
    ) -> dict[str, Tensor]:
        r"""Computes the loss of Eq. 10 and its terms on a batch.

        Every term is a scalar averaged over the rows it applies to: ``kl_t``/``rec_t`` over
        rows with a caption, ``kl_v``/``rec_v`` over rows with an image, ``align``/``logdet_fs``
        and ``cross_t``/``cross_v`` over labeled pairs. ``loss`` is the weighted sum of the
        terms (:meth:`_weighted_loss`): with ``w = config.loss``, ``w.kl_t kl_t + w.kl_v kl_v -
        w.logdet logdet_fs + w.align align + w.rec_t rec_t + w.rec_v rec_v`` (+ ``w.cross_t
        cross_t``, ``w.cross_v cross_v``, ``w.adv adv`` when present), with the KL terms
        clamped below at ``w.kl_free_nats`` (free bits).

        Arguments:
            images: (B, 3, H, W) in [0, 1] or (B, F) features; None for a caption-only batch.
            captions: (B, L) token ids; None for an image-only batch.
            labeled: (B,) bool, which rows are true pairs (semi-supervised); None: all, when
                both domains are given. Unlabeled rows train their own encoders, decoders and
                priors only (no ``align``/``logdet_fs``/``cross_*``; priors conditioned on their
                own code).
            sample_posterior: Draw the reparameterized noise (default: in training mode). In
                eval mode the codes are the posterior means, so eval losses are deterministic.

        Returns:
            A dict of scalars: ``loss``, ``kl_t``, ``kl_v``, ``logdet_fs``, ``align``, ``rec_t``,
            ``rec_v``; ``cross_t`` with ``loss.cross_t > 0`` and ``cross_v`` with
            ``loss.cross_v > 0`` (paired batches only); ``adv`` with ``image_decoder.gan`` (batches with
            images). Absent parts of the first seven are 0.
        """
        self._check_batch(images, captions, labeled)
        self._warn_uninitialized_trunk()
        sample = self.training if sample_posterior is None else bool(sample_posterior)
        ref = images if images is not None else captions
        assert ref is not None
        dtype = next(self.text_decoder.parameters()).dtype
        zero = torch.zeros((), dtype=dtype, device=ref.device)
        terms: dict[str, Tensor] = dict.fromkeys(_CORE_TERMS, zero)
        weight = None if labeled is None else labeled.to(dtype)
        # images first, then captions: the order the posterior noise is drawn in
        feats = None if images is None else self._trunk_features(images)
        code_v = None if images is None else self._sample_code(*self._image_posterior(images, feats), self.image_std, sample)
        code_t = None if captions is None else self._sample_code(*self._text_posterior(captions), self.text_std, sample)
        fs_v = None
        if code_v is not None and code_t is not None:
            fs_v, alignment = self._alignment_terms(code_v, code_t, weight)
            terms.update(alignment)
        if captions is not None and code_t is not None:
            terms.update(self._text_terms(captions, code_t, fs_v, labeled, weight))
        if images is not None and code_v is not None:
            ctx_v, image_terms = self._image_terms(images, feats, code_v, code_t, labeled, weight)
            terms.update(image_terms)
            if self.discriminator is not None:
                terms.update(self._adversarial_term(ctx_v, sample))
        return {"loss": self._weighted_loss(terms), **terms}

    def _warn_uninitialized_trunk(self) -> None:
        r"""Warns once when training an image encoder whose trunk was never initialized."""
        if self.training and not self.image_trunk_initialized and not _is_compiling():
            warnings.warn(
                f"LNFMM: config.image_encoder.init={self.config.image_encoder.init!r} but the image encoder's "
                f"trunk was never initialized; flowkit.training.train does it, in a loop of your own call "
                f"flowkit.training.initialize_image_encoder(model) first",
                stacklevel=3,
            )
            self.image_trunk_initialized = True  # warn once

    def _sample_code(self, mu: Tensor, logvar: Tensor | None, fixed_std: Tensor, sample: bool) -> _Code:
        r"""One domain's posterior code, split into its shared and specific parts."""
        z, eps, std = self._posterior(mu, logvar, fixed_std, sample)
        S = self.config.shared_dim
        return _Code(z=z, eps=eps, std=std, shared=z[:, :S], specific=z[:, S:])

    def _alignment_terms(self, code_v: _Code, code_t: _Code, weight: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        r"""``f_s(z_s^v)`` and the terms ``align`` and ``logdet_fs`` over the labeled pairs."""
        fs_v, logdet = self._fs(code_v.shared)  # image space -> text space
        target = code_t.shared.detach() if self.config.loss.align_text_target else code_t.shared
        align = _masked_mean((fs_v - target).square().sum(dim=1), weight)
        return fs_v, {"align": align, "logdet_fs": _masked_mean(logdet, weight)}

    def _prior_kl(self, prior: nn.Module | None, code: _Code, context: Tensor) -> Tensor | None:
        r"""One-sample estimate of KL(q(z') || p(z' | context)) (Eq. 8); None without a prior."""
        if prior is None:
            return None
        S = self.config.shared_dim
        log_p = prior.log_prob(code.specific, context=context)
        log_q = _gaussian_log_q(code.eps[:, S:], code.std[:, S:])
        return (log_q - log_p).mean()

    def _text_terms(
        self, captions: Tensor, code_t: _Code, fs_v: Tensor | None, labeled: Tensor | None, weight: Tensor | None
    ) -> dict[str, Tensor]:
        r"""``kl_t`` and ``rec_t``, and ``cross_t`` for pairs (``fs_v`` given) with ``loss.cross_t > 0``."""
        cfg = self.config
        terms: dict[str, Tensor] = {}
        ctx_t = code_t.shared
        if fs_v is not None and cfg.flows.cross_condition:
            ctx_t = fs_v if labeled is None else torch.where(labeled.unsqueeze(1), fs_v, code_t.shared)
        if (kl_t := self._prior_kl(self.f_t, code_t, ctx_t)) is not None:
            terms["kl_t"] = kl_t
        # with loss.rec_t = 0 (small preset) the term is only a diagnostic: no graph for it
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.loss.rec_t > 0):
            terms["rec_t"] = self._caption_nll(captions, code_t.z).mean()
        if fs_v is not None and cfg.loss.cross_t > 0:
            # the caption from the image's shared code: what captioning decodes
            cross = self._caption_nll(captions, torch.cat([fs_v, code_t.specific], dim=1))
            terms["cross_t"] = _masked_mean(cross, weight)
        return terms

    def _image_terms(
        self, images: Tensor, feats: Tensor | None, code_v: _Code, code_t: _Code | None, labeled: Tensor | None, weight: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        r"""The image prior's condition and the terms ``kl_v``, ``rec_v``, and ``cross_v`` for
        pairs (``code_t`` given) with ``loss.cross_v > 0``; ``feats`` are the frozen trunk's
        features of ``images`` (the perceptual term's target) or None."""
        cfg = self.config
        terms: dict[str, Tensor] = {}
        ctx_v = code_v.shared
        back = None
        if code_t is not None and (cfg.flows.cross_condition or cfg.loss.cross_v > 0):
            back = self._fs_inverse(code_t.shared)  # text space -> image space
        if back is not None and cfg.flows.cross_condition:
            ctx_v = back if labeled is None else torch.where(labeled.unsqueeze(1), back, code_v.shared)
        if (kl_v := self._prior_kl(self.f_v, code_v, ctx_v)) is not None:
            terms["kl_v"] = kl_v
        # with loss.rec_v = 0 (text-to-image recipe) the term is only a diagnostic: no graph
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.loss.rec_v > 0):
            terms["rec_v"] = self._image_error(images, self.image_decoder(code_v.z), feats).mean()
        if back is not None and cfg.loss.cross_v > 0:
            # the image from the caption's shared code: what text-to-image decodes
            cross = self._image_error(images, self.image_decoder(torch.cat([back, code_v.specific], dim=1)), feats)
            terms["cross_v"] = _masked_mean(cross, weight)
        if back is not None and cfg.loss.cross_v_prior > 0 and self.f_v is not None:
            # the image from the caption's shared code and a *prior* sample of z'_v (no gradient
            # into the prior): what the caption fixes must come out for any z'_v text-to-image draws
            with torch.no_grad():
                drawn = self.f_v.sample(1, context=back)[:, 0]
            cross = self._image_error(images, self.image_decoder(torch.cat([back, drawn], dim=1)), feats)
            terms["cross_v_prior"] = _masked_mean(cross, weight)
        return ctx_v, terms

    def _adversarial_term(self, ctx_v: Tensor, sample: bool) -> dict[str, Tensor]:
        r"""``adv``: the generator's hinge term on text-to-image fakes for the condition ``ctx_v``."""
        # eval mode: the prior's mode (temperature 0), so eval losses are deterministic
        return {"adv": self._generator_adversarial(ctx_v, 1.0 if sample else 0.0)}

    def _weighted_loss(self, terms: dict[str, Tensor]) -> Tensor:
        r"""The loss: the sum of the present terms times their weights (:data:`LOSS_WEIGHTS`), the
        subtracted ones (``logdet_fs``) negated, the KL terms clamped below at ``loss.kl_free_nats``."""
        cfg = self.config
        free = cfg.loss.kl_free_nats
        # free bits (Kingma et al., 2016): a KL below loss.kl_free_nats is not pushed lower, so the
        # latent keeps that much information (the standard remedy for posterior collapse)
        terms = {k: v.clamp(min=free) if free > 0 and k in FREE_BITS_TERMS else v for k, v in terms.items()}
        loss: Tensor | None = None
        for name, attr in LOSS_WEIGHTS.items():
            if name not in terms:
                continue
            weighted = getattr(cfg.loss, attr) * terms[name]
            if loss is None:
                loss = weighted
            else:
                loss = loss - weighted if name in SUBTRACTED_TERMS else loss + weighted
        assert loss is not None
        return loss

    def _caption_nll(self, captions: Tensor, code: Tensor) -> Tensor:
        r"""Per-row caption NLL given a text code, summed over tokens (padding masked)."""
        logits = self.text_decoder(captions[:, :-1], code)
        nll = F.cross_entropy(rearrange(logits, "b t v -> b v t"), captions[:, 1:].long(), ignore_index=0, reduction="none")
        return nll.sum(dim=1)

    def _image_error(self, images: Tensor, recon: Tensor, target_features: Tensor | None = None) -> Tensor:
        r"""Per-row reconstruction error, L1 or squared, summed over pixels (or features), plus
        ``loss.image_perceptual`` times the squared distance of the frozen trunk's features."""
        diff = recon - images
        err = diff.abs() if self.config.loss.image_distance == "l1" else diff.square()
        err = rearrange(err, "b ... -> b (...)").sum(dim=1)
        if self.config.loss.image_perceptual > 0:
            if target_features is None:
                target_features = self._trunk_features(images)
            err = err + self.config.loss.image_perceptual * (self.image_encoder.trunk(recon) - target_features).square().sum(dim=1)
        return err

    def _trunk_features(self, images: Tensor) -> Tensor | None:
        r"""The frozen image trunk's features of the data (the perceptual term's target)."""
        if self.config.loss.image_perceptual <= 0:
            return None
        with torch.no_grad():
            return self.image_encoder.trunk(images)

    # ------------------------------------------------------------------------------------------
    # GAN (text-to-image)
    # ------------------------------------------------------------------------------------------
    def _fake_images(self, cond: Tensor, temperature: float = 1.0) -> Tensor:
        r"""Text-to-image samples for an image-space condition; the latents are detached so that
        the adversarial game trains the decoder only ("does not affect the joint latent space")."""
        cond = cond.detach()
        if self.f_v is None:
            return self.decode_images(cond)
        zp = rearrange(self.f_v.sample(1, context=cond, temperature=temperature), "b 1 d -> b d").detach()
        return self.decode_images(cond, zp)

    def _generator_adversarial(self, cond: Tensor, temperature: float) -> Tensor:
        assert self.discriminator is not None
        fake = self._fake_images(cond, temperature)
        # hinge loss, generator side; this also writes gradients into the discriminator's
        # parameters: the discriminator step zeroes them first
        return -self.discriminator(fake, cond.detach()).mean()

    def discriminator_loss(self, images: Tensor, captions: Tensor) -> Tensor:
        r"""Hinge loss of the discriminator on real images and text-to-image fakes.

        :math:`\mathbb{E}[\max(0, 1 - D(x, c))] + \mathbb{E}[\max(0, 1 + D(\tilde x, c))]` with
        :math:`c = f_s^{-1}(z_s^t)` of the caption and :math:`\tilde x` decoded from :math:`c`
        and :math:`z'_v \sim p(z'_v | c)`. Only the discriminator gets gradients.

        Arguments:
            images: Real images (B, 3, H, W) matching ``captions``.
            captions: Token ids (B, L).
        """
        if self.discriminator is None:
            raise RuntimeError("discriminator_loss needs a model built with gan=True")
        self._check_batch(images, captions, None)
        with torch.no_grad():
            cond = self.encode_captions(captions)["shared_image"]
            fake = self._fake_images(cond)
        real_score = self.discriminator(images, cond)
        fake_score = self.discriminator(fake, cond)
        return F.relu(1.0 - real_score).mean() + F.relu(1.0 + fake_score).mean()

    def discriminator_parameters(self) -> list[nn.Parameter]:
        r"""The discriminator's parameters (empty without ``gan``); not in :meth:`optimizer_groups`."""
        return [] if self.discriminator is None else list(self.discriminator.parameters())

    def discriminator_group(self) -> dict:
        r"""The discriminator's param group: lr 3e-4 and Adam betas (0, 0.999) as in the official code."""
        cfg = self.config
        return {
            "name": "discriminator",
            "params": self.discriminator_parameters(),
            "lr": cfg.optim.discriminator_lr,
            "clip_value": cfg.optim.grad_clip,
            "betas": (0.0, 0.999),
        }

    # ------------------------------------------------------------------------------------------
    # optimisation
    # ------------------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        r"""As :meth:`torch.nn.Module.load_state_dict`; loaded weights count as an initialized trunk."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.image_trunk_initialized = True
        return result

    def optimizer_groups(self) -> list[dict]:
        r"""Param groups for ``torch.optim.Adam``: one per part, each with ``name``, ``params``,
        ``lr`` and ``clip_value`` (the gradient value clip of that part).

        Official settings: the image encoder at lr 1e-5, the rest at 1e-4; value clip 1.0, 5.0
        for f_v. Frozen or absent parts are left out; the discriminator has its own group
        (:meth:`discriminator_group`).

        Example:
            >>> model = LNFMM(LNFMMConfig.small(vocab_size=20))
            >>> opt = torch.optim.Adam(model.optimizer_groups())
            >>> [g["name"] for g in model.optimizer_groups()][:3]
            ['image_encoder', 'text_encoder', 'text_decoder']
        """
        cfg = self.config
        parts: list[tuple[str, nn.Module | None, float, float]] = [
            ("image_encoder", self.image_encoder, cfg.optim.image_encoder_lr, cfg.optim.grad_clip),
            ("text_encoder", self.text_encoder, cfg.optim.lr, cfg.optim.grad_clip),
            ("text_decoder", self.text_decoder, cfg.optim.lr, cfg.optim.grad_clip),
            ("image_decoder", self.image_decoder, cfg.optim.lr, cfg.optim.grad_clip),
            ("f_s", self.f_s, cfg.optim.lr, cfg.optim.grad_clip),
            ("f_t", self.f_t, cfg.optim.lr, cfg.optim.grad_clip),
            ("f_v", self.f_v, cfg.optim.lr, cfg.optim.fv_grad_clip),
        ]
        groups = []
        for name, module, lr, clip in parts:
            if module is None:
                continue
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                groups.append({"name": name, "params": params, "lr": lr, "clip_value": clip})
        return groups

    # ------------------------------------------------------------------------------------------
    # inference
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_captions(
        self,
        images: Tensor,
        num_samples: int,
        temperature: float = 1.0,
        method: str = "greedy",
        beam_width: int = 2,
        max_len: int | None = None,
        word_temperature: float = 1.0,
    ) -> Tensor:
        r"""Diverse captions for images: :math:`z_s = f_s(\mu(z_s^v))`, :math:`z'_t \sim p(z'_t | z_s)`.

        All B * S latents are drawn in one flow call and decoded in one batch. Without a text
        latent (``text_specific_dim=0``, the supervised captioner) every sample decodes the
        same code, so diversity needs ``method="sample"``.

        Arguments:
            images: (B, 3, H, W) in [0, 1] or (B, F) features.
            num_samples: Captions per image S (the paper: 100).
            temperature: Scales the prior's base samples; 0 gives one deterministic caption.
            method: ``"greedy"``, ``"beam"`` (official width: 2) or ``"sample"`` (each word
                drawn at ``word_temperature``, :func:`~flowkit.models.lnfmm.sampling.sample_decode`).
            beam_width: The beam width.
            max_len: The output length (default: ``max_caption_len``).
            word_temperature: The word temperature of ``method="sample"``.

        Returns:
            Token ids (B, S, max_len) ``[start, words..., end, pad...]``.
        """
        if method not in ("greedy", "beam", "sample"):
            raise ValueError(f"method must be 'greedy', 'beam' or 'sample', got {method!r}")
        num_samples = check_positive_int("num_samples", num_samples)
        max_len = self.config.max_caption_len if max_len is None else int(max_len)
        shared = self.encode_images(images)["shared_text"]
        latent = repeat(shared, "b d -> b s d", s=num_samples)
        if self.f_t is not None:
            specific = self.f_t.sample(num_samples, context=shared, temperature=temperature)
            latent = torch.cat([latent, specific], dim=-1)
        latent = rearrange(latent, "b s d -> (b s) d")
        if method == "greedy":
            ids = greedy_decode(self.text_decoder, latent, max_len)
        elif method == "beam":
            ids = beam_search(self.text_decoder, latent, max_len, beam_width)
        else:
            ids = sample_decode(self.text_decoder, latent, max_len, temperature=word_temperature)
        return rearrange(ids, "(b s) l -> b s l", s=num_samples)

    @torch.no_grad()
    def sample_images(self, captions: Tensor, num_samples: int, temperature: float = 1.0) -> Tensor:
        r"""Diverse images for captions: :math:`z_s = f_s^{-1}(\mu(z_s^t))`, :math:`z'_v \sim p(z'_v | z_s)`.

        Call ``model.eval()`` first: the generator's batch norm uses batch statistics in
        training mode.

        Arguments:
            captions: (B, L) token ids.
            num_samples: Images per caption S.
            temperature: Scales the prior's base samples.

        Returns:
            (B, S, 3, H, W) in [0, 1], or (B, S, F) features for the "features" encoder. With
            ``image_specific_dim=0`` (LNFMM-TXT) the S images are identical.
        """
        num_samples = check_positive_int("num_samples", num_samples)
        shared = self.encode_captions(captions)["shared_image"]
        shared_rep = rearrange(repeat(shared, "b d -> b s d", s=num_samples), "b s d -> (b s) d")
        if self.f_v is None:
            out = self.decode_images(shared_rep)
        else:
            specific = self.f_v.sample(num_samples, context=shared, temperature=temperature)
            out = self.decode_images(shared_rep, rearrange(specific, "b s d -> (b s) d"))
        return rearrange(out, "(b s) ... -> b s ...", s=num_samples)

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"image_encoder={cfg.image_encoder.kind!r}, alignment={cfg.flows.alignment!r}, prior={cfg.flows.prior!r}, "
            f"shared_dim={cfg.shared_dim}, image_specific_dim={cfg.image_specific_dim}, "
            f"text_specific_dim={cfg.text_specific_dim}, gan={cfg.image_decoder.gan}"
        )
