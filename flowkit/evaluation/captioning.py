r"""Diverse captioning evaluation: the paper's Tables 1 (oracle), 2 (consensus re-ranking) and 3
(diversity), plus exact ground-truth accuracy and coverage on the embedded shapes data.

Captions are sampled once (:func:`sample_captioning`); each table is a function of the samples
returning a typed result with ``to_json()`` (:func:`oracle_table`, :func:`consensus_table`,
:func:`diversity_table`, :func:`ground_truth_table`); :func:`evaluate_captioning` runs them all.

.. code-block:: python

    from flowkit.evaluation import evaluate_captioning

    results = evaluate_captioning(model, data, split="test", num_samples=100)
    results["oracle"]["CIDEr"], results["consensus"]["Bleu_4"], results["diversity"]["unique"]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from flowkit._validation import check_positive_int
from flowkit.evaluation.results import JsonResult, timed, to_jsonable

__all__ = [
    "generate_captions",
    "encode_dataset_images",
    "evaluate_captioning",
    "CaptionSamples",
    "caption_samples",
    "sample_captioning",
    "OracleResult",
    "oracle_table",
    "ConsensusResult",
    "consensus_table",
    "DiversityResult",
    "diversity_table",
    "GroundTruthResult",
    "ground_truth_table",
    "CaptioningResult",
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


@dataclass
class CaptionSamples:
    r"""The captions sampled for the images of a split: drawn once, read by every table.

    Arguments:
        split: The split of the images.
        candidates: ``{image_id: [caption, ...]}``, the sampled captions.
        references: ``{image_id: [caption, ...]}``, the data's references of the same images.
        num_samples: Captions per image.
        temperature: The prior's sampling temperature.
        method: The decoding method.
        pixels: ``image_id -> (3, H, W)`` image in [0, 1], for the report's figure; None where the
            data holds features (set it to draw the figure from another source).
        beam_width: The beam width of ``method="beam"``.

    Example:
        >>> s = CaptionSamples("test", {7: ["a red circle", "a star"]}, {7: ["a red circle"]}, 2)
        >>> s.image_ids
        [7]
    """

    split: str
    candidates: dict[int, list[str]]
    references: dict[int, list[str]]
    num_samples: int
    temperature: float = 1.0
    method: str = "greedy"
    pixels: Callable[[int], Tensor] | None = None
    beam_width: int = 2

    @property
    def image_ids(self) -> list[int]:
        r"""The image ids, in the order of ``candidates``."""
        return list(self.candidates)


def caption_samples(
    data: Any,
    split: str,
    candidates: Mapping[int, Sequence[str]],
    *,
    num_samples: int | None = None,
    temperature: float = 1.0,
    method: str = "greedy",
    beam_width: int = 2,
) -> CaptionSamples:
    r"""Captions given for the images of a split, with the data's references (no sampling).

    Arguments:
        data: A :class:`~flowkit.data.CaptionData`.
        split: ``"val"`` or ``"test"``.
        candidates: ``{image_id: [caption, ...]}``.
        num_samples: Captions per image (default: the longest list).
        temperature: Recorded as the sampling temperature.
        method: Recorded as the decoding method.
        beam_width: Recorded as the beam width of ``method="beam"``.

    Returns:
        A :class:`CaptionSamples`.

    Example:
        >>> from flowkit.data import load_caption_data
        >>> data = load_caption_data("shapes", sizes={"train": 2, "val": 1, "test": 1})
        >>> i = data.test.image_ids[0]
        >>> caption_samples(data, "test", {i: ["a red circle"]}).references[i] == data.references["test"][i]
        True
    """
    ids = [int(i) for i in candidates]
    cands = {i: list(candidates[i]) for i in ids}
    refs = data.references[split]
    dataset = getattr(data, split)
    pixels = getattr(dataset, "images", None) if getattr(data, "image_kind", "pixels") == "pixels" else None
    count = max(len(v) for v in cands.values()) if num_samples is None else int(num_samples)
    return CaptionSamples(split, cands, {i: list(refs[i]) for i in ids}, count, float(temperature), method, pixels, int(beam_width))


def sample_captioning(
    model: nn.Module,
    data: Any,
    split: str = "test",
    num_samples: int = 100,
    *,
    temperature: float = 1.0,
    method: str = "greedy",
    beam_width: int = 2,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int | None = 0,
    progress: bool = True,
) -> CaptionSamples:
    r"""Samples ``num_samples`` captions for the images of a split (:func:`generate_captions`),
    once for all the tables.

    Arguments:
        model: A trained :class:`~flowkit.models.LNFMM`.
        data: A :class:`~flowkit.data.CaptionData`.
        split: ``"val"`` or ``"test"``.
        num_samples: Captions per image (the paper: 100).
        temperature: Sampling temperature of the prior.
        method: ``"greedy"`` or ``"beam"`` decoding of each latent sample.
        beam_width: The beam width of ``method="beam"``.
        limit: Only the first ``limit`` images of the split.
        batch_size: Images per sampling call.
        seed: Seed of the sampling (None: the global RNG).
        progress: Show a progress bar.

    Returns:
        A :class:`CaptionSamples` with ``num_samples`` captions per image.

    .. code-block:: python

        samples = sample_captioning(model, data, num_samples=100, limit=50)
        oracle_table(samples)["CIDEr"]
    """
    dataset = getattr(data, split)
    generated = generate_captions(
        model, dataset, data.vocab, num_samples, temperature, method, batch_size, progress, limit=limit, seed=seed, beam_width=beam_width
    )
    how = {"temperature": temperature, "method": method, "beam_width": beam_width}
    return caption_samples(data, split, generated, num_samples=num_samples, **how)


@dataclass
class OracleResult(JsonResult):
    r"""Table 1 (oracle): per image and metric the best of its candidates, averaged over images.

    Arguments:
        scores: ``{metric: value}`` (:data:`CAPTION_METRICS`, SPICE when available).

    Example:
        >>> OracleResult({"CIDEr": 1.25, "SPICE": float("nan")}).to_json()
        {'CIDEr': 1.25, 'SPICE': None}
    """

    scores: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(self.scores)


def oracle_table(samples: CaptionSamples, progress: bool = False) -> OracleResult:
    r"""Table 1 (oracle) of sampled captions (:func:`flowkit.metrics.oracle_scores`).

    Arguments:
        samples: The sampled captions and their references.
        progress: Show progress bars.

    Returns:
        An :class:`OracleResult`.

    .. code-block:: python

        oracle_table(sample_captioning(model, data, limit=50))["CIDEr"]
    """
    from flowkit.metrics import oracle_scores

    return OracleResult(oracle_scores(samples.references, samples.candidates, progress=progress))


@dataclass
class ConsensusResult(JsonResult):
    r"""Table 2 (consensus re-ranking): the COCO metrics of each image's top-1 candidate.

    Arguments:
        scores: ``{metric: value}`` of the top-1 candidates.
        ranked: ``{image_id: [caption, ...]}``, every candidate, best first.
        k: Neighbours of the re-ranking.
        m: Consensus scores summed per candidate.
        features: The k-NN features, ``"shared"`` or ``"raw"``.
        features_description: Those features in words.
    """

    scores: dict[str, float]
    ranked: dict[int, list[str]]
    k: int
    m: int
    features: str
    features_description: str

    @property
    def top1(self) -> dict[int, str]:
        r"""``{image_id: caption}``, the best candidate of each image."""
        return {i: r[0] for i, r in self.ranked.items()}

    def best(self, n: int) -> dict[int, list[str]]:
        r"""``{image_id: [caption, ...]}``, the best ``n`` candidates of each image."""
        return {i: r[:n] for i, r in self.ranked.items()}

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(self.scores)


RERANK_FEATURES = ("auto", "shared", "raw")


def _check_rerank(features: str) -> None:
    if features not in RERANK_FEATURES:
        raise ValueError(f"rerank_features must be 'auto', 'shared' or 'raw', got {features!r}")


def _rerank_kind(data: Any, features: str) -> str:
    _check_rerank(features)
    if features == "auto":
        return "raw" if getattr(data, "image_kind", "pixels") == "features" else "shared"
    return features


def _rerank_features(
    model: nn.Module, data: Any, samples: CaptionSamples, train_ids: list[int], kind: str, progress: bool
) -> tuple[Tensor, Tensor, str]:
    r"""The k-NN features of the training images and of the sampled ones, and their description."""
    dataset = getattr(data, samples.split)
    ids = samples.image_ids
    test_index = _items(dataset, None, ids)
    if kind == "shared":
        train = encode_dataset_images(model, data.train.images, train_ids, progress=progress, desc="encode train images")
        test = encode_dataset_images(model, dataset.images, ids)
        return train, test, "the model's image shared codes mu(z_s^v) (image space, posterior means)"
    train = _raw_rows(data, train_ids)
    test = torch.stack([dataset[i]["image"].flatten().float() for i in test_index])
    source = "pre-extracted features" if getattr(data, "image_kind", "") == "features" else "pixels"
    return train, test, f"the data's raw image inputs ({source})"


def consensus_table(
    model: nn.Module,
    data: Any,
    samples: CaptionSamples,
    k: int = 60,
    m: int = 125,
    features: str = "auto",
    progress: bool = False,
) -> ConsensusResult:
    r"""Table 2 (consensus re-ranking): each image's candidates ranked by their consensus with the
    captions of its :math:`k` nearest training images (Euclidean distance in feature space, sum of
    the top :math:`m` CIDEr-D scores, :func:`flowkit.metrics.consensus_rerank`); the top-1 is
    scored with the COCO metrics.

    Arguments:
        model: The model (its image shared codes are the ``"shared"`` features).
        data: A :class:`~flowkit.data.CaptionData` (its training images are the consensus set).
        samples: The sampled captions and their references.
        k: Neighbours (the paper: 60).
        m: Consensus scores summed per candidate (the paper: 125).
        features: ``"shared"``, the model's image shared codes :math:`\mu(z_s^v)`; ``"raw"``, the
            data's image inputs (pixels or pre-extracted features); ``"auto"``: raw for feature
            data, shared codes for pixels.
        progress: Show progress bars.

    Returns:
        A :class:`ConsensusResult` (with every image's candidates ranked).

    .. code-block:: python

        consensus = consensus_table(model, data, sample_captioning(model, data, limit=50), k=60, m=125)
        consensus["Bleu_4"], consensus.top1
    """
    from flowkit.metrics import caption_scores, consensus_rerank

    kind = _rerank_kind(data, features)
    ids = samples.image_ids
    train_ids = train_image_ids(data)
    train_feats, test_feats, description = _rerank_features(model, data, samples, train_ids, kind, progress)
    train_caps = {i: list(data.references["train"][i]) for i in train_ids}
    ranked = consensus_rerank(
        samples.candidates, (ids, test_feats.numpy()), (train_ids, train_feats.numpy()), train_caps, k=k, m=m, progress=progress
    )
    ranked = {i: ranked[i] for i in ids}
    scores = caption_scores(samples.references, {i: ranked[i][0] for i in ids})
    return ConsensusResult(scores, ranked, int(k), int(m), kind, description)


@dataclass
class DiversityResult(JsonResult):
    r"""Table 3 (diversity) of the best ``best_n`` captions of each image after re-ranking.

    Arguments:
        scores: ``unique`` (%), ``novel`` (distinct captions not among the training captions),
            ``mbleu4``, ``div1``, ``div2`` (:func:`flowkit.metrics.diversity_scores`).
        ranked: ``{image_id: [caption, ...]}``, the best ``best_n`` of each image.
        best_n: Captions kept per image.

    Example:
        >>> DiversityResult({"unique": 80.0, "novel": 3}, {1: ["a star"]}, 1).to_json()
        {'unique': 80.0, 'novel': 3}
    """

    scores: dict[str, float]
    ranked: dict[int, list[str]]
    best_n: int

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(self.scores)


def diversity_table(consensus: ConsensusResult, train_captions: Any = None, best_n: int = 5) -> DiversityResult:
    r"""Table 3 (diversity): Unique %, Novel, mBLEU-4, Div-1 and Div-2 of the best ``best_n``
    captions of each image after consensus re-ranking.

    Arguments:
        consensus: The re-ranking (:func:`consensus_table`).
        train_captions: The training captions, for ``novel`` (e.g. ``data.train_captions``).
        best_n: Captions kept per image (the paper: 5).

    Returns:
        A :class:`DiversityResult` (with the best ``best_n`` of each image).

    Example:
        >>> ranked = {1: ["a red circle", "a blue star", "a red circle"]}
        >>> consensus = ConsensusResult({}, ranked, k=1, m=1, features="raw", features_description="")
        >>> diversity_table(consensus, ["a red circle"], best_n=2)["novel"]
        1
    """
    from flowkit.metrics import diversity_scores

    best_n = check_positive_int("best_n", best_n)
    best = consensus.best(best_n)
    return DiversityResult(diversity_scores(best, train_captions), best, best_n)


@dataclass
class GroundTruthResult(JsonResult):
    r"""The exact judges of the shapes grammar on sampled captions.

    Arguments:
        accuracy: Fraction of all sampled captions true of their image.
        coverage: Mean fraction of an image's true caption meanings that its samples reach.
        top1_accuracy: Accuracy of the top-1 after re-ranking.
        best_n_accuracy: Accuracy of the best ``best_n`` after re-ranking.
        best_n_coverage: Coverage of the best ``best_n``.
        reference_coverage: The coverage of the dataset's own references (for scale).
    """

    accuracy: float
    coverage: float
    top1_accuracy: float
    best_n_accuracy: float
    best_n_coverage: float
    reference_coverage: float

    def to_json(self) -> dict[str, Any]:
        return to_jsonable({f.name: getattr(self, f.name) for f in fields(self)})


def ground_truth_table(
    samples: CaptionSamples, consensus: ConsensusResult, scenes: Mapping[int, Any], best_n: int = 5
) -> GroundTruthResult:
    r"""Ground truth of sampled captions on the shapes data (exact, :mod:`flowkit.data.judges`).

    Arguments:
        samples: The sampled captions and their references.
        consensus: Their re-ranking (:func:`consensus_table`).
        scenes: ``{image_id: Scene}`` holding every sampled image (e.g. ``data.scenes``).
        best_n: Captions per image of ``best_n_accuracy`` and ``best_n_coverage``.

    Returns:
        A :class:`GroundTruthResult`.

    .. code-block:: python

        truth = ground_truth_table(samples, consensus_table(model, data, samples), data.scenes)
        truth.accuracy, truth["coverage"]
    """
    from flowkit.data.judges import caption_accuracy, caption_coverage

    missing = [i for i in samples.image_ids if i not in scenes]
    if missing:
        raise ValueError(f"no scenes of image ids {missing[:5]}: the ground truth needs the shapes data's scenes")
    sub = {i: scenes[i] for i in samples.image_ids}
    best = consensus.best(best_n)
    return GroundTruthResult(
        accuracy=caption_accuracy(samples.candidates, sub),
        coverage=caption_coverage(samples.candidates, sub),
        top1_accuracy=caption_accuracy({i: [c] for i, c in consensus.top1.items()}, sub),
        best_n_accuracy=caption_accuracy(best, sub),
        best_n_coverage=caption_coverage(best, sub),
        reference_coverage=caption_coverage(samples.references, sub),
    )


@dataclass(eq=False)
class CaptioningResult(JsonResult):
    r"""All tables of :func:`evaluate_captioning`; ``to_json()`` (and item access) gives the
    layout of the report's ``results.json`` (plus ``samples``, ``ranked`` and ``references``).

    Arguments:
        samples: The sampled captions.
        oracle: Table 1.
        consensus: Table 2.
        diversity: Table 3.
        ground_truth: The exact judges (shapes data only, else None).
        timings: Seconds per step.
        seconds: The whole evaluation's seconds.
        figure_images: Images of the report's figure (:func:`~flowkit.evaluation.plots.plot_captioning_result`).
        spice_note: A note for the report (why SPICE is missing), or None.
    """

    samples: CaptionSamples
    oracle: OracleResult
    consensus: ConsensusResult
    diversity: DiversityResult
    ground_truth: GroundTruthResult | None = None
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    figure_images: int = 6
    spice_note: str | None = None

    @property
    def figure_ids(self) -> list[int]:
        r"""The image ids of the report's figure."""
        return self.samples.image_ids[: max(0, self.figure_images)]

    def to_json(self) -> dict[str, Any]:
        s, c, ids = self.samples, self.consensus, self.samples.image_ids
        out: dict[str, Any] = {
            "split": s.split,
            "num_images": len(ids),
            "num_samples": int(s.num_samples),
            "temperature": float(s.temperature),
            "method": s.method,
        }
        if s.method == "beam":
            out["beam_width"] = int(s.beam_width)
        out.update(oracle=self.oracle, consensus=c, consensus_k=c.k, consensus_m=c.m, rerank_features=c.features)
        out.update(rerank_features_description=c.features_description, best_n=self.diversity.best_n, diversity=self.diversity)
        if self.ground_truth is not None:
            out["ground_truth"] = self.ground_truth
        out["samples"] = {str(i): s.candidates[i] for i in ids}
        out["ranked"] = {str(i): self.diversity.ranked[i] for i in ids}
        out["references"] = {str(i): s.references[i] for i in ids}
        out.update(timings=self.timings, seconds=self.seconds)
        if self.spice_note:
            out["spice_note"] = self.spice_note
        return to_jsonable(out)


def _check_captioning(split: str, rerank_features: str, best_n: int) -> int:
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    _check_rerank(rerank_features)
    best_n = check_positive_int("best_n", best_n)
    if split == "train":
        raise ValueError("evaluate on 'val' or 'test': training images are the re-ranking's consensus set")
    return best_n


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
    beam_width: int = 2,
    limit: int | None = None,
    rerank_features: str = "auto",
    scenes: Mapping[int, Any] | None = None,
    candidates: Mapping[int, Sequence[str]] | None = None,
    batch_size: int = 8,
    seed: int | None = 0,
    figure_images: int = 6,
    progress: bool = True,
) -> CaptioningResult:
    r"""Evaluates diverse captioning with the paper's protocol (SPEC section 4): samples once
    (:func:`sample_captioning`), then Table 1 (:func:`oracle_table`), Table 2
    (:func:`consensus_table`), Table 3 (:func:`diversity_table`) and, where the scenes of the
    shapes data are known, the exact judges (:func:`ground_truth_table`).

    Arguments:
        model: A trained :class:`~flowkit.models.LNFMM`.
        data: A :class:`~flowkit.data.CaptionData`.
        split: ``"test"`` or ``"val"``.
        num_samples: Captions sampled per image (the paper: 100).
        k, m: Neighbours and consensus scores summed per candidate of the re-ranking (the paper: 60, 125).
        best_n: Captions per image kept for the diversity table (the paper: 5).
        temperature: Sampling temperature of the prior.
        method, beam_width: How each latent is decoded: ``"greedy"`` or ``"beam"`` of that width
            (a recipe's ``decoding``; the captioning recipe's is beams of 5).
        limit: Evaluate only the first ``limit`` images of the split.
        rerank_features: The k-NN features, ``"auto"``, ``"shared"`` or ``"raw"`` (see
            :func:`consensus_table`; the choice is recorded in the results).
        scenes: ``{image_id: Scene}`` for the ground-truth judges (default ``data.scenes``;
            pass :func:`flowkit.evaluation.scenes_from_export` for a COCO-format shapes export).
        candidates: Precomputed samples ``{image_id: [caption, ...]}`` (skips sampling).
        batch_size: Images per sampling call.
        seed: Seed of the sampling.
        figure_images: Images of the report's figure (0: none).
        progress: Show progress bars.

    Returns:
        A :class:`CaptioningResult`; ``to_json()`` and item access give ``oracle``,
        ``consensus``, ``diversity``, ``ground_truth`` (shapes), ``samples`` (all candidates),
        ``ranked`` (best ``best_n``), ``references``, the settings and ``seconds``.

    Example (not run as a doctest: the caption metrics' Java tools take tens of seconds even on a
    few images; ``tests/test_evaluation.py`` runs it):

    .. code-block:: python

        model, data, _ = load_run("runs/small")
        res = evaluate_captioning(model, data, num_samples=100, limit=50)
        res["oracle"]["CIDEr"], res.ground_truth.accuracy, sorted(res["diversity"])
    """
    best_n = _check_captioning(split, rerank_features, best_n)
    start = time.perf_counter()
    how = {"temperature": temperature, "method": method, "beam_width": beam_width}
    if candidates is None:
        samples = sample_captioning(
            model, data, split, num_samples, **how, limit=limit, batch_size=batch_size, seed=seed, progress=progress
        )
    else:
        samples = caption_samples(data, split, candidates, **how)
    timings: dict[str, float] = {"sampling": time.perf_counter() - start}
    oracle = timed(timings, "oracle", oracle_table, samples, progress=progress)
    consensus = timed(timings, "consensus", consensus_table, model, data, samples, k, m, rerank_features, progress=progress)
    diversity = timed(timings, "diversity", diversity_table, consensus, data.train_captions, best_n)
    scenes = scenes if scenes is not None else getattr(data, "scenes", None)
    truth = None
    if scenes is not None and all(i in scenes for i in samples.image_ids):
        truth = timed(timings, "ground_truth", ground_truth_table, samples, consensus, scenes, best_n)
    seconds = time.perf_counter() - start
    return CaptioningResult(samples, oracle, consensus, diversity, truth, timings, seconds, figure_images)
