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
    settings = TrainSettings(steps=recipe.steps, batch_size=recipe.batch_size)
    trainer = train(recipe.config, data, settings, out="runs/caption")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowkit.models.lnfmm.config import LNFMMConfig

__all__ = ["Recipe", "captioning_recipe", "RECIPES"]


@dataclass(frozen=True)
class Recipe:
    r"""A task's model config and training budget.

    Arguments:
        name: The task (``"captioning"`` or ``"text_to_image"``).
        config: The model config (adapted to the data's vocabulary and input by
            :func:`flowkit.training.train`).
        steps: Training steps of the budget it was tuned at.
        batch_size: Pairs per step.
        image_input: ``"features"`` (pre-extracted, the paper's route) or ``"pixels"``.
        validate_every: Steps between validation rows of the learning curve.
    """

    name: str
    config: LNFMMConfig
    steps: int
    batch_size: int
    image_input: str
    validate_every: int = 500


def captioning_recipe(**overrides: Any) -> Recipe:
    r"""Diverse captioning on pre-extracted image features (:func:`flowkit.data.features.shapes_trunk_features`).

    Arguments:
        overrides: Config fields to change (see :meth:`LNFMMConfig.captioning`).

    Example:
        >>> r = captioning_recipe()
        >>> r.config.image_encoder, r.config.shared_norm
        ('features', 'batch')
    """
    return Recipe("captioning", LNFMMConfig.captioning(**overrides), steps=4000, batch_size=32, image_input="features")


RECIPES = {"captioning": captioning_recipe}
