r"""Configuration of LNFMM: one JSON-able dataclass with the paper and a small preset.

Every number has a source: "A.1" is the paper's appendix A.1, "official" is the training code
of github.com/visinf/lnfmm (``params.json``, ``train.py``), "small" is flowkit's own choice for
a model that trains on 2 CPU cores in minutes (see ``docs/lnfmm.md``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LNFMMConfig"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "image_encoder": ("features", "conv", "cells", "vgg16"),
    "alignment": ("flow", "mse"),
    "fs_coupling": ("additive", "affine"),
    "prior": ("flow", "gaussian"),
    "clamp": ("atan", "tanh", "sigmoid"),
    "image_rec_loss": ("l1", "mse"),
    "image_encoder_init": ("random", "shapes-attributes", "shapes-trunk"),
    "shared_norm": ("none", "batch", "batch-all"),
}


@dataclass
class LNFMMConfig:
    r"""Hyper-parameters of :class:`~flowkit.models.LNFMM`.

    Defaults are the paper preset (appendix A.1 sizes, the official captioning weights).
    Validation happens in ``__post_init__``, so a bad value fails where it is written.

    Arguments:
        vocab_size: Number of tokens, including pad=0, start=1, end=2, unk=3 (official: 10,324).
        max_caption_len: Longest caption in tokens, start and end included (official: 40).
        shared_dim: Size of the shared code z_s (A.1: 992).
        image_specific_dim: Size of z'_v (A.1: 64). 0 gives LNFMM-TXT (no f_v).
        text_specific_dim: Size of z'_t (A.1: 32). 0 gives a supervised captioner without a
            latent (no f_t; diversity only from sampling words, ``method="sample"``).
        image_encoder: ``"features"`` (pre-extracted fc7 vectors), ``"conv"`` (a small CNN on
            pixels), ``"cells"`` (a per-cell CNN on 64x64 shapes pixels, the shapes trunk's
            architecture) or ``"vgg16"`` (torchvision VGG-16 on pixels, imported lazily).
        image_feature_dim: Size of the image features of the "features" encoder (A.1: 4096).
        image_size: Side of square images for "conv"/"vgg16" and of generated images (64).
        image_encoder_hidden: Hidden layer of the encoder MLP (A.1: 2048).
        conv_encoder_channels: Base width of the "conv" encoder.
        vgg16_weights: A local state-dict file of torchvision's VGG-16 ("vgg16" encoder; nothing
            is downloaded). None: random initialization.
        word_embedding_dim: Text encoder word embedding (official: 300).
        text_encoder_hidden: BiGRU hidden size (A.1: 1024).
        text_encoder_layers: BiGRU layers (A.1: 2).
        decoder_hidden: LSTM hidden size (A.1: 512).
        decoder_embedding_dim: LSTM word embedding (official: 512).
        word_dropout: Probability of replacing an input word by unk in teacher forcing (official: 0.8).
        embedding_dropout: Dropout on the decoder's word embeddings (official: 0.5).
        generator_channels: Base width of the SAGAN generator (official g_conv_dim: 32).
        discriminator_channels: Base width of the discriminator (official d_conv_dim: 32).
        feature_decoder_hidden: Hidden size of the feature decoder MLP ("features" encoder).
        alignment: ``"flow"`` (f_s) or ``"mse"`` (LNFMM-MSE ablation, no f_s).
        fs_coupling: ``"additive"`` (official: NICE coupling + global scale) or ``"affine"``
            (paper text: affine coupling + switch).
        fs_layers: Steps of f_s (A.1: 12). fs_hidden: their hidden size (official: 1024).
        prior: ``"flow"`` (LNFMM) or ``"gaussian"`` (CVAE baseline, N(mu(z_s), sigma(z_s))).
        fv_layers, fv_hidden: f_v steps and width (A.1: 16, 512).
        ft_layers, ft_hidden: f_t steps and width (A.1: 16, 1024).
        ft_conv1x1: Invertible 1x1 in f_t's steps (A.1: True; official: off).
        clamp: Soft clamp of affine scales (official: ``"sigmoid"``, i.e. sigmoid(raw + 2)).
        lambda_kl_t, lambda_kl_v, lambda_logdet, lambda_rec_t, lambda_rec_v: the five weights
            of Eq. 10 (official params_i2t lambda_1..lambda_5: 1, 5000, 200, 0.6, 20).
        lambda_align: Weight of the alignment term (Eq. 10: 1).
        align_text_target: Treat the caption's shared code as a fixed target of the alignment
            (no gradient from ``align`` into the text encoder). Off (Eq. 10) both codes move,
            and a small model can satisfy the term by collapsing both shared codes to a
            constant while the caption lives in z'_t; on, only the image side and f_s chase
            the text code, which stays as informative as the caption reconstruction wants.
        lambda_cross_t, lambda_cross_v: Weights of the cross-domain reconstructions (the
            official code's way of training the alignment; 0 = off, as in Eq. 10): the caption
            decoded from ``[f_s(z_s^v), z'_t]`` and the image decoded from
            ``[f_s^{-1}(z_s^t), z'_v]``, i.e. from the shared code the *other* domain gives,
            exactly what captioning and text-to-image decode at inference. Keys
            ``"cross_t"`` and ``"cross_v"`` of the loss dict.
        lambda_adv: Weight of the generator's hinge term (official lambda_5_G: 25).
        image_rec_loss: ``"l1"`` (official) or ``"mse"`` (Eq. 10); summed over pixels.
        image_perceptual: Weight of a perceptual distance inside the image reconstruction
            error (``rec_v``, ``cross_v``): the squared distance, summed, between the frozen
            image trunk's features of the reconstruction and of the image (Johnson et al.,
            2016; the trunk plays VGG's part). 0 = off; needs a frozen pre-trained trunk
            (``image_encoder`` ``"cells"`` or ``"conv"`` with ``freeze_image_trunk``).
        base_std: Std of the flows' Gaussian base (official: 0.25).
        noise_std: Posterior std on every code dim in training (official: 0.05).
        text_noise_std: Extra std on z'_t (official: +0.10).
        image_noise_std: Extra std on z'_v (official: +0.05).
        learned_variance: Learn the posteriors' log-variance instead of the fixed std.
        kl_free_nats: Free bits: a KL term (``kl_t``, ``kl_v``) below this many nats is not
            pushed lower (the batch-mean KL is clamped from below in the loss; the logged
            term is the true KL). The CVAE baseline's remedy for posterior collapse.
        shared_norm: ``"none"`` (paper), or ``"batch"``: each encoder's shared code is
            standardized over the batch (batch norm without affine parameters; running
            statistics in eval), so it cannot shrink below the fixed posterior noise and
            lose its content (``docs/lnfmm.md``, "The scale of the shared space");
            ``"batch-all"``: the specific codes too, so the fixed noise on :math:`z'` bounds
            what it can carry (the encoder cannot scale it up past the noise).
        cross_condition: Condition the priors of a paired row on the other domain's shared
            code mapped through f_s (official; matches inference). False: the row's own code.
        freeze_image_encoder: Keep the image encoder fixed (LNFMM (pre-trained) ablation).
        image_encoder_init: ``"random"``, or ``"shapes-attributes"``: before training, the
            conv encoder's trunk (convolutions and hidden layer) is pre-trained on which colours
            and shapes a shapes image shows and how many objects, on images of another seed
            (:func:`flowkit.training.pretrain_shapes_encoder`; cached), as the paper's
            VGG-16 is pre-trained on ImageNet. Conv encoder only.
            ``"shapes-trunk"`` loads the pre-trained shapes trunk
            (:func:`flowkit.data.features.shapes_trunk`) into the ``"cells"`` encoder.
        image_encoder_init_steps: Pre-training steps (batch 32) for ``"shapes-attributes"``.
        freeze_image_trunk: Keep the conv or cells encoder's trunk fixed (the code head still trains).
        gan: Add a hinge-loss discriminator for text-to-image (pixels only).
        lr, image_encoder_lr, discriminator_lr: Adam learning rates (official: 1e-4, 1e-5, 3e-4).
        grad_clip, fv_grad_clip: Gradient value clips (official: 1.0; 5.0 for f_v).

    Example:
        >>> cfg = LNFMMConfig.small(vocab_size=40)
        >>> LNFMMConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    vocab_size: int = 10324
    max_caption_len: int = 40
    shared_dim: int = 992
    image_specific_dim: int = 64
    text_specific_dim: int = 32
    # image pipeline
    image_encoder: str = "features"
    image_feature_dim: int = 4096
    image_size: int = 64
    image_encoder_hidden: int = 2048
    conv_encoder_channels: int = 64
    vgg16_weights: str | None = None
    # text pipeline
    word_embedding_dim: int = 300
    text_encoder_hidden: int = 1024
    text_encoder_layers: int = 2
    decoder_hidden: int = 512
    decoder_embedding_dim: int = 512
    word_dropout: float = 0.8
    embedding_dropout: float = 0.5
    # image decoder / discriminator
    generator_channels: int = 32
    discriminator_channels: int = 32
    feature_decoder_hidden: int = 2048
    # flows
    alignment: str = "flow"
    fs_coupling: str = "additive"
    fs_layers: int = 12
    fs_hidden: int = 1024
    prior: str = "flow"
    fv_layers: int = 16
    fv_hidden: int = 512
    ft_layers: int = 16
    ft_hidden: int = 1024
    ft_conv1x1: bool = False
    clamp: str = "sigmoid"
    # loss weights (Eq. 10)
    lambda_kl_t: float = 1.0
    lambda_kl_v: float = 5000.0
    lambda_logdet: float = 200.0
    lambda_rec_t: float = 0.6
    lambda_rec_v: float = 20.0
    lambda_align: float = 1.0
    align_text_target: bool = False
    lambda_cross_t: float = 0.0
    lambda_cross_v: float = 0.0
    lambda_adv: float = 25.0
    image_rec_loss: str = "l1"
    image_perceptual: float = 0.0
    # posteriors and priors
    base_std: float = 0.25
    noise_std: float = 0.05
    text_noise_std: float = 0.10
    image_noise_std: float = 0.05
    learned_variance: bool = False
    kl_free_nats: float = 0.0
    cross_condition: bool = True
    shared_norm: str = "none"
    # ablations / extras
    freeze_image_encoder: bool = False
    image_encoder_init: str = "random"
    image_encoder_init_steps: int = 1500
    freeze_image_trunk: bool = False
    gan: bool = False
    # optimisation
    lr: float = 1e-4
    image_encoder_lr: float = 1e-5
    discriminator_lr: float = 3e-4
    grad_clip: float = 1.0
    fv_grad_clip: float = 5.0
    # free-form provenance notes (kept in checkpoints)
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        errors: list[str] = []
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                errors.append(f"{name}={value!r} is not one of {choices}")
        positive = [
            "vocab_size", "max_caption_len", "shared_dim", "image_feature_dim",
            "image_size", "image_encoder_hidden", "conv_encoder_channels", "word_embedding_dim",
            "text_encoder_hidden", "text_encoder_layers", "decoder_hidden", "decoder_embedding_dim",
            "generator_channels", "discriminator_channels", "feature_decoder_hidden", "fs_layers",
            "fs_hidden", "fv_layers", "fv_hidden", "ft_layers", "ft_hidden", "image_encoder_init_steps",
        ]
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                errors.append(f"{name} must be a positive int, got {value!r}")
        for name, zero in (("image_specific_dim", "LNFMM-TXT"), ("text_specific_dim", "a captioner without a latent")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                errors.append(f"{name} must be an int >= 0 (0 = {zero}), got {value!r}")
        if isinstance(self.vocab_size, int) and not isinstance(self.vocab_size, bool) and self.vocab_size < 5:
            errors.append(f"vocab_size must be >= 5 (pad, start, end, unk and one word), got {self.vocab_size}")
        if isinstance(self.max_caption_len, int) and self.max_caption_len < 2:
            errors.append(f"max_caption_len must be >= 2 (start and end), got {self.max_caption_len}")
        # couplings split a vector in two halves: one dimension leaves nothing to condition on
        if self.shared_dim == 1:
            errors.append("shared_dim must be >= 2 for the coupling layers, got 1")
        for name in ("image_specific_dim", "text_specific_dim"):
            if getattr(self, name) == 1:
                errors.append(f"{name} must be 0 or >= 2 for the coupling layers, got 1")
        for name in ("word_dropout", "embedding_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                errors.append(f"{name} must be in [0, 1), got {value!r}")
        nonneg = [
            "lambda_kl_t", "lambda_kl_v", "lambda_logdet", "lambda_rec_t", "lambda_rec_v", "lambda_align",
            "lambda_cross_t", "lambda_cross_v", "lambda_adv", "kl_free_nats", "image_perceptual", "noise_std", "text_noise_std", "image_noise_std",
        ]
        for name in nonneg:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                errors.append(f"{name} must be a finite number >= 0, got {value!r}")
        strictly = ["base_std", "lr", "image_encoder_lr", "discriminator_lr", "grad_clip", "fv_grad_clip"]
        for name in strictly:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                errors.append(f"{name} must be a finite number > 0, got {value!r}")
        if not self.learned_variance and isinstance(self.noise_std, (int, float)) and self.noise_std <= 0:
            errors.append(
                "noise_std must be > 0 with a fixed posterior std (learned_variance=False): the KL "
                "needs a proper posterior density"
            )
        if self.image_encoder in ("conv", "vgg16") and isinstance(self.image_size, int) and self.image_size != 64:
            errors.append(
                f"image_size={self.image_size}: the pixel encoder and the SAGAN generator are built for "
                f"64x64 images; resize the data to 64"
            )
        trunk_of = {"shapes-attributes": "conv", "shapes-trunk": "cells"}
        if self.image_encoder_init in trunk_of and self.image_encoder != trunk_of[self.image_encoder_init]:
            errors.append(
                f"image_encoder_init={self.image_encoder_init!r} initializes the "
                f"{trunk_of[self.image_encoder_init]!r} image encoder, not {self.image_encoder!r}"
            )
        if self.image_perceptual and not self.freeze_image_trunk:
            errors.append(
                f"image_perceptual={self.image_perceptual} measures images with the frozen image trunk: set "
                f"freeze_image_trunk=True (with image_encoder 'cells' or 'conv' and a pre-trained image_encoder_init)"
            )
        if self.freeze_image_trunk and self.image_encoder not in ("conv", "cells"):
            errors.append(f"freeze_image_trunk applies to the 'conv' and 'cells' image encoders, not {self.image_encoder!r}")
        if self.gan and self.image_encoder == "features":
            errors.append("gan=True needs a pixel image encoder ('conv' or 'vgg16'); features cannot be judged by a discriminator")
        if self.vgg16_weights is not None and not isinstance(self.vgg16_weights, str):
            errors.append(f"vgg16_weights must be a path (str) or None, got {self.vgg16_weights!r}")
        if not isinstance(self.notes, dict):
            errors.append(f"notes must be a dict of str, got {type(self.notes).__name__}")
        if errors:
            raise ValueError("invalid LNFMMConfig:\n  - " + "\n  - ".join(errors))

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def image_code_dim(self) -> int:
        r"""Size of the image encoder's output [z_s^v, z'_v] (A.1: 1056)."""
        return self.shared_dim + self.image_specific_dim

    @property
    def text_code_dim(self) -> int:
        r"""Size of the text encoder's output [z_s^t, z'_t] (A.1: 1024)."""
        return self.shared_dim + self.text_specific_dim

    @property
    def pixels(self) -> bool:
        r"""Whether images are pixels (B, 3, H, W) rather than feature vectors (B, F)."""
        return self.image_encoder != "features"

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        r"""A JSON-able dict; :meth:`from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LNFMMConfig":
        r"""Builds a config from :meth:`to_dict`'s output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown LNFMMConfig keys {unknown}; known keys: {sorted(names)}")
        return cls(**{k: (dict(v) if k == "notes" else v) for k, v in d.items()})

    def replace(self, **overrides: Any) -> "LNFMMConfig":
        r"""A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **overrides)

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides: Any) -> "LNFMMConfig":
        r"""Appendix A.1 sizes with the official captioning weights and layer choices.

        Layer choices follow the official code (additive f_s, no 1x1 in f_t, fixed posterior
        noise); pass ``fs_coupling="affine", ft_conv1x1=True`` for the paper's text.

        Example:
            >>> LNFMMConfig.paper().image_code_dim, LNFMMConfig.paper().text_code_dim
            (1056, 1024)
        """
        base: dict[str, Any] = dict(notes={"preset": "paper"})
        base.update(overrides)
        return cls(**base)

    @classmethod
    def captioning(cls, **overrides: Any) -> "LNFMMConfig":
        r"""The captioning recipe's model for the shapes data, on pre-extracted features.

        :meth:`small`'s sizes, with the image encoder reading 576-d features of the
        pre-trained shapes trunk (:func:`flowkit.data.features.shapes_trunk_features`, the
        analogue of VGG-16 fc7) and the changes measured in ``docs/lnfmm.md`` ("The scale of
        the shared space"; 3,000 steps, 100 validation images x 20 samples, accuracy at
        temperature 1):

        * ``shared_norm="batch"``: standardized shared codes; without it both collapse below
          the posterior noise and sampled captions are 2% true (300 steps: 0.32 with it);
        * ``lambda_rec_t=1``: the caption is also decoded from its own code (0.29 -> 0.50);
        * ``image_encoder_lr=1e-4``: the image code keeps the trunk's content (at 2e-3 the
          colour probe fell to chance; 1e-5, the official rate, gave 0.50, 1e-4 0.51 with the
          best probes);
        * ``word_dropout=0.4`` (official 0.8, :meth:`small` 0.75): 0.44 -> 0.50;
        * ``decoder_hidden=256``: 0.51 -> 0.55;
        * ``text_noise_std=0.3`` (official 0.1): a noisier z'_t channel makes the prior's
          samples decode to true captions, 0.55 -> 0.64, at a small loss of coverage.

        Example:
            >>> LNFMMConfig.captioning(vocab_size=40).image_feature_dim
            576
        """
        base: dict[str, Any] = dict(
            image_encoder="features",
            image_feature_dim=576,
            shared_norm="batch",
            image_encoder_lr=1e-4,
            lambda_rec_t=1.0,
            word_dropout=0.4,
            decoder_hidden=256,
            text_noise_std=0.3,
            notes={"preset": "captioning"},
        )
        base.update(overrides)
        return cls.small(**base)

    @classmethod
    def text_to_image(cls, **overrides: Any) -> "LNFMMConfig":
        r"""The text-to-image recipe's model for the shapes data, on pixels.

        :meth:`small`'s sizes with the changes measured in ``docs/lnfmm.md`` ("Text-to-image"):

        * ``image_encoder="cells"`` with the pre-trained shapes trunk, frozen: the features of
          the captioning recipe, computed in the model because the image decoder needs the
          pixels as its target;
        * ``shared_norm="batch-all"``: as for captioning the shared codes keep their content,
          and :math:`z'_v` is standardized too, so its fixed noise bounds what it carries and
          the decoder must take what the caption says from the caption's code (judged accuracy
          of prior samples on validation captions at 1,500 steps 0.14 -> 0.22 with the noise
          below; ``docs/lnfmm.md``, "Text-to-image");
        * the image is decoded from the *caption's* shared code, ``[f_s^{-1}(z_s^t), z'_v]``
          (``lambda_cross_v``; ``lambda_rec_v=0``), which is what text-to-image decodes;
        * ``image_perceptual=1``: the decoder's error also counts the frozen trunk's features
          of its image (a perceptual loss). With pixel L1 alone the decoder drew the grey
          background and no object for 2,000 steps (judged accuracy 0); with it, a decoder
          given the true scene draws it exactly for 68% of images after 1,500 steps;
        * ``image_specific_dim=16``: :math:`z'_v` holds what a caption leaves free;
        * ``image_noise_std=1.0``: the noise on the standardized :math:`z'_v` (judged accuracy
          on validation at 1,500 steps: 0.5 -> 0.15, 1.0 -> 0.22 over two seeds, 2.0 -> 0.14).
          Still far from the target: the recipe does not yet learn its task.

        Example:
            >>> LNFMMConfig.text_to_image(vocab_size=40).image_encoder
            'cells'
        """
        base: dict[str, Any] = dict(
            image_encoder="cells",
            image_encoder_init="shapes-trunk",
            freeze_image_trunk=True,
            shared_norm="batch-all",
            image_encoder_lr=1e-4,
            image_specific_dim=16,
            image_noise_std=1.0,
            lambda_rec_v=0.0,
            lambda_cross_v=0.05,
            image_perceptual=1.0,
            notes={"preset": "text_to_image"},
        )
        base.update(overrides)
        return cls.small(**base)

    @classmethod
    def small(cls, **overrides: Any) -> "LNFMMConfig":
        r"""A tiny pixel model for the shapes data that trains on 2 CPU cores in minutes.

        Loss weights, found on the shapes data (1,500 steps of batch 32, 50 test images x 20
        samples, ground-truth judges; the runs are listed in ``docs/lnfmm.md``):

        * the caption is reconstructed from the *image's* shared code, ``[f_s(z_s^v), z'_t]``
          (``lambda_cross_t=1``, ``lambda_rec_t=0``), which is what captioning decodes. With
          the caption's own code (``lambda_rec_t=1``) the small model either collapsed both
          shared codes to a constant and kept the caption in z'_t (Eq. 10 as written), or,
          with the text code as a fixed alignment target, packed caption-specific detail into
          z_s^t that no image can predict; either way greedy captions ignored the image
          (accuracy at temperature 0: 0.06 and 0.14 vs 0.40 with this setting);
        * lr 2e-3 for every part (the conv encoder is trained from scratch, so the official
          1e-5 for a pre-trained VGG does not apply; 1e-3 learned the text path ~3x slower);
        * image L1 (summed over 64x64x3 values, ~500) weighted 0.05 so that it does not
          swamp the caption and prior terms in the shared image encoder;
        * KLs, log-det and alignment 1 (Eq. 10); word dropout 0.75 (official 0.8);
        * a pre-trained, frozen image trunk (``image_encoder_init="shapes-attributes"``,
          ``freeze_image_trunk=True``), as the paper's VGG-16 is pre-trained: trained from
          scratch inside LNFMM, the conv encoder's code carried no image content (linear
          probes at chance); with it, every caption metric of ``benchmarks/quality.py``
          improved on both seeds (consensus CIDEr 1.05 vs 0.60, Unique 36% vs 11%). The
          pre-training (about 30 s on one core, cached) is run by
          :func:`flowkit.training.train`; in a loop of your own call
          :func:`flowkit.training.initialize_image_encoder` first. With another
          ``image_encoder`` the two options are off.

        Example:
            >>> LNFMMConfig.small(vocab_size=40).shared_dim
            32
        """
        base: dict[str, Any] = dict(
            vocab_size=64,
            max_caption_len=20,
            shared_dim=32,
            image_specific_dim=8,
            text_specific_dim=8,
            image_encoder="conv",
            image_size=64,
            image_encoder_hidden=128,
            conv_encoder_channels=16,
            word_embedding_dim=32,
            text_encoder_hidden=64,
            text_encoder_layers=2,
            decoder_hidden=128,
            decoder_embedding_dim=32,
            word_dropout=0.75,
            embedding_dropout=0.1,
            generator_channels=8,
            discriminator_channels=8,
            feature_decoder_hidden=128,
            fs_layers=4,
            fs_hidden=128,
            fv_layers=4,
            fv_hidden=64,
            ft_layers=4,
            ft_hidden=64,
            lambda_kl_t=1.0,
            lambda_kl_v=1.0,
            lambda_logdet=1.0,
            lambda_rec_t=0.0,
            lambda_cross_t=1.0,
            lambda_rec_v=0.05,
            lambda_align=1.0,
            lambda_adv=1.0,
            image_encoder_lr=2e-3,
            lr=2e-3,
            image_encoder_init="shapes-attributes",
            freeze_image_trunk=True,
            notes={"preset": "small"},
        )
        if overrides.get("image_encoder", "conv") != "conv":  # the pre-training is for the conv trunk
            base.update(image_encoder_init="random", freeze_image_trunk=False)
        base.update(overrides)
        return cls(**base)
