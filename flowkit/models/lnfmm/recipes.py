r"""Recipes: a config and a training budget for one task, as the official code has them.

The official LNFMM code trains captioning and text-to-image as two separate runs with their
own loss weights and learning rates (``params_i2t`` / ``params_t2i``). A :class:`Recipe` is
that for flowkit: one :class:`~flowkit.models.LNFMM` class, a config tuned for the task on the
embedded shapes data, and the budget (steps, batch) it was tuned at. Every number is measured;
the runs are in ``docs/lnfmm.md``.

.. code-block:: python

    from flowkit.models.lnfmm.recipes import captioning_recipe
    from flowkit.training import TrainSettings, train

    recipe = captioning_recipe()
    trainer = train(recipe.config, data, TrainSettings(**recipe.settings()), out="runs/caption")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flowkit.models.lnfmm.config import LNFMMConfig

__all__ = [
    "Recipe",
    "captioning_recipe",
    "captioner_baseline",
    "cvae_baseline",
    "text_to_image_recipe",
    "text_to_image_baseline",
    "text_to_image_pixels_recipe",
    "RECIPES",
    "choose_decoding",
]


@dataclass(frozen=True)
class Recipe:
    r"""A task's model config and training budget.

    Arguments:
        name: The task (``"captioning"`` or ``"text_to_image"``).
        config: The model config (adapted to the data's vocabulary and input by
            :func:`flowkit.training.train`).
        steps: Training steps of the budget it was tuned at.
        batch_size: Pairs per step.
        image_input: What the model reads of an image: ``"features"`` (the shapes trunk's cell
            features, pre-extracted: the paper's route), ``"reading"`` (the trunk's read-out,
            pre-extracted, drawn back by :func:`flowkit.data.renderer.render_readings`) or
            ``"pixels"`` (:func:`flowkit.data.features.load_shapes_coco` loads each).
        validate_every: Steps between validation rows of the learning curve.
        lr_schedule: The engine's learning-rate schedule (``TrainSettings.lr_schedule``).
        decoding: How each sampled latent becomes a caption: keyword arguments of
            :func:`flowkit.evaluation.generate_captions` (``method``, ``beam_width``,
            ``word_temperature``), as chosen on validation images.
    """

    name: str
    config: LNFMMConfig
    steps: int
    batch_size: int
    image_input: str
    validate_every: int = 500
    lr_schedule: str = "constant"
    decoding: Mapping[str, Any] = field(default_factory=lambda: {"method": "greedy"})

    def settings(self) -> dict[str, Any]:
        r"""The budget as keyword arguments of :class:`flowkit.training.TrainSettings`."""
        return {"steps": self.steps, "batch_size": self.batch_size, "validate_every": self.validate_every, "lr_schedule": self.lr_schedule}


def captioning_recipe(**overrides: Any) -> Recipe:
    r"""Diverse captioning on pre-extracted image features (:func:`flowkit.data.features.shapes_trunk_features`).

    Arguments:
        overrides: Config fields to change (see :meth:`LNFMMConfig.captioning`).

    Each sampled latent is decoded by a beam search of width 5: on validation images (100 x 100
    samples at temperature 1) judged accuracy 0.73 greedy, 0.77 / 0.79 / 0.80 / 0.80 with beams
    of 2 / 3 / 5 / 8, coverage 0.193 -> 0.182 (``docs/lnfmm.md``, "Decoding each latent").

    Example:
        >>> r = captioning_recipe()
        >>> r.config.image_encoder.kind, r.config.posterior.shared_norm, r.decoding["beam_width"]
        ('features', 'batch', 5)
    """
    # cosine decay: accuracy at temperature 1 0.685 -> 0.741 at 4,000 steps (docs/lnfmm.md, l1/l2)
    return Recipe(
        "captioning",
        LNFMMConfig.captioning(**overrides),
        steps=4000,
        batch_size=32,
        image_input="features",
        lr_schedule="cosine",
        decoding={"method": "beam", "beam_width": 5},
    )


def captioner_baseline(**overrides: Any) -> Recipe:
    r"""The supervised captioner without a latent, on the captioning recipe's data and budget.

    The same model class with ``text_specific_dim=0`` (no :math:`z'_t`, no :math:`f_t`) and
    one loss term: the caption's NLL decoded from the image's shared code (``cross_t``); the
    image encoder trains at the decoder's rate, as a supervised captioner's would. Diverse
    captions come from sampling words (``method="sample"``) or beams.

    Example:
        >>> captioner_baseline().config.text_specific_dim
        0
    """
    zero = dict(lambda_kl_t=0.0, lambda_kl_v=0.0, lambda_logdet=0.0, lambda_align=0.0, lambda_rec_t=0.0, lambda_rec_v=0.0)
    base: dict[str, Any] = dict(
        text_specific_dim=0, lambda_cross_t=1.0, image_encoder_lr=2e-3, notes={"preset": "captioner baseline"}, **zero
    )
    base.update(overrides)
    # no latent: every beam of an image is the same caption, so its samples draw words
    return dataclasses.replace(captioning_recipe(**base), name="captioner", decoding={"method": "sample", "word_temperature": 1.0})


def cvae_baseline(**overrides: Any) -> Recipe:
    r"""The CVAE baseline: the captioning recipe with Gaussian conditional priors and free bits.

    :math:`p(z'_t | z_s) = \mathcal{N}(\mu(z_s), \sigma(z_s)^2)` instead of the flow; free
    bits (``kl_free_nats``, Kingma et al., 2016) keep the KL from collapsing to 0, the standard
    remedy that lets a CVAE sample more than one caption per image. Its latents are decoded as
    LNFMM's (the recipe's ``decoding``).

    Example:
        >>> cvae_baseline().config.flows.prior
        'gaussian'
    """
    base: dict[str, Any] = dict(prior="gaussian", kl_free_nats=3.0, notes={"preset": "cvae baseline"})
    base.update(overrides)
    return dataclasses.replace(captioning_recipe(**base), name="cvae")


def text_to_image_recipe(**overrides: Any) -> Recipe:
    r"""Diverse text-to-image through the trunk's reading (:meth:`LNFMMConfig.text_to_image`).

    LNFMM decodes a caption into the pre-trained shapes trunk's per-cell reading, and the cell
    renderer pre-trained on another data seed draws it (``docs/lnfmm.md``, "Text-to-image
    through the trunk's reading").

    Arguments:
        overrides: Config fields to change.

    Example:
        >>> r = text_to_image_recipe()
        >>> r.config.image_encoder.kind, r.image_input
        ('features', 'reading')
    """
    # 4,000 steps: decoded readings of prior samples on validation 0.62 -> 0.71 true at T = 1
    # against 2,000 (docs/lnfmm.md)
    return Recipe(
        "text_to_image", LNFMMConfig.text_to_image(**overrides), steps=4000, batch_size=32, image_input="reading", lr_schedule="cosine"
    )


def text_to_image_pixels_recipe(**overrides: Any) -> Recipe:
    r"""Text-to-image end to end on pixels (:meth:`LNFMMConfig.text_to_image_pixels`).

    Arguments:
        overrides: Config fields to change.

    Example:
        >>> r = text_to_image_pixels_recipe()
        >>> r.config.image_encoder.kind, r.image_input
        ('cells', 'pixels')
    """
    return Recipe(
        "text_to_image_pixels",
        LNFMMConfig.text_to_image_pixels(**overrides),
        steps=1500,
        batch_size=32,
        image_input="pixels",
        lr_schedule="cosine",
    )


def text_to_image_baseline(**overrides: Any) -> Recipe:
    r"""The deterministic caption -> image decoder: the text-to-image recipe without :math:`z'_v`.

    ``image_specific_dim=0`` (LNFMM-TXT: no :math:`z'_v`, no :math:`f_v`): every image of a
    caption is the same, decoded from the caption's shared code alone; the baseline that
    shows what the image prior adds.

    Example:
        >>> text_to_image_baseline().config.image_specific_dim
        0
    """
    # no z'_v, so no prior sample to decode from (cross_v_prior would weigh nothing)
    base: dict[str, Any] = dict(image_specific_dim=0, loss={"cross_v_prior": 0.0}, notes={"preset": "text-to-image baseline"})
    base.update(overrides)
    return dataclasses.replace(text_to_image_recipe(**base), name="text_to_image_deterministic")


def choose_decoding(default: Mapping[str, Any], method: str | None = None, beam_width: int | None = None) -> dict[str, Any]:
    r"""A decoding (keywords of :func:`flowkit.evaluation.generate_captions`): ``default`` (e.g.
    a recipe's ``decoding``) with the method and beam width a user gave; a beam width alone
    asks for beams.

    Example:
        >>> choose_decoding({"method": "greedy"}), choose_decoding({"method": "greedy"}, beam_width=3)
        ({'method': 'greedy'}, {'method': 'beam', 'beam_width': 3})
    """
    if method is None and beam_width is None:
        return dict(default)
    method = method or ("beam" if beam_width is not None else default["method"])
    if method != "beam":
        return {"method": method}
    return {"method": "beam", "beam_width": beam_width or default.get("beam_width", 2)}


RECIPES = {
    "captioning": captioning_recipe,
    "captioner": captioner_baseline,
    "cvae": cvae_baseline,
    "text_to_image": text_to_image_recipe,
    "text_to_image_deterministic": text_to_image_baseline,
    "text_to_image_pixels": text_to_image_pixels_recipe,
}
