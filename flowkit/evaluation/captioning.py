r"""Diverse captioning evaluation: the paper's Tables 1 (oracle), 2 (consensus re-ranking) and 3
(diversity), plus exact ground-truth accuracy and coverage on the embedded shapes data.

.. code-block:: python

    from flowkit.evaluation import evaluate_captioning

    results = evaluate_captioning(model, data, split="test", num_samples=100)
    results["oracle"]["CIDEr"], results["consensus"]["Bleu_4"], results["diversity"]["unique"]
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from flowkit._validation import check_positive_int

__all__ = [
    "generate_captions",
    "encode_dataset_images",
    "evaluate_captioning",
    "find_split",
    "split_images",
    "train_image_ids",
    "CAPTION_METRICS",
]

#: The COCO metrics of the tables, in the paper's column order (SPICE added when available).
CAPTION_METRICS: tuple[str, ...] = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _items(dataset: Dataset, limit: int | None, ids: Sequence[int] | None) -> list[int]:
    r"""Indices of the dataset items to use: those with the given image ids, or the first ``limit``."""
    n = len(dataset)  # type: ignore[arg-type]
    if ids is not None:
        known = {int(i): k for k, i in enumerate(getattr(dataset, "image_ids", range(n)))}
        missing = [i for i in ids if int(i) not in known]
        if missing:
            raise ValueError(f"image ids {missing[:5]} are not in this split ({n} images, e.g. ids {list(known)[:3]})")
        index = [known[int(i)] for i in ids]
    else:
        index = list(range(n))
    if limit is not None:
        index = index[: check_positive_int("limit", limit)]
    return index


@torch.no_grad()
def generate_captions(
    model: nn.Module,
    dataset: Dataset,
    vocab: Any,
    num_samples: int = 100,
    temperature: float = 1.0,
    method: str = "greedy",
    batch_size: int = 8,
    progress: bool = True,
    *,
    limit: int | None = None,
    image_ids: Sequence[int] | None = None,
    seed: int | None = 0,
    word_temperature: float = 1.0,
    beam_width: int = 2,
) -> dict[int, list[str]]:
    r"""Samples ``num_samples`` captions for every image of a dataset.

    :math:`z_s = f_s(\mu(z_s^v))`, :math:`z'_t \sim p(z'_t \mid z_s)` at ``temperature``, then
    greedy or beam decoding (:meth:`LNFMM.sample_captions`). The model is put in eval mode.

    Arguments:
        model: A trained :class:`~flowkit.models.LNFMM`.
        dataset: Items ``dict(image=Tensor, image_id=int)`` (e.g. ``data.test``).
        vocab: The vocabulary (anything with ``decode(ids) -> str``).
        num_samples: Captions per image (the paper: 100).
        temperature: Scales the prior's base samples.
        method: ``"greedy"``, ``"beam"`` or ``"sample"`` (words drawn at ``word_temperature``).
        batch_size: Images per model call (each gives ``num_samples`` decodes).
        progress: Show a progress bar.
        limit: Only the first ``limit`` images.
        image_ids: Only these image ids (in this order).
        seed: Seeds the sampling (in a forked RNG, so the caller's stream is untouched); None
            uses the global RNG.
        word_temperature: The word temperature of ``method="sample"``.
        beam_width: The beam width of ``method="beam"``.

    Returns:
        ``{image_id: [caption, ...]}`` with ``num_samples`` captions each.

    Example:
        >>> from flowkit.data import load_caption_data
        >>> from flowkit.models import LNFMM, LNFMMConfig
        >>> data = load_caption_data("shapes", sizes={"train": 4, "val": 2, "test": 2})
        >>> model = LNFMM(LNFMMConfig.small(vocab_size=len(data.vocab), image_encoder_init="random", freeze_image_trunk=False))  # untrained
        >>> caps = generate_captions(model, data.test, data.vocab, num_samples=5, limit=2, progress=False)
        >>> [len(v) for v in caps.values()], caps == generate_captions(model, data.test, data.vocab, num_samples=5, limit=2, progress=False)
        ([5, 5], True)
    """
    from flowkit.models import ids_to_strings

    num_samples = check_positive_int("num_samples", num_samples)
    batch_size = check_positive_int("batch_size", batch_size)
    index = _items(dataset, limit, image_ids)
    model.eval()
    device = _device_of(model)
    out: dict[int, list[str]] = {}
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        bar = tqdm(total=len(index), desc=f"captions x{num_samples}", unit="img", disable=not progress)
        for b0 in range(0, len(index), batch_size):
            items = [dataset[k] for k in index[b0 : b0 + batch_size]]
            images = torch.stack([it["image"] for it in items]).to(device)
            ids = model.sample_captions(
                images, num_samples, temperature=temperature, method=method, word_temperature=word_temperature, beam_width=beam_width
            )
            for it, caps in zip(items, ids_to_strings(ids.cpu(), vocab)):
                out[int(it["image_id"])] = list(caps)
            bar.update(len(items))
        bar.close()
    return out


@torch.no_grad()
def encode_dataset_images(
    model: nn.Module,
    images: Any,
    image_ids: Sequence[int],
    batch_size: int = 256,
    progress: bool = False,
    desc: str = "encode images",
) -> Tensor:
    r"""The model's image shared codes :math:`\mu(z_s^v)` (image space) of some images, (N, S).

    Arguments:
        model: The LNFMM.
        images: A callable ``image_id -> Tensor`` (the data's image source) or a dataset with
            ``dict(image, image_id)`` items in the order of ``image_ids``.
        image_ids: The ids to encode.
        batch_size: Images per call.
        progress: Show a progress bar.
        desc: The bar's label.
    """
    model.eval()
    device = _device_of(model)
    fetch = images if callable(images) and not isinstance(images, Dataset) else None
    rows = []
    for b0 in tqdm(range(0, len(image_ids), batch_size), desc=desc, disable=not progress):
        chunk = image_ids[b0 : b0 + batch_size]
        if fetch is not None:
            x = torch.stack([fetch(int(i)) for i in chunk])
        else:
            x = torch.stack([images[b0 + k]["image"] for k in range(len(chunk))])
        rows.append(model.encode_images(x.to(device))["shared"].float().cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 0)


def train_image_ids(data: Any) -> list[int]:
    r"""The distinct training image ids of a :class:`~flowkit.data.CaptionData`, in order."""
    return list(dict.fromkeys(int(i) for i in data.train.image_ids))


def split_images(data: Any, split: str) -> Dataset:
    r"""One item per image of a split of a :class:`~flowkit.data.CaptionData` (the training
    split holds one item per pair: its distinct images are taken).

    Arguments:
        data: The data.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Example:
        >>> from flowkit.data import load_caption_data
        >>> data = load_caption_data("shapes", sizes={"train": 2, "val": 1, "test": 1})
        >>> len(split_images(data, "train")), len(data.train) > 2
        (2, True)
    """
    from flowkit.data import ImageDataset

    if split == "train":
        return ImageDataset(data.train.images, train_image_ids(data))
    if split not in ("val", "test"):
        raise ValueError(f"unknown split {split!r}: pass 'train', 'val' or 'test'")
    return getattr(data, split)


def find_split(data: Any, image_ids: Sequence[int]) -> str:
    r"""The first split (of test, val, train) holding every one of these image ids.

    Arguments:
        data: A :class:`~flowkit.data.CaptionData`.
        image_ids: The image ids.

    Raises:
        ValueError: No split holds them all (the message shows a few).

    Example:
        >>> from flowkit.data import load_caption_data
        >>> data = load_caption_data("shapes", sizes={"train": 2, "val": 1, "test": 1})
        >>> find_split(data, data.val.image_ids)
        'val'
    """
    wanted = {int(i) for i in image_ids}
    for split in ("test", "val", "train"):
        if wanted <= set(split_images(data, split).image_ids):
            return split
    raise ValueError(f"image ids {sorted(wanted)[:5]} are not all in one split of the data (test, val or train)")


def _raw_rows(data: Any, ids: Sequence[int]) -> Tensor:
    return torch.stack([data.train.images(int(i)).flatten().float() for i in ids])


def _finite(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, int) else float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in d.items()}


def evaluate_captioning(
    model: nn.Module,
    data: Any,
    split: str = "test",
    num_samples: int = 100,
    k: int = 60,
    m: int = 125,
    best_n: int = 5,
    *,
    temperature: float = 1.0,
    method: str = "greedy",
    limit: int | None = None,
    rerank_features: str = "auto",
    scenes: Mapping[int, Any] | None = None,
    candidates: Mapping[int, Sequence[str]] | None = None,
    batch_size: int = 8,
    seed: int | None = 0,
    figure_images: int = 6,
    progress: bool = True,
) -> dict[str, Any]:
    r"""Evaluates diverse captioning with the paper's protocol (SPEC section 4).

    * ``oracle`` (Table 1): per image and metric the best of the ``num_samples`` candidates,
      averaged over images (:func:`flowkit.metrics.oracle_scores`).
    * ``consensus`` (Table 2): the top-1 candidate after consensus re-ranking (:math:`k`
      nearest training images by Euclidean distance in feature space, sum of the top :math:`m`
      CIDEr-D scores against their captions), scored with the COCO metrics.
    * ``diversity`` (Table 3): Unique %, Novel (distinct captions not among the training
      captions), mBLEU-4, Div-1, Div-2 of the best ``best_n`` after re-ranking.
    * ``ground_truth`` (shapes data only, exact): ``accuracy`` (fraction of all sampled
      captions true of their image), ``coverage`` (mean fraction of an image's true caption
      meanings that its samples reach), ``top1_accuracy`` and ``best_n_accuracy`` (after
      re-ranking), and ``reference_coverage`` (the same coverage measured on the dataset's own
      reference captions, for scale).

    Features for the k-NN of the re-ranking (``rerank_features``): ``"shared"``, the model's
    image shared codes :math:`\mu(z_s^v)`; ``"raw"``, the data's image inputs (pixels or
    pre-extracted features such as VGG-16 fc7); ``"auto"`` (default): raw for feature data,
    shared codes for pixels. The choice is recorded in the results.

    Arguments:
        model: A trained :class:`~flowkit.models.LNFMM`.
        data: A :class:`~flowkit.data.CaptionData`.
        split: ``"test"`` or ``"val"``.
        num_samples: Captions sampled per image (the paper: 100).
        k: Neighbours of the consensus re-ranking (the paper: 60).
        m: Consensus scores summed per candidate (the paper: 125).
        best_n: Captions per image kept for the diversity table (the paper: 5).
        temperature: Sampling temperature of the prior.
        method: ``"greedy"`` or ``"beam"`` decoding.
        limit: Evaluate only the first ``limit`` images of the split.
        rerank_features: ``"auto"``, ``"shared"`` or ``"raw"``.
        scenes: ``{image_id: Scene}`` for the ground-truth judges (default ``data.scenes``;
            pass :func:`flowkit.evaluation.scenes_from_export` for a COCO-format shapes export).
        candidates: Precomputed samples ``{image_id: [caption, ...]}`` (skips sampling).
        batch_size: Images per sampling call.
        seed: Seed of the sampling.
        figure_images: Images kept (as tensors under ``"_figure"``) for the report's figure.
        progress: Show progress bars.

    Returns:
        A JSON-able dict (plus the ``"_figure"`` entry, which :func:`write_report` turns into a
        PNG and drops from the JSON) with ``oracle``, ``consensus``, ``diversity``,
        ``ground_truth`` (shapes), ``samples`` (all candidates), ``ranked`` (best ``best_n``),
        the settings and ``seconds``.

    Example (not run as a doctest: the caption metrics' Java tools take tens of seconds even on a
    few images; ``tests/test_evaluation.py`` runs it):

    .. code-block:: python

        model, data, _ = load_run("runs/small")
        res = evaluate_captioning(model, data, num_samples=100, limit=50)
        sorted(res["diversity"])  # ['div1', 'div2', 'mbleu4', 'novel', 'unique']
    """
    from flowkit.metrics import caption_scores, consensus_rerank, diversity_scores, oracle_scores

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if rerank_features not in ("auto", "shared", "raw"):
        raise ValueError(f"rerank_features must be 'auto', 'shared' or 'raw', got {rerank_features!r}")
    best_n = check_positive_int("best_n", best_n)
    start = time.perf_counter()
    dataset = getattr(data, split)
    if split == "train":
        raise ValueError("evaluate on 'val' or 'test': training images are the re-ranking's consensus set")
    refs_all: Mapping[int, Sequence[str]] = data.references[split]

    if candidates is None:
        samples = generate_captions(
            model, dataset, data.vocab, num_samples, temperature, method, batch_size, progress, limit=limit, seed=seed
        )
    else:
        ids = [int(i) for i in candidates]
        samples = {i: list(candidates[i]) for i in ids}
        num_samples = max(len(v) for v in samples.values())
    ids = list(samples)
    refs = {i: list(refs_all[i]) for i in ids}
    timings: dict[str, float] = {"sampling": time.perf_counter() - start}

    # Table 1: oracle over all candidates
    t0 = time.perf_counter()
    oracle = oracle_scores(refs, samples, progress=progress)
    timings["oracle"] = time.perf_counter() - t0

    # Table 2: consensus re-ranking, top-1
    t0 = time.perf_counter()
    kind = rerank_features
    if kind == "auto":
        kind = "raw" if getattr(data, "image_kind", "pixels") == "features" else "shared"
    train_ids = train_image_ids(data)
    test_index = _items(dataset, None, ids)
    if kind == "shared":
        train_feats = encode_dataset_images(model, data.train.images, train_ids, progress=progress, desc="encode train images")
        test_feats = encode_dataset_images(model, dataset.images, ids)
        feature_desc = "the model's image shared codes mu(z_s^v) (image space, posterior means)"
    else:
        train_feats = _raw_rows(data, train_ids)
        test_feats = torch.stack([dataset[i]["image"].flatten().float() for i in test_index])
        feature_desc = "the data's raw image inputs (" + ("pre-extracted features" if getattr(data, "image_kind", "") == "features" else "pixels") + ")"
    train_caps = {i: list(data.references["train"][i]) for i in train_ids}
    ranked_all = consensus_rerank(
        samples, (ids, test_feats.numpy()), (train_ids, train_feats.numpy()), train_caps, k=k, m=m, progress=progress
    )
    top1 = {i: ranked_all[i][0] for i in ids}
    consensus = caption_scores(refs, top1)
    timings["consensus"] = time.perf_counter() - t0

    # Table 3: diversity of the best n after re-ranking
    t0 = time.perf_counter()
    best = {i: ranked_all[i][:best_n] for i in ids}
    diversity = diversity_scores(best, data.train_captions)
    timings["diversity"] = time.perf_counter() - t0

    results: dict[str, Any] = {
        "split": split,
        "num_images": len(ids),
        "num_samples": int(num_samples),
        "temperature": float(temperature),
        "method": method,
        "oracle": _finite(oracle),
        "consensus": _finite(consensus),
        "consensus_k": int(k),
        "consensus_m": int(m),
        "rerank_features": kind,
        "rerank_features_description": feature_desc,
        "best_n": int(best_n),
        "diversity": _finite(diversity),
    }

    # exact judges (shapes)
    scenes = scenes if scenes is not None else getattr(data, "scenes", None)
    if scenes is not None and all(i in scenes for i in ids):
        from flowkit.data.judges import caption_accuracy, caption_coverage

        t0 = time.perf_counter()
        sub = {i: scenes[i] for i in ids}
        results["ground_truth"] = {
            "accuracy": caption_accuracy(samples, sub),
            "coverage": caption_coverage(samples, sub),
            "top1_accuracy": caption_accuracy({i: [top1[i]] for i in ids}, sub),
            "best_n_accuracy": caption_accuracy(best, sub),
            "best_n_coverage": caption_coverage(best, sub),
            "reference_coverage": caption_coverage(refs, sub),
        }
        timings["ground_truth"] = time.perf_counter() - t0

    results["samples"] = {str(i): samples[i] for i in ids}
    results["ranked"] = {str(i): best[i] for i in ids}
    results["references"] = {str(i): refs[i] for i in ids}
    results["timings"] = timings
    results["seconds"] = time.perf_counter() - start
    if figure_images > 0:
        chosen = test_index[:figure_images]
        results["_figure"] = {
            "ids": [ids[k] for k in range(len(chosen))],
            "images": torch.stack([dataset[i]["image"] for i in chosen]) if getattr(data, "image_kind", "pixels") == "pixels" else None,
        }
    return results

