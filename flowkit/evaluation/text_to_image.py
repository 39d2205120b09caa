r"""Text-to-image evaluation: the paper's Table 6 (Inception score, IvOM, LPIPS diversity) and,
on the embedded shapes data, exact judges of generated images (accuracy against the caption,
spread of the attributes the caption leaves free).

.. code-block:: python

    from flowkit.evaluation import evaluate_text_to_image

    results = evaluate_text_to_image(model, data, num_captions=20, num_samples=16)
    results["inception_score"], results["ivom"], results["diversity"]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["evaluate_text_to_image", "judge_generated_images", "sample_images_for_captions", "encode_captions_text"]


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
) -> Tensor:
    r"""Samples ``num_samples`` images per caption: (N, S, 3, H, W) in [0, 1].

    :math:`z_s = f_s^{-1}(\mu(z_s^t))`, :math:`z'_v \sim p(z'_v \mid z_s)`, then the image
    decoder (:meth:`LNFMM.sample_images`). The model is put in eval mode.

    Arguments:
        model: A trained :class:`~flowkit.models.LNFMM` with a pixel image decoder.
        captions: The captions (strings).
        vocab: The model's vocabulary.
        num_samples: Images per caption.
        temperature: Scales the prior's base samples.
        batch_size: Captions per model call.
        seed: Seeds the sampling in a forked RNG; None uses the global RNG.
        progress: Show a progress bar.

    Example:
        >>> imgs = sample_images_for_captions(model, ["a red circle"], data.vocab, num_samples=8)
        >>> imgs.shape
        torch.Size([1, 8, 3, 64, 64])
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
    return torch.cat(outs)


