r"""Diagnostics of LNFMM's joint space while it trains: does content reach the decoder?

Three questions, each answered exactly on the shapes data (``docs/lnfmm.md``):

* **Scale.** Is the shared space larger than the fixed posterior noise? :func:`code_scales`
  gives the summed variance of each shared code over a batch against the noise's summed
  variance (``shared_dim * noise_std**2``): a ratio near 1 or below means no content survives.
* **Reconstruction.** Do the codes carry the caption? :func:`reconstruction_accuracy` decodes
  reference captions greedily from their own posterior code ``[z_s^t, z'_t]`` and from the
  image's shared code with the caption's own ``z'_t`` (``[f_s(z_s^v), z'_t]``, what captioning
  decodes) and judges them true or false of the image.
* **Sampling.** Are sampled captions true and varied? :func:`caption_validator` samples at the
  prior's temperature 1 and 0 on validation images and reports accuracy and coverage.

:func:`caption_validator` bundles them into a ``validate(model) -> dict`` function for the
training engine (``TrainSettings.validate_every``), which writes a learning curve to
``validation.csv``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from flowkit.data.grammar import Scene
from flowkit.data.judges import caption_accuracy, caption_coverage

__all__ = ["code_scales", "reconstruction_accuracy", "caption_validator"]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def code_scales(model: nn.Module, images: Tensor, captions: Tensor) -> dict[str, float]:
    r"""Summed variances of the shared codes over a batch, against the posterior noise.

    Returns ``scale_text`` (:math:`\sum_d \mathrm{Var}[z_s^t]_d`), ``scale_image``
    (of :math:`f_s(z_s^v)`, in text space), ``noise`` (:math:`S \sigma^2`, the summed variance
    of the fixed posterior noise), ``scale_to_noise`` (``scale_text / noise``) and
    ``align`` (the mean squared distance between the two codes of a pair).

    Arguments:
        model: An :class:`~flowkit.models.LNFMM` (put in eval mode by the caller).
        images: A batch of images or features.
        captions: Their captions (B, L).
    """
    cfg = model.config
    text = model.encode_captions(captions)["shared"]
    image = model.encode_images(images)["shared_text"]
    noise = cfg.shared_dim * cfg.posterior.noise_std**2
    scale_text = float(text.var(0).sum())
    return {
        "scale_text": scale_text,
        "scale_image": float(image.var(0).sum()),
        "noise": noise,
        "scale_to_noise": scale_text / noise if noise > 0 else float("inf"),
        "align": float((image - text).square().sum(1).mean()),
    }


@torch.no_grad()
def reconstruction_accuracy(model: nn.Module, images: Tensor, captions: Tensor, scenes: Sequence[Scene], vocab: Any) -> dict[str, float]:
    r"""Greedy decodes of reference captions from their codes, judged against their scenes.

    Returns ``recon_own`` (decoded from ``[z_s^t, z'_t]``, the caption's own posterior means)
    and ``recon_cross`` (from ``[f_s(z_s^v), z'_t]``: the image's shared code, the caption's
    ``z'_t``). Without a text latent both decode the shared code alone.

    Arguments:
        model: An :class:`~flowkit.models.LNFMM` in eval mode.
        images: The images of the pairs.
        captions: The captions (B, L) as token ids.
        scenes: The scene of each pair.
        vocab: The vocabulary (``decode``).
    """
    from flowkit.models.lnfmm.sampling import greedy_decode, ids_to_strings

    text = model.encode_captions(captions)
    shared_image = model.encode_images(images)["shared_text"]
    codes = {
        "recon_own": text["code"],
        "recon_cross": torch.cat([shared_image, text["specific"]], dim=1),
    }
    judge = {k: s for k, s in enumerate(scenes)}
    out = {}
    for name, code in codes.items():
        decoded = ids_to_strings(greedy_decode(model.text_decoder, code, model.config.max_caption_len), vocab)
        out[name] = caption_accuracy({k: [c] for k, c in enumerate(decoded)}, judge)
    return out


def _pairs(data: Any, num: int) -> tuple[Tensor, Tensor, list[int]]:
    r"""``num`` training pairs spread over the training set: images, captions, image ids."""
    n = len(data.train)
    index = torch.linspace(0, n - 1, min(num, n)).long().tolist()
    items = [data.train[i] for i in index]
    return (
        torch.stack([it["image"] for it in items]),
        torch.stack([it["caption"] for it in items]),
        [data.train.image_ids[i] for i in index],
    )


def caption_validator(
    data: Any,
    scenes: Mapping[int, Scene] | None = None,
    num_images: int = 50,
    num_samples: int = 10,
    num_pairs: int = 256,
    split: str = "val",
    seed: int = 0,
) -> Callable[[nn.Module], dict[str, float]]:
    r"""A ``validate(model)`` function for the training engine: the learning curve of captioning.

    Each call reports, on the first ``num_images`` images of ``split``:
    ``accuracy`` and ``coverage`` of ``num_samples`` captions sampled at the prior's
    temperature 1 (the main job's ground-truth numbers, on validation images),
    ``accuracy_t0`` at temperature 0 (the prior's mode); and on ``num_pairs`` training pairs
    :func:`reconstruction_accuracy` and :func:`code_scales`. About a second on the small model.

    Arguments:
        data: A :class:`~flowkit.data.CaptionData`.
        scenes: ``{image_id: Scene}`` (default ``data.scenes``; an export's from
            :func:`flowkit.evaluation.scenes_from_export`).
        num_images: Validation images.
        num_samples: Captions per image.
        num_pairs: Training pairs of the reconstruction and scale diagnostics.
        split: ``"val"`` (never tune on ``"test"``).
        seed: The sampling seed (the engine restores every RNG after validating anyway).

    Example (on an untrained model; in training, pass it as
    ``train(config, data, TrainSettings(validate_every=500), validate=caption_validator(data))``):
        >>> from flowkit.data import load_caption_data
        >>> from flowkit.models import LNFMM, LNFMMConfig
        >>> data = load_caption_data("shapes", sizes={"train": 4, "val": 2, "test": 2})
        >>> model = LNFMM(LNFMMConfig.small(vocab_size=len(data.vocab), image_encoder_init="random", freeze_image_trunk=False))
        >>> scores = caption_validator(data, num_images=2, num_samples=2, num_pairs=4)(model)
        >>> {"accuracy", "coverage", "accuracy_t0"} <= set(scores), all(0 <= scores[k] <= 1 for k in ("accuracy", "coverage"))
        (True, True)
    """
    from flowkit.evaluation.captioning import generate_captions

    scenes = scenes if scenes is not None else getattr(data, "scenes", None)
    if scenes is None:
        raise ValueError("caption_validator needs the scenes of the images (the shapes data, or scenes_from_export(root))")
    dataset = getattr(data, split)
    images, captions, pair_ids = _pairs(data, num_pairs)
    pair_scenes = [scenes[i] for i in pair_ids]

    def validate(model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for temperature, suffix in ((1.0, ""), (0.0, "_t0")):
            caps = generate_captions(
                model,
                dataset,
                data.vocab,
                num_samples=num_samples if temperature else 1,
                temperature=temperature,
                limit=num_images,
                progress=False,
                seed=seed,
            )
            out[f"accuracy{suffix}"] = caption_accuracy(caps, scenes)
            if temperature:
                out["coverage"] = caption_coverage(caps, scenes)
        dev = _device(model)
        x, c = images.to(dev), captions.to(dev)
        out.update(reconstruction_accuracy(model, x, c, pair_scenes, data.vocab))
        out.update(code_scales(model, x, c))
        return out

    return validate
