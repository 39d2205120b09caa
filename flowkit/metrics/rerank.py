r"""Consensus re-ranking of candidate captions (the paper's Table 2; Mao et al., 2015).

For a test image, the captions of its :math:`k` nearest training images (Euclidean distance
between image features) form a consensus set :math:`R`. Each candidate :math:`c` is scored by
CIDEr-D against every consensus caption alone, :math:`s(c, r)`, and ranked by the sum of its
top :math:`m` scores. See ``docs/evaluation.md``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np
from tqdm.auto import tqdm

from flowkit._validation import check_positive_int
from flowkit.metrics.captions import _check_candidate_lists, _examples, _tqdm_disable, ptb_tokenize

__all__ = ["consensus_rerank", "nearest_neighbors", "pairwise_cider"]

ImageId = Hashable
Features = Mapping[ImageId, Any] | tuple[Sequence[ImageId], Any]


def _ngrams(tokens: list[str], n: int) -> list[Counter[tuple[str, ...]]]:
    return [Counter(tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1)) for k in range(1, n + 1)]


def pairwise_cider(candidates: Sequence[str], references: Sequence[str], n: int = 4, sigma: float = 6.0) -> np.ndarray:
    r"""CIDEr-D of every candidate against every reference caption taken alone.

    Equals pycocoevalcap's ``CiderScorer`` fed the pairs ``(candidate, [reference_r])`` for all
    :math:`r` (one candidate at a time): document frequencies :math:`\mathrm{df}(g)` count the
    reference captions containing n-gram :math:`g`, :math:`\mathrm{idf}(g) = \log |R| - \log
    \max(1, \mathrm{df}(g))`, and with TF-IDF vectors :math:`v^k` of the k-grams

    .. math:: s(c, r) = \frac{10}{n} \sum_{k=1}^{n} \frac{\sum_g \min(v^k_c(g), v^k_r(g))\, v^k_r(g)}
              {\lVert v^k_c \rVert \lVert v^k_r \rVert} \, e^{-(\ell_c - \ell_r)^2 / 2\sigma^2}

    where :math:`\ell` is pycocoevalcap's length (the number of bigrams). Vectorised: one
    matrix product per n-gram order instead of Python loops over pairs.

    Arguments:
        candidates: Tokenized candidate captions (C).
        references: Tokenized reference captions (R), the documents of the IDF.
        n: Largest n-gram order.
        sigma: Width of the length penalty.

    Returns:
        Scores of shape (C, R).

    Example:
        >>> pairwise_cider(["a red circle"], ["a red circle", "a blue square"]).round(3)
        array([[7.5, 0. ]])
    """
    C, R = len(candidates), len(references)
    out = np.zeros((C, R))
    if C == 0 or R == 0:
        return out
    cand = [_ngrams(s.split(), n) for s in candidates]
    refs = [_ngrams(s.split(), n) for s in references]
    log_r = np.log(float(R))
    # pycocoevalcap counts "length" inside `if n == 1` with n the 0-based order: bigrams.
    len_c = np.array([sum(c[1].values()) if n > 1 else 0 for c in cand], dtype=np.float64)
    len_r = np.array([sum(r[1].values()) if n > 1 else 0 for r in refs], dtype=np.float64)
    for k in range(n):
        df: Counter[tuple[str, ...]] = Counter()
        for r in refs:
            df.update(r[k].keys())
        idf = {g: log_r - np.log(float(d)) for g, d in df.items()}  # unseen grams: log_r - log 1

        def norms(rows: list[list[Counter[tuple[str, ...]]]], order: int = k) -> np.ndarray:
            # called in this iteration only, so the late binding of idf is the one wanted
            return np.sqrt([sum((tf * idf.get(g, log_r)) ** 2 for g, tf in row[order].items()) for row in rows])  # noqa: B023

        norm_c, norm_r = norms(cand), norms(refs)
        # Only n-grams in both a candidate and a reference contribute to the numerator.
        vocab = sorted({g for c in cand for g in c[k] if g in idf})
        if not vocab:
            continue
        index = {g: v for v, g in enumerate(vocab)}
        tf_c = np.zeros((C, len(vocab)))
        tf_r = np.zeros((R, len(vocab)))
        for i, c in enumerate(cand):
            for g, tf in c[k].items():
                if g in index:
                    tf_c[i, index[g]] = tf
        for j, r in enumerate(refs):
            for g, tf in r[k].items():
                if g in index:
                    tf_r[j, index[g]] = tf
        w = np.array([idf[g] for g in vocab]) ** 2
        # sum_g min(a_g, b_g) b_g idf_g^2 with integer counts: min(a, b) = sum_{t>=1} [a>=t][b>=t].
        num = np.zeros((C, R))
        for t in range(1, int(min(tf_c.max(), tf_r.max())) + 1):
            num += (tf_c >= t).astype(np.float64) @ ((tf_r >= t) * tf_r * w).T
        denom = np.outer(norm_c, norm_r)
        out += np.divide(num, denom, out=num.copy(), where=denom != 0)
    penalty = np.exp(-((len_c[:, None] - len_r[None, :]) ** 2) / (2 * sigma**2))
    return out / n * penalty * 10.0


def _feature_table(features: Features, name: str) -> tuple[list[ImageId], np.ndarray]:
    if isinstance(features, Mapping):
        ids = list(features)
        if not ids:
            raise ValueError(f"{name} is empty")
        rows = [_to_numpy(features[i]).reshape(-1) for i in ids]
        sizes = {r.shape[0] for r in rows}
        if len(sizes) != 1:
            raise ValueError(f"{name}: feature vectors have different sizes {sorted(sizes)}")
        table = np.stack(rows)
    elif isinstance(features, tuple) and len(features) == 2:
        ids, table = list(features[0]), _to_numpy(features[1])
        if table.ndim != 2 or table.shape[0] != len(ids):
            raise ValueError(f"{name}: expected (ids, array of shape (len(ids), F)), got {len(ids)} ids and {table.shape}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name}: ids are not unique")
    else:
        raise TypeError(f"{name} must be a dict id -> vector or a tuple (ids, array (N, F)), got {type(features).__name__}")
    if not np.isfinite(table).all():
        raise ValueError(f"{name} contains NaN or inf")
    return ids, table


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def nearest_neighbors(queries: np.ndarray, keys: np.ndarray, k: int, chunk_elements: int = 2**24) -> np.ndarray:
    r"""Indices of the ``k`` nearest rows of ``keys`` for each query row (Euclidean), nearest first.

    Ties go to the lower key index, so the result is deterministic.

    Arguments:
        queries: (Q, F) array.
        keys: (N, F) array.
        k: Neighbours per query (at most N).
        chunk_elements: Bound on the size of one block of the distance matrix.

    Example:
        >>> nearest_neighbors(np.array([[0.0], [5.0]]), np.array([[4.0], [1.0], [0.0]]), 2)
        array([[2, 1],
               [0, 1]])
    """
    q, keys = np.asarray(queries, np.float64), np.asarray(keys, np.float64)
    n = keys.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    key_sq = (keys**2).sum(1)
    out = np.empty((q.shape[0], k), dtype=np.int64)
    step = max(1, chunk_elements // max(n, 1))
    for start in range(0, q.shape[0], step):
        block = q[start : start + step]
        d2 = np.maximum((block**2).sum(1)[:, None] - 2.0 * block @ keys.T + key_sq[None, :], 0.0)
        # argpartition finds the k-th distance; everything not farther is sorted by (distance, index).
        kth = np.partition(d2, k - 1, axis=1)[:, k - 1 : k]
        for row in range(block.shape[0]):
            cand = np.flatnonzero(d2[row] <= kth[row, 0])
            order = np.lexsort((cand, d2[row, cand]))
            out[start + row] = cand[order[:k]]
    return out


def _rerank_features(
    candidates: Mapping[ImageId, Sequence[str]],
    test_features: Features,
    train_features: Features,
    train_captions: Mapping[ImageId, Sequence[str]],
) -> tuple[np.ndarray, list[ImageId], np.ndarray]:
    r"""The features of the candidates' images (rows in ``candidates``' order), the training
    ids and their features; checks that they fit together and that every training image has captions."""
    test_ids, test_table = _feature_table(test_features, "test_features")
    train_ids, train_table = _feature_table(train_features, "train_features")
    if test_table.shape[1] != train_table.shape[1]:
        raise ValueError(f"test features have {test_table.shape[1]} dimensions, train features {train_table.shape[1]}")
    row_of = {i: r for r, i in enumerate(test_ids)}
    missing = [i for i in candidates if i not in row_of]
    if missing:
        raise ValueError(f"test_features lacks {len(missing)} candidate image ids, e.g. {_examples(missing)}")
    no_caps = [i for i in train_ids if len(train_captions.get(i, ())) == 0]
    if no_caps:
        raise ValueError(f"train_captions has no captions for {len(no_caps)} training images of train_features, e.g. {_examples(no_caps)}")
    return test_table[[row_of[i] for i in candidates]], train_ids, train_table


def _tokenized(
    cand_sets: list[list[str]], train_sets: Mapping[int, list[str]], needed: Sequence[int]
) -> tuple[list[list[str]], dict[int, list[str]]]:
    r"""PTB-tokenized candidates and the ``needed`` training captions, in one Java run."""
    flat = [c for s in cand_sets for c in s] + [c for j in needed for c in train_sets[j]]
    tok = iter(ptb_tokenize(flat))
    cand_tok = [[next(tok) for _ in s] for s in cand_sets]
    train_tok = {j: [next(tok) for _ in train_sets[j]] for j in needed}
    return cand_tok, train_tok


@overload
def consensus_rerank(
    candidates: Mapping[ImageId, Sequence[str]],
    test_features: Features,
    train_features: Features,
    train_captions: Mapping[ImageId, Sequence[str]],
    k: int = ...,
    m: int = ...,
    *,
    tokenize: bool = ...,
    return_scores: Literal[False] = ...,
    progress: bool | None = ...,
) -> dict[ImageId, list[str]]: ...


@overload
def consensus_rerank(
    candidates: Mapping[ImageId, Sequence[str]],
    test_features: Features,
    train_features: Features,
    train_captions: Mapping[ImageId, Sequence[str]],
    k: int = ...,
    m: int = ...,
    *,
    tokenize: bool = ...,
    return_scores: Literal[True],
    progress: bool | None = ...,
) -> tuple[dict[ImageId, list[str]], dict[ImageId, np.ndarray]]: ...


def consensus_rerank(
    candidates: Mapping[ImageId, Sequence[str]],
    test_features: Features,
    train_features: Features,
    train_captions: Mapping[ImageId, Sequence[str]],
    k: int = 60,
    m: int = 125,
    *,
    tokenize: bool = True,
    return_scores: bool = False,
    progress: bool | None = None,
) -> dict[ImageId, list[str]] | tuple[dict[ImageId, list[str]], dict[ImageId, np.ndarray]]:
    r"""Orders each image's candidates best first by consensus CIDEr-D (Mao et al., 2015).

    For test image :math:`x`: :math:`N_k(x)` are the :math:`k` training images nearest in
    feature space (Euclidean; ties to the earlier training id), :math:`R_x` all their captions
    (PTB-tokenized), and each candidate gets

    .. math:: S(c) = \sum_{\text{top } m \text{ of } r \in R_x} s(c, r)

    with :math:`s` the CIDEr-D of :func:`pairwise_cider` (document frequencies over
    :math:`R_x`; all of :math:`R_x` when it has fewer than :math:`m` captions). Candidates are
    sorted by decreasing :math:`S`, ties kept in input order. The test images should not be
    among the training images (their own captions would be the consensus).

    Arguments:
        candidates: Test image id -> candidate captions.
        test_features: Features of the test images: dict id -> vector, or ``(ids, array (N, F))``
            (numpy or torch); must cover every id of ``candidates``.
        train_features: Features of the training images, same forms.
        train_captions: Training image id -> captions; must cover every training id.
        k: Neighbours per test image (capped at the number of training images).
        m: Consensus scores summed per candidate.
        tokenize: PTB-tokenize candidates and the needed training captions (one Java run).
        return_scores: Also return each image's sums :math:`S`, aligned with the ranking.
        progress: Show a progress bar (None: only on a terminal).

    Returns:
        Test image id -> its candidates (original strings), best first.

    Example:
        >>> ranked = consensus_rerank(
        ...     {"t": ["a blue square", "a red circle"]}, {"t": [0.0, 0.0]},
        ...     {"a": [0.1, 0.0], "b": [9.0, 9.0]},
        ...     {"a": ["a red circle", "a green star"], "b": ["a blue square"]}, k=1, m=5)
        >>> ranked["t"][0]
        'a red circle'
    """
    _check_candidate_lists(candidates)
    k, m = check_positive_int("k", k), check_positive_int("m", m)
    ids = list(candidates)
    queries, train_ids, train_table = _rerank_features(candidates, test_features, train_features, train_captions)
    neighbors = nearest_neighbors(queries, train_table, min(k, len(train_ids)))

    cand_sets = [list(candidates[i]) for i in ids]
    needed = sorted({int(j) for row in neighbors for j in row})
    train_sets = {j: list(train_captions[train_ids[j]]) for j in needed}
    cand_tok, train_tok = _tokenized(cand_sets, train_sets, needed) if tokenize else (cand_sets, train_sets)

    ranked: dict[ImageId, list[str]] = {}
    sums: dict[ImageId, np.ndarray] = {}
    for x, image_id in enumerate(tqdm(ids, desc="consensus re-ranking", disable=_tqdm_disable(progress))):
        consensus = [c for j in neighbors[x] for c in train_tok[int(j)]]
        scores = pairwise_cider(cand_tok[x], consensus)
        top = -np.sort(-scores, axis=1)[:, :m]
        total = top.sum(axis=1)
        order = np.argsort(-total, kind="stable")
        ranked[image_id] = [cand_sets[x][o] for o in order]
        sums[image_id] = total[order]
    if return_scores:
        return ranked, sums
    return ranked
