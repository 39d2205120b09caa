r"""LNFMM's training step for the engine, its GAN alternation and its config's adaptation to data.

The engine (:class:`flowkit.training.Trainer`) knows no model: it calls
``step(model, batch) -> {name: loss term}``. This module defines LNFMM's step without
importing the engine; :func:`flowkit.recipes.train` joins the two.

Example:
    >>> import torch
    >>> from flowkit.models import LNFMM, LNFMMConfig
    >>> model = LNFMM(LNFMMConfig.small(vocab_size=20, max_caption_len=8, image_encoder_init="random", freeze_image_trunk=False))
    >>> batch = {"image": torch.rand(2, 3, 64, 64), "caption": torch.randint(4, 20, (2, 8))}
    >>> {"loss", "kl_t", "kl_v", "rec_t"} <= set(LNFMMStep()(model, batch))
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from flowkit.models.lnfmm.config import IMAGE_SIZE

__all__ = ["LNFMMStep", "adapt_config"]


def _discriminator_loss(model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
    return model.discriminator_loss(batch["image"], batch["caption"])


class LNFMMStep:
    r"""One LNFMM training step: ``model(images, captions, labeled=...)`` and its loss terms.

    For the engine's :class:`~flowkit.training.Step` protocol. The param groups are
    ``model.optimizer_groups()`` (one per part, each with its learning rate and gradient value
    clip). With ``model.config.image_decoder.gan`` every step is a discriminator step (its own Adam on
    ``model.discriminator_group()``, hinge loss, logged as ``d_loss``), then the generator
    step; checkpoints then also hold ``discriminator``, ``optimizer_d`` (and ``scaler_d``).
    Any module with LNFMM's calling convention works (``forward(images, captions,
    labeled=None)`` returning a dict with a scalar ``"loss"``, and ``optimizer_groups()``).

    Example:
        >>> from flowkit.models import LNFMM, LNFMMConfig
        >>> model = LNFMM(LNFMMConfig.small(vocab_size=20, gan=True))
        >>> [u["name"] for u in LNFMMStep().extra_updates(model)], LNFMMStep().param_groups(model)[0]["name"]
        (['d'], 'image_encoder')
    """

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> Mapping[str, Tensor]:
        r"""The loss terms of a batch.

        Arguments:
            model: The LNFMM (or its DistributedDataParallel wrapper).
            batch: ``image`` (B, ...), ``caption`` (B, L) and, in semi-supervised training,
                ``labeled`` (B,) booleans.
        """
        if "labeled" in batch:
            return model(batch["image"], batch["caption"], labeled=batch["labeled"])
        return model(batch["image"], batch["caption"])

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        r"""``model.optimizer_groups()``: Adam param groups with ``name``, ``lr`` and ``clip_value``.

        Arguments:
            model: The LNFMM.
        """
        if not hasattr(model, "optimizer_groups"):
            raise TypeError(f"LNFMMStep trains a model with optimizer_groups() (an LNFMM); {type(model).__name__} has none")
        return list(model.optimizer_groups())

    def extra_updates(self, model: nn.Module) -> list[dict[str, Any]]:
        r"""The GAN's discriminator update when ``model.config.image_decoder.gan``, else nothing.

        Arguments:
            model: The LNFMM.
        """
        if getattr(model, "discriminator", None) is None:  # config.image_decoder.gan
            return []
        return [
            {
                "name": "d",
                "group": model.discriminator_group(),
                "loss": _discriminator_loss,
                "state": {"discriminator": model.discriminator},
            }
        ]


def adapt_config(config: Any, data: Any) -> Any:
    r"""The model config adjusted to the data: vocabulary size, caption length, image input.

    Arguments:
        config: An :class:`~flowkit.models.LNFMMConfig`.
        data: A :class:`~flowkit.data.CaptionData` (``vocab``, ``train``, ``image_kind``,
            ``image_shape``, optionally ``max_len``).

    Raises:
        ValueError: ``image_decoder.gan=True`` or ``loss.image_perceptual > 0`` with image features
            (both need pixels), pixels of another size than 64x64, or an unknown image kind.

    Example:
        >>> from types import SimpleNamespace
        >>> from flowkit.models import LNFMMConfig
        >>> data = SimpleNamespace(vocab=range(30), train=[], image_kind="features", image_shape=(512,), max_len=12)
        >>> cfg = adapt_config(LNFMMConfig.small(), data)
        >>> cfg.vocab_size, cfg.max_caption_len, cfg.image_encoder.kind, cfg.image_encoder.feature_dim
        (30, 12, 'features', 512)
    """
    changes: dict[str, Any] = {"vocab_size": len(data.vocab)}
    max_len = getattr(data, "max_len", None)
    if max_len is None and len(data.train) > 0:
        max_len = int(data.train[0]["caption"].shape[-1])
    if max_len is not None:
        changes["max_caption_len"] = int(max_len)
    shape = tuple(data.image_shape)
    if data.image_kind == "features":
        # the conv trunk's pre-training (small()) has no place in a features encoder
        changes["image_encoder"] = {"kind": "features", "feature_dim": int(shape[-1]), "init": "random", "freeze_trunk": False}
        if config.image_decoder.gan:
            raise ValueError("image_decoder.gan=True needs pixel images, but the data holds image features: pass gan=False or pixel data")
        if config.loss.image_perceptual > 0:
            raise ValueError(
                f"loss.image_perceptual={config.loss.image_perceptual} (the text-to-image recipe) compares generated images "
                f"with the data's pixels, but the data holds image features: load the data without features=, or set "
                f"loss.image_perceptual=0"
            )
    elif data.image_kind == "pixels":
        if config.image_encoder.kind == "features":
            changes["image_encoder"] = {"kind": "conv"}
        if shape != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"the data's images have shape {shape}, but the pixel encoders and the SAGAN generator are built for "
                f"(3, {IMAGE_SIZE}, {IMAGE_SIZE}): load the data with image_size={IMAGE_SIZE}"
            )
    else:
        raise ValueError(f"unknown image kind {data.image_kind!r} (expected 'pixels' or 'features')")
    return config.replace(**changes)