def _ivom(model: nn.Module, ids: Tensor, targets: Tensor, restarts: int, steps: int, lr: float, seed: int, progress: bool) -> dict[str, Any]:
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
        out = ivom(generate, targets, latent_dim=dim, code_fn=code_fn, context=ctx, restarts=restarts, steps=steps, lr=lr, init_std=std, seed=seed, progress=progress)
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
) -> dict[str, Any]:
    r"""Evaluates text-to-image synthesis (the paper's Table 6, SPEC section 4).

    Captions: the first caption of each of the first ``num_captions`` images of ``split``
    (held out from training); the image it came from is the IvOM target. Per caption
    ``num_samples`` images are drawn.

    * ``inception_score`` (mean, std over ``is_splits`` chunks): the Inception score with the
      shapes attribute classifier as the network (48 shape x color x size classes,
      :func:`flowkit.data.judges.class_probabilities`); no Inception weights exist offline.
    * ``ivom``: mean squared error on [0, 1] pixels of the best reconstruction of the held-out
      image when the image-specific code (the flow's base noise) is optimised, best of
      ``ivom_restarts`` restarts of ``ivom_steps`` Adam steps.
    * ``diversity``: LPIPS diversity (mean pairwise LPIPS between samples of a caption) when
      ``lpips`` loads; otherwise :func:`flowkit.metrics.pixel_diversity` (root mean squared
      pixel difference), labelled as such: it is *not* LPIPS. ``pixel_diversity`` is always
      reported as well.
    * ``caption_accuracy``: the fraction of generated images whose scene, as the classifier
      reads it, makes the caption true; ``reference_accuracy`` is the same for the real
      held-out images (the judge's own ceiling).
    * ``free_attribute_spread``: per caption, the normalized entropy of the attributes it
      leaves free across its correct images, averaged over captions (1 = evenly spread).

    The classifier-based numbers need the shapes grammar; on other data they are left out
    with a note.

    Arguments:
        model: A trained :class:`~flowkit.models.LNFMM` with pixel images.
        data: A :class:`~flowkit.data.CaptionData`.
        split: Where the captions and held-out images come from.
        num_captions: Captions evaluated.
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
        A JSON-able dict (plus ``"_figure"``: the images of the grid figure, which
        :func:`write_report` saves as a PNG and drops from the JSON).
    """
    from flowkit.data.grammar import parse
    from flowkit.metrics import inception_score, lpips_diversity, pixel_diversity

    cfg = getattr(model, "config", None)
    if cfg is None or not cfg.pixels:
        raise ValueError(
            "text-to-image evaluation needs a model that generates pixels (image_encoder 'conv' or 'vgg16'); "
            "this model works on image features, whose 'images' cannot be judged by the image metrics"
        )
    if lpips not in ("auto", "require", "off"):
        raise ValueError(f"lpips must be 'auto', 'require' or 'off', got {lpips!r}")
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 (diversity compares samples), got {num_samples}")
    start = time.perf_counter()
    model.eval()
    targets: Tensor | None = None
    if captions is None:
        dataset = getattr(data, split)
        refs = data.references[split]
        n = min(num_captions, len(dataset))
        if n < 1:
            raise ValueError(f"split {split!r} has no images")
        items = [dataset[i] for i in range(n)]
        source_ids = [int(it["image_id"]) for it in items]
        caps = [refs[i][0] for i in source_ids]
        targets = torch.stack([it["image"] for it in items]).float()
    else:
        caps, source_ids = list(captions), []
    vocab = data.vocab if hasattr(data, "vocab") else data
    images = sample_images_for_captions(model, caps, vocab, num_samples, temperature, batch_size, seed, progress)
    flat = images.flatten(0, 1)
    timings = {"sampling": time.perf_counter() - start}
    out: dict[str, Any] = {
        "split": split if captions is None else None,
        "num_captions": len(caps),
        "num_samples": int(num_samples),
        "temperature": float(temperature),
        "captions": caps,
        "source_image_ids": source_ids,
        "notes": [],
    }

    shapes = all(parse(c) is not None for c in caps)
    if shapes:
        from flowkit.data.judges import class_probabilities, get_attribute_classifier, image_caption_accuracy

        t0 = time.perf_counter()
        clf = classifier if classifier is not None else get_attribute_classifier(progress=progress)
        probs = class_probabilities(flat, clf)
        is_mean, is_std = inception_score(probs, splits=max(1, min(is_splits, len(flat))))
        out["inception_score"] = is_mean
        out["inception_score_std"] = is_std
        out["inception_network"] = "shapes attribute classifier (48 shape x color x size classes)"
        judged = judge_generated_images(images, caps, clf)
        out["caption_accuracy"] = judged["accuracy"]
        if targets is not None:
            out["reference_accuracy"] = image_caption_accuracy(targets, caps, clf)
        out["free_attribute_spread"] = judged["free_attribute_spread"]
        out["free_attribute_spread_captions"] = judged["captions_with_a_true_image"]
        out["free_attribute_spread_per_caption"] = [{k: (None if math.isnan(v) else v) for k, v in s.items()} for s in judged["per_caption"]]
        timings["judges"] = time.perf_counter() - t0
    else:
        out["notes"].append("Inception score and caption accuracy need the shapes attribute classifier; these captions are not of the shapes grammar")

    if targets is not None and ivom_restarts > 0:
        t0 = time.perf_counter()
        ids = encode_captions_text(caps, vocab, model.config.max_caption_len)
        res = _ivom(model, ids, targets, ivom_restarts, ivom_steps, ivom_lr, seed, progress)
        out["ivom"] = float(res["mse"])
        out["ivom_variable"] = res["variable"]
        out["ivom_restarts"], out["ivom_steps"] = int(ivom_restarts), int(ivom_steps)
        timings["ivom"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out["pixel_diversity"] = pixel_diversity(images)
    lp = None
    if lpips != "off":
        try:
            lp = lpips_diversity(images)
        except (ImportError, RuntimeError) as e:
            if lpips == "require":
                raise
            reason = str(e).split(". Fix:")[0].splitlines()[0] if str(e) else type(e).__name__
            out["notes"].append(f"LPIPS unavailable ({type(e).__name__}: {reason}); diversity is pixel_diversity (RMS pixel distance), NOT LPIPS")
    out["lpips"] = lp
    out["diversity"] = lp if lp is not None else out["pixel_diversity"]
    out["diversity_metric"] = "LPIPS (alex)" if lp is not None else "pixel_diversity (RMS pixel distance between samples; not LPIPS)"
    timings["diversity"] = time.perf_counter() - t0
    out["timings"] = timings
    out["seconds"] = time.perf_counter() - start
    if figure_captions > 0:
        out["_figure"] = {"captions": caps[:figure_captions], "images": images[:figure_captions, :figure_samples]}
    return out
