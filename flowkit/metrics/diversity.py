r"""Diversity of generated caption sets (the paper's Table 3): Unique, Novel, mBLEU-4, Div-1, Div-2.

All counts use PTB-tokenized captions (lower case, punctuation removed), as the accuracy
metrics do. See ``docs/evaluation.md`` for the definitions.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

from flowkit._validation import check_positive_int
from flowkit.metrics.captions import _check_candidate_lists, _pycocoevalcap_dir, ptb_tokenize

__all__ = ["diversity_scores", "distinct_ngrams"]

ImageId = Hashable


def distinct_ngrams(captions: Sequence[str], n: int) -> float:
    r"""Div-n of one caption set: distinct n-grams over the number of words in the set.

    .. math:: \mathrm{Div}_n = \frac{|\{\text{distinct } n\text{-grams in the set}\}|}{\sum_c |c|}

    Captions are split on whitespace (tokenize them first); a set with no words gives 0.

    Arguments:
        captions: The captions of one image, tokenized.
        n: The n-gram order.

    Example:
        >>> distinct_ngrams(["a red circle", "a blue circle"], 1)
        0.6666666666666666
    """
    n = check_positive_int("n", n)
    grams: set[tuple[str, ...]] = set()
    words = 0
    for c in captions:
        toks = c.split()
        words += len(toks)
        grams.update(tuple(toks[k : k + n]) for k in range(len(toks) - n + 1))
    return len(grams) / words if words else 0.0


def _mbleu4(caption_sets: Sequence[Sequence[str]]) -> float:
    from pycocoevalcap.bleu.bleu import Bleu

    n_max = max(len(c) for c in caption_sets)
    per_index = []
    for i in range(n_max):
        # Images need caption i and at least one other caption to serve as references.
        js = [j for j, c in enumerate(caption_sets) if len(c) > i and len(c) >= 2]
        if not js:
            continue
        gts = {j: [c for k, c in enumerate(caption_sets[j]) if k != i] for j in js}
        res = {j: [caption_sets[j][i]] for j in js}
        score, _ = Bleu(4).compute_score(gts, res, verbose=0)
        per_index.append(float(score[3]))
    return float(np.mean(per_index)) if per_index else float("nan")


def diversity_scores(
    candidates: Mapping[ImageId, Sequence[str]],
    train_captions: Mapping[ImageId, Sequence[str]] | Iterable[str] | None = None,
    *,
    tokenize: bool = True,
) -> dict[str, float]:
    r"""Diversity of each image's caption set (Table 3 uses the best 5 after consensus re-ranking).

    With :math:`X` the images, :math:`C_x` the captions of image :math:`x` (tokenized) and
    :math:`T` the set of tokenized training captions:

    * ``unique`` :math:`= 100 \, |\bigcup_x C_x| / \sum_x |C_x|` (distinct over all images; with
      5 per image this is SPEC's :math:`100 \cdot |\text{distinct}| / (5 |X|)`);
    * ``novel`` :math:`= |\bigcup_x C_x \setminus T|` (a count; only with ``train_captions``);
    * ``mbleu4``: for each index :math:`i`, the corpus BLEU-4 (pycocoevalcap) of caption
      :math:`i` of every image against the other captions of that image, then the mean over
      :math:`i` (images with fewer than 2 captions or no caption :math:`i` are skipped; NaN if
      no image has 2 captions);
    * ``div1``, ``div2``: :func:`distinct_ngrams` of each image's set, averaged over images.

    Arguments:
        candidates: Image id -> its generated captions.
        train_captions: Training captions, as image id -> captions or a flat iterable of strings.
        tokenize: PTB-tokenize everything first (one Java run); False for tokenized text.

    Returns:
        ``{"unique", "novel" (with train captions), "mbleu4", "div1", "div2"}``.

    Example:
        >>> d = diversity_scores({1: ["a red circle", "a blue circle"]}, ["a red circle"])
        >>> d["unique"], d["novel"], d["div1"]
        (100.0, 1, 0.6666666666666666)
    """
    _check_candidate_lists(candidates)
    _pycocoevalcap_dir()
    ids = list(candidates)
    sets = [list(candidates[i]) for i in ids]
    train: list[str] | None = None
    if train_captions is not None:
        if isinstance(train_captions, str):
            raise TypeError("train_captions must be a dict id -> captions or an iterable of captions, not one string")
        if isinstance(train_captions, Mapping):
            train = [c for caps in train_captions.values() for c in ([caps] if isinstance(caps, str) else caps)]
        else:
            train = list(train_captions)
    if tokenize:
        flat = [c for s in sets for c in s] + (train or [])
        tok = iter(ptb_tokenize(flat))
        sets = [[next(tok) for _ in s] for s in sets]
        if train is not None:
            train = list(tok)
    total = sum(len(s) for s in sets)
    distinct = {c for s in sets for c in s}
    out: dict[str, float] = {"unique": 100.0 * len(distinct) / total}
    if train is not None:
        out["novel"] = len(distinct - set(train))
    out["mbleu4"] = _mbleu4(sets)
    out["div1"] = float(np.mean([distinct_ngrams(s, 1) for s in sets]))
    out["div2"] = float(np.mean([distinct_ngrams(s, 2) for s in sets]))
    return out
