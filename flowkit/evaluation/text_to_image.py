r"""Text-to-image evaluation: the paper's Table 6 (Inception score, IvOM, LPIPS diversity) and,
on the embedded shapes data, exact judges of generated images (accuracy against the caption,
spread of the attributes the caption leaves free).

Images are sampled once (:func:`sample_text_to_image`); each table is a function of the samples
returning a typed result with ``to_json()`` (:func:`image_judge_table`, :func:`ivom_table`,
:func:`image_diversity_table`); :func:`evaluate_text_to_image` runs them all.

.. code-block:: python

    from flowkit.evaluation import evaluate_text_to_image

    results = evaluate_text_to_image(model, data, num_captions=20, num_samples=16)
    results["inception_score"], results["ivom"], results["diversity"]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowkit.evaluation.results import JsonResult, timed, to_jsonable

__all__ = [
    "evaluate_text_to_image",
    "judge_generated_images",
    "sample_images_for_captions",
    "encode_captions_text",
    "image_drawer",
    "shapes_grammar",
    "ImageSamples",
    "sample_text_to_image",
    "ImageJudgeResult",
    "image_judge_table",
    "IvomResult",
    "ivom_table",
    "ImageDiversityResult",
    "image_diversity_table",
    "TextToImageResult",
]


def encode_captions_text(captions: Sequence[str], vocab: Any, max_len: int) -> Tensor:
    r"""Token ids ``(N, max_len)`` of caption strings (``[start, words..., end, pad...]``).

    Arguments:
        captions: The captions.
        vocab: A :class:`~flowkit.data.Vocabulary`.
        max_len: The encoded length (the model's ``max_caption_len``).
    """
    if len(captions) == 0:
        raise ValueError("no captions")
    return torch.stack([vocab.encode_tensor(c, max_len) for c in captions])


@torch.no_grad()
def sample_images_for_captions(
    model: nn.Module,
    captions: Sequence[str],
    vocab: Any,
    num_samples: int = 16,
    temperature: float = 1.0,
    batch_size: int = 16,
    seed: int | None = 0,
    progress: bool = False,
    render: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Samples ``num_samples`` images per caption: (N, S, 3, H, W) in [0, 1].

    :math:`z_s = f_s^{-1}(\mu(z_s^t))`, :math:`z'_v \sim p(z'_v \mid z_s)`, then the image
    decoder (:meth:`LNFMM.sample_images`). The model is put in eval mode. A model that
    decodes features returns (N, S, F) features, or with ``render`` the images it draws.

    Arguments:
        model: A trained :class:`~flowkit.models.LNFMM`.
        captions: The captions (strings).
        vocab: The model's vocabulary.
        num_samples: Images per caption.
        temperature: Scales the prior's base samples.
        batch_size: Captions per model call.
        seed: Seeds the sampling in a forked RNG; None uses the global RNG.
        progress: Show a progress bar.
        render: Draws decoded features ``(N, S, F)`` as images ``(N, S, 3, H, W)`` (e.g.
            :func:`flowkit.data.renderer.render_readings` for the text-to-image recipe).

    Example:
        >>> from flowkit.data import load_caption_data
        >>> from flowkit.models import LNFMM, LNFMMConfig
        >>> data = load_caption_data("shapes", sizes={"train": 4, "val": 2, "test": 2})
        >>> model = LNFMM(LNFMMConfig.small(vocab_size=len(data.vocab), image_encoder_init="random", freeze_image_trunk=False))  # untrained
        >>> imgs = sample_images_for_captions(model, ["a red circle"], data.vocab, num_samples=8)
        >>> imgs.shape, 0 <= imgs.min().item() <= imgs.max().item() <= 1
        (torch.Size([1, 8, 3, 64, 64]), True)
    """
    model.eval()
    ids = encode_captions_text(captions, vocab, model.config.max_caption_len)
    device = next(model.parameters()).device
    outs = []
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for b0 in tqdm(range(0, len(ids), batch_size), desc=f"images x{num_samples}", disable=not progress):
            outs.append(model.sample_images(ids[b0 : b0 + batch_size].to(device), num_samples, temperature=temperature).cpu())
    samples = torch.cat(outs)
    return samples if render is None else render(samples)


def _ivom(
    model: nn.Module, ids: Tensor, targets: Tensor, restarts: int, steps: int, lr: float, seed: int, progress: bool
) -> dict[str, Any]:
    r"""IvOM of the held-out images of each caption, optimising the image-specific code.

    With a flow prior, the optimised variable is the base noise :math:`\epsilon` and the code is
    :math:`z'_v = f_v^{-1}(\epsilon; z_s)`; with the CVAE's Gaussian prior, :math:`z'_v` itself
    (starts drawn from the prior); without image-specific dims (LNFMM-TXT) nothing is free and
    the score is the error of the one image the caption gives.
    """
    from flowkit.distributions import Flow
    from flowkit.metrics import ivom

    with torch.no_grad():
        ctx = model.encode_captions(ids)["shared_image"]
    f_v = getattr(model, "f_v", None)

    def generate(code: Tensor, context: Tensor) -> Tensor:
        return model.decode_images(context, code)

    if f_v is None:
        with torch.no_grad():
            err = (model.decode_images(ctx).clamp(0, 1) - targets).square().flatten(1).mean(1).double()
        return {"mse": float(err.mean()), "per_image": err, "variable": "none (no image-specific code)"}
    dim = int(model.config.image_specific_dim)
    if isinstance(f_v, Flow):

        def code_fn(eps: Tensor, context: Tensor) -> Tensor:
            return f_v.transform.inverse(eps, context=context)[0]

        std = float(getattr(f_v.base, "std", model.config.flows.base_std))
        out = ivom(
            generate,
            targets,
            latent_dim=dim,
            code_fn=code_fn,
            context=ctx,
            restarts=restarts,
            steps=steps,
            lr=lr,
            init_std=std,
            seed=seed,
            progress=progress,
        )
        out["variable"] = "base noise eps of f_v (z'_v = f_v^-1(eps; z_s))"
        return out
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        with torch.no_grad():
            init = f_v.sample(restarts, context=ctx).transpose(0, 1).contiguous()  # (restarts, N, D)
    out = ivom(generate, targets, init_codes=init, context=ctx, restarts=restarts, steps=steps, lr=lr, seed=seed, progress=progress)
    out["variable"] = "image-specific code z'_v (starts drawn from the prior)"
    return out


def judge_generated_images(images: Tensor, captions: Sequence[str], classifier: Any) -> dict[str, Any]:
    r"""The attribute classifier's verdict on ``(N, S, 3, H, W)`` images generated for N captions.

    Returns ``accuracy`` (fraction of all images true of their caption),
    ``free_attribute_spread`` (mean over captions with a true image of
    :func:`~flowkit.data.judges.free_attribute_spread`; NaN when none has one),
    ``captions_with_a_true_image`` and ``per_caption`` (each caption's spread dict).

    Arguments:
        images: The generated images, ``S`` per caption.
        captions: The N captions (of the shapes grammar).
        classifier: A scene reader (:func:`~flowkit.data.judges.get_attribute_classifier`).
    """
    from flowkit.data.judges import free_attribute_spread, image_caption_accuracy

    per_image = [c for c in captions for _ in range(images.shape[1])]
    spreads = [free_attribute_spread(imgs, c, classifier) for imgs, c in zip(images, captions)]
    means = [s["mean"] for s in spreads if not math.isnan(s["mean"])]
    return {
        "accuracy": image_caption_accuracy(images.flatten(0, 1), per_image, classifier),
        "free_attribute_spread": float(np.mean(means)) if means else float("nan"),
        "captions_with_a_true_image": len(means),
        "per_caption": spreads,
    }


def image_drawer(model: nn.Module, renderer: nn.Module | None = None, progress: bool = False) -> Callable[[Tensor], Tensor] | None:
    r"""How a model's samples become images: None for a model that decodes pixels; for a model
    of the shapes trunk's reading (the text-to-image recipe) :func:`flowkit.data.renderer.render_readings`
    with ``renderer`` (default :func:`~flowkit.data.renderer.get_cell_renderer`, trained once and
    cached). Other feature models cannot be drawn (ValueError).

    Arguments:
        model: A :class:`~flowkit.models.LNFMM`.
        renderer: The cell renderer to draw readings with.
        progress: Show a progress bar if the default renderer is trained.

    Example:
        >>> from flowkit.models import LNFMM, LNFMMConfig
        >>> image_drawer(LNFMM(LNFMMConfig.small(vocab_size=20, image_encoder_init="random", freeze_image_trunk=False))) is None
        True
    """
    from functools import partial

    from flowkit.data.renderer import READING_DIM, get_cell_renderer, render_readings

    cfg = model.config
    if cfg.pixels:
        return None
    if cfg.image_encoder.feature_dim != READING_DIM:
        raise ValueError(
            f"this model decodes {cfg.image_encoder.feature_dim} image features, not the shapes trunk's {READING_DIM}-number "
            "reading that the cell renderer draws; train the text-to-image recipe (text_to_image_recipe) or a pixel model"
        )
    return partial(render_readings, renderer=renderer if renderer is not None else get_cell_renderer(progress=progress))


def _needs_pixels(model: nn.Module) -> None:
    cfg = getattr(model, "config", None)
    if cfg is None or not cfg.pixels:
        raise ValueError(
            "text-to-image evaluation needs a model that generates pixels (image_encoder 'conv' or 'vgg16'); "
            "this model works on image features, whose 'images' cannot be judged by the image metrics"
        )


def shapes_grammar(captions: Sequence[str]) -> bool:
    r"""Whether every caption is of the shapes grammar (so the attribute classifier can judge it).

    Example:
        >>> shapes_grammar(["a red circle", "two shapes: a star and a square"]), shapes_grammar(["a zebra"])
        (True, False)
    """
    from flowkit.data.grammar import parse

    return all(parse(c) is not None for c in captions)


@dataclass
class ImageSamples:
    r"""Images sampled for captions: drawn once, read by every table.

    Arguments:
        captions: The N captions.
        images: ``(N, S, 3, H, W)`` generated images in [0, 1].
        tokens: ``(N, L)`` token ids of the captions (:func:`encode_captions_text`).
        source_image_ids: The held-out image each caption came from (empty for given captions).
        targets: ``(N, 3, H, W)``, those held-out images (None for given captions).
        split: The split of the held-out images (None for given captions).
        temperature: Sampling temperature of :math:`p(z'_v \mid z_s)`.

    Example:
        >>> s = ImageSamples(["a red circle"], torch.rand(1, 4, 3, 8, 8), torch.zeros(1, 5, dtype=torch.long))
        >>> s.num_samples
        4
    """

    captions: list[str]
    images: Tensor
    tokens: Tensor
    source_image_ids: list[int] = field(default_factory=list)
    targets: Tensor | None = None
    split: str | None = None
    temperature: float = 1.0

    @property
    def num_samples(self) -> int:
        r"""Images per caption."""
        return int(self.images.shape[1])


def _held_out_captions(data: Any, split: str, num_captions: int) -> tuple[list[str], list[int], Tensor]:
    r"""The first caption of each of the first ``num_captions`` images of a split, their ids and images."""
    dataset = getattr(data, split)
    refs = data.references[split]
    n = min(num_captions, len(dataset))
    if n < 1:
        raise ValueError(f"split {split!r} has no images")
    items = [dataset[i] for i in range(n)]
    source_ids = [int(it["image_id"]) for it in items]
    return [refs[i][0] for i in source_ids], source_ids, torch.stack([it["image"] for it in items]).float()


def sample_text_to_image(
    model: nn.Module,
    data: Any,
    split: str = "test",
    num_captions: int = 20,
    num_samples: int = 16,
    *,
    captions: Sequence[str] | None = None,
    temperature: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> ImageSamples:
    r"""Samples ``num_samples`` images per caption (:func:`sample_images_for_captions`), once for
    all the tables.

    Captions: the first caption of each of the first ``num_captions`` images of ``split`` (held
    out from training; the image it came from is the IvOM target), or ``captions``.

    Arguments:
        model: A trained :class:`~flowkit.models.LNFMM` with pixel images.
        data: A :class:`~flowkit.data.CaptionData` (or a vocabulary, with ``captions``).
        split: Where the captions and held-out images come from.
        num_captions: Captions drawn from the split.
        num_samples: Images per caption.
        captions: Explicit captions instead (no held-out images then).
        temperature: Sampling temperature of :math:`p(z'_v \mid z_s)`.
        batch_size: Captions per sampling call.
        seed: Seed of the sampling.
        progress: Show a progress bar.

    Returns:
        An :class:`ImageSamples` with ``num_samples`` images per caption.

    .. code-block:: python

        samples = sample_text_to_image(model, data, num_captions=20, num_samples=16)
        samples.images.shape  # (20, 16, 3, 64, 64)
    """
    _needs_pixels(model)
    model.eval()
    targets: Tensor | None = None
    if captions is None:
        caps, source_ids, targets = _held_out_captions(data, split, num_captions)
    else:
        caps, source_ids = list(captions), []
    vocab = data.vocab if hasattr(data, "vocab") else data
    images = sample_images_for_captions(model, caps, vocab, num_samples, temperature, batch_size, seed, progress)
    tokens = encode_captions_text(caps, vocab, model.config.max_caption_len)
    return ImageSamples(caps, images, tokens, source_ids, targets, split if captions is None else None, float(temperature))


@dataclass
class ImageJudgeResult(JsonResult):
    r"""Table 6's Inception score and the attribute classifier's verdicts on generated images.

    Arguments:
        inception_score: The Inception score with the classifier as the network.
        inception_score_std: Its standard deviation over chunks.
        caption_accuracy: Fraction of generated images whose scene makes their caption true.
        reference_accuracy: The same for the real held-out images (None without them).
        free_attribute_spread: Mean over captions of the normalized entropy of the attributes
            the caption leaves free, across its correct images (None/NaN when none has one).
        free_attribute_spread_captions: Captions with a correct image.
        free_attribute_spread_per_caption: Each caption's spread dict.
        inception_network: The network of the Inception score, in words.
    """

    inception_score: float
    inception_score_std: float
    caption_accuracy: float
    reference_accuracy: float | None
    free_attribute_spread: float
    free_attribute_spread_captions: int
    free_attribute_spread_per_caption: list[dict[str, float]]
    inception_network: str = "shapes attribute classifier (48 shape x color x size classes)"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"inception_score": self.inception_score, "inception_score_std": self.inception_score_std}
        out.update(inception_network=self.inception_network, caption_accuracy=self.caption_accuracy)
        if self.reference_accuracy is not None:
            out["reference_accuracy"] = self.reference_accuracy
        out.update(free_attribute_spread=self.free_attribute_spread, free_attribute_spread_captions=self.free_attribute_spread_captions)
        out["free_attribute_spread_per_caption"] = self.free_attribute_spread_per_caption
        return to_jsonable(out)


def image_judge_table(samples: ImageSamples, classifier: Any = None, is_splits: int = 10, progress: bool = False) -> ImageJudgeResult:
    r"""The Inception score of Table 6 and the exact judges of generated images (shapes grammar).

    * ``inception_score`` (mean, std over ``is_splits`` chunks): the Inception score with the
      shapes attribute classifier as the network (48 shape x color x size classes,
      :func:`flowkit.data.judges.class_probabilities`); no Inception weights exist offline.
    * ``caption_accuracy``: the fraction of generated images whose scene, as the classifier
      reads it, makes the caption true; ``reference_accuracy`` is the same for the real
      held-out images (the judge's own ceiling).
    * ``free_attribute_spread``: per caption, the normalized entropy of the attributes it
      leaves free across its correct images, averaged over captions (1 = evenly spread).

    Arguments:
        samples: The generated images (captions of the shapes grammar).
        classifier: The attribute classifier (default
            :func:`flowkit.data.judges.get_attribute_classifier`, trained once and cached).
        is_splits: Chunks of the Inception score (capped at the number of images).
        progress: Show progress while the default classifier is trained.

    Returns:
        An :class:`ImageJudgeResult`.

    .. code-block:: python

        judged = image_judge_table(sample_text_to_image(model, data))
        judged.caption_accuracy, judged["free_attribute_spread"]
    """
    from flowkit.data.judges import class_probabilities, get_attribute_classifier, image_caption_accuracy
    from flowkit.metrics import inception_score

    if not shapes_grammar(samples.captions):
        raise ValueError("the attribute classifier judges captions of the shapes grammar only")
    clf = classifier if classifier is not None else get_attribute_classifier(progress=progress)
    flat = samples.images.flatten(0, 1)
    is_mean, is_std = inception_score(class_probabilities(flat, clf), splits=max(1, min(is_splits, len(flat))))
    judged = judge_generated_images(samples.images, samples.captions, clf)
    reference = image_caption_accuracy(samples.targets, samples.captions, clf) if samples.targets is not None else None
    spread, spread_captions = judged["free_attribute_spread"], judged["captions_with_a_true_image"]
    return ImageJudgeResult(is_mean, is_std, judged["accuracy"], reference, spread, spread_captions, judged["per_caption"])


@dataclass
class IvomResult(JsonResult):
    r"""Table 6's IvOM: the error of the best reconstruction of the held-out images.

    Arguments:
        mse: Mean squared error on [0, 1] pixels.
        variable: What was optimised, in words.
        restarts: Restarts per image.
        steps: Adam steps per restart.

    Example:
        >>> IvomResult(0.25, "base noise", 3, 100).to_json()["ivom"]
        0.25
    """

    mse: float
    variable: str
    restarts: int
    steps: int

    def to_json(self) -> dict[str, Any]:
        return to_jsonable({"ivom": self.mse, "ivom_variable": self.variable, "ivom_restarts": self.restarts, "ivom_steps": self.steps})


def ivom_table(
    model: nn.Module, samples: ImageSamples, restarts: int = 3, steps: int = 100, lr: float = 0.05, seed: int = 0, progress: bool = False
) -> IvomResult:
    r"""Table 6's IvOM: mean squared error on [0, 1] pixels of the best reconstruction of each
    caption's held-out image when the image-specific code (the flow's base noise) is optimised,
    best of ``restarts`` restarts of ``steps`` Adam steps.

    Arguments:
        model: The model.
        samples: Captions with their held-out images (:func:`sample_text_to_image` of a split).
        restarts: Restarts per image.
        steps: Adam steps per restart.
        lr: Adam's learning rate.
        seed: Seed of the restarts.
        progress: Show a progress bar.

    Returns:
        An :class:`IvomResult`.

    .. code-block:: python

        ivom_table(model, sample_text_to_image(model, data), restarts=3, steps=100).mse
    """
    if samples.targets is None:
        raise ValueError("IvOM needs the held-out images of the captions: sample captions of a split, not given ones")
    res = _ivom(model, samples.tokens, samples.targets, restarts, steps, lr, seed, progress)
    return IvomResult(float(res["mse"]), res["variable"], int(restarts), int(steps))


@dataclass
class ImageDiversityResult(JsonResult):
    r"""Table 6's diversity of the images generated for a caption.

    Arguments:
        pixel_diversity: :func:`flowkit.metrics.pixel_diversity` (RMS pixel distance).
        lpips: LPIPS diversity, None where LPIPS is off or does not load.
        note: Why LPIPS is missing, or None.

    Example:
        >>> ImageDiversityResult(0.3, None).to_json()["diversity_metric"]
        'pixel_diversity (RMS pixel distance between samples; not LPIPS)'
    """

    pixel_diversity: float
    lpips: float | None
    note: str | None = None

    @property
    def diversity(self) -> float:
        r"""LPIPS where it loaded, else the pixel diversity."""
        return self.lpips if self.lpips is not None else self.pixel_diversity

    def to_json(self) -> dict[str, Any]:
        metric = "LPIPS (alex)" if self.lpips is not None else "pixel_diversity (RMS pixel distance between samples; not LPIPS)"
        return to_jsonable(
            {"pixel_diversity": self.pixel_diversity, "lpips": self.lpips, "diversity": self.diversity, "diversity_metric": metric}
        )


LPIPS_MODES = ("auto", "require", "off")


def _check_lpips(lpips: str) -> None:
    if lpips not in LPIPS_MODES:
        raise ValueError(f"lpips must be 'auto', 'require' or 'off', got {lpips!r}")


def image_diversity_table(samples: ImageSamples, lpips: str = "auto") -> ImageDiversityResult:
    r"""Table 6's diversity: LPIPS diversity (mean pairwise LPIPS between the samples of a
    caption) when ``lpips`` loads; otherwise :func:`flowkit.metrics.pixel_diversity` (root mean
    squared pixel difference), labelled as such: it is *not* LPIPS. The pixel diversity is
    always reported as well.

    Arguments:
        samples: The generated images, at least 2 per caption.
        lpips: ``"auto"`` (LPIPS when it loads), ``"require"`` (fail without it) or ``"off"``.

    Returns:
        An :class:`ImageDiversityResult`.

    Example:
        >>> s = ImageSamples(["a red circle"], torch.zeros(1, 2, 3, 8, 8), torch.zeros(1, 5, dtype=torch.long))
        >>> image_diversity_table(s, lpips="off").diversity
        0.0
    """
    from flowkit.metrics import lpips_diversity, pixel_diversity

    _check_lpips(lpips)
    pixels = pixel_diversity(samples.images)
    if lpips == "off":
        return ImageDiversityResult(pixels, None)
    try:
        return ImageDiversityResult(pixels, lpips_diversity(samples.images))
    except (ImportError, RuntimeError) as e:
        if lpips == "require":
            raise
        reason = str(e).split(". Fix:")[0].splitlines()[0] if str(e) else type(e).__name__
        note = f"LPIPS unavailable ({type(e).__name__}: {reason}); diversity is pixel_diversity (RMS pixel distance), NOT LPIPS"
        return ImageDiversityResult(pixels, None, note)


_NOT_SHAPES = "Inception score and caption accuracy need the shapes attribute classifier; these captions are not of the shapes grammar"


@dataclass(eq=False)
class TextToImageResult(JsonResult):
    r"""All tables of :func:`evaluate_text_to_image`; ``to_json()`` (and item access) gives the
    layout of the report's ``results.json``.

    Arguments:
        samples: The generated images.
        judges: Inception score and classifier judges (None: captions not of the shapes grammar).
        ivom: IvOM (None without held-out images or with 0 restarts).
        diversity: The diversity of the samples of a caption.
        timings: Seconds per step.
        seconds: The whole evaluation's seconds.
        figure_captions: Captions (rows) of the report's grid figure.
        figure_samples: Images per caption in that figure.
    """

    samples: ImageSamples
    judges: ImageJudgeResult | None
    ivom: IvomResult | None
    diversity: ImageDiversityResult
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    figure_captions: int = 4
    figure_samples: int = 8

    @property
    def notes(self) -> list[str]:
        r"""What the numbers leave out, in words."""
        return ([_NOT_SHAPES] if self.judges is None else []) + ([self.diversity.note] if self.diversity.note else [])

    def to_json(self) -> dict[str, Any]:
        s = self.samples
        out: dict[str, Any] = {
            "split": s.split,
            "num_captions": len(s.captions),
            "num_samples": s.num_samples,
            "temperature": s.temperature,
        }
        out.update(captions=s.captions, source_image_ids=s.source_image_ids, notes=self.notes)
        for part in (self.judges, self.ivom, self.diversity):
            if part is not None:
                out.update(part.to_json())
        out.update(timings=self.timings, seconds=self.seconds)
        return to_jsonable(out)


def _check_text_to_image(model: nn.Module, lpips: str, num_samples: int) -> None:
    _needs_pixels(model)
    _check_lpips(lpips)
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 (diversity compares samples), got {num_samples}")


def evaluate_text_to_image(
    model: nn.Module,
    data: Any,
    split: str = "test",
    num_captions: int = 20,
    num_samples: int = 16,
    *,
    captions: Sequence[str] | None = None,
    temperature: float = 1.0,
    classifier: Any = None,
    ivom_restarts: int = 3,
    ivom_steps: int = 100,
    ivom_lr: float = 0.05,
    lpips: str = "auto",
    is_splits: int = 10,
    batch_size: int = 16,
    seed: int = 0,
    figure_captions: int = 4,
    figure_samples: int = 8,
    progress: bool = True,
) -> TextToImageResult:
    r"""Evaluates text-to-image synthesis (the paper's Table 6, SPEC section 4): samples once
    (:func:`sample_text_to_image`), then the Inception score and the classifier judges
    (:func:`image_judge_table`; captions of the shapes grammar only, else a note), IvOM
    (:func:`ivom_table`; captions of a split only) and diversity (:func:`image_diversity_table`).

    Arguments:
        model: A trained :class:`~flowkit.models.LNFMM` with pixel images.
        data: A :class:`~flowkit.data.CaptionData`.
        split: Where the captions and held-out images come from.
        num_captions: Captions evaluated (the first of each of the first images of ``split``).
        num_samples: Images per caption.
        captions: Explicit captions instead (no IvOM then: they have no held-out image).
        temperature: Sampling temperature of :math:`p(z'_v \mid z_s)`.
        classifier: The attribute classifier (default
            :func:`flowkit.data.judges.get_attribute_classifier`, trained once and cached).
        ivom_restarts, ivom_steps, ivom_lr: IvOM's optimisation (0 restarts: skip IvOM).
        lpips: ``"auto"`` (LPIPS when it loads), ``"require"`` (fail without it) or ``"off"``.
        is_splits: Chunks of the Inception score (capped at the number of images).
        batch_size: Captions per sampling call.
        seed: Seed of the sampling and of IvOM's restarts.
        figure_captions, figure_samples: What the report's grid figure shows.
        progress: Show progress bars.

    Returns:
        A :class:`TextToImageResult`; ``to_json()`` and item access give ``inception_score``,
        ``ivom``, ``diversity``, ``caption_accuracy``, ``free_attribute_spread``, the settings,
        ``notes`` and ``seconds``.

    .. code-block:: python

        res = evaluate_text_to_image(model, data, num_captions=20, num_samples=16)
        res["inception_score"], res["ivom"], res.judges.caption_accuracy
    """
    _check_text_to_image(model, lpips, num_samples)
    start = time.perf_counter()
    samples = sample_text_to_image(
        model,
        data,
        split,
        num_captions,
        num_samples,
        captions=captions,
        temperature=temperature,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    timings: dict[str, float] = {"sampling": time.perf_counter() - start}
    judges = None
    if shapes_grammar(samples.captions):
        judges = timed(timings, "judges", image_judge_table, samples, classifier, is_splits, progress=progress)
    ivom = None
    if samples.targets is not None and ivom_restarts > 0:
        ivom = timed(timings, "ivom", ivom_table, model, samples, ivom_restarts, ivom_steps, ivom_lr, seed, progress)
    diversity = timed(timings, "diversity", image_diversity_table, samples, lpips)
    seconds = time.perf_counter() - start
    return TextToImageResult(samples, judges, ivom, diversity, timings, seconds, figure_captions, figure_samples)
