"""Caption metrics against direct pycocoevalcap runs and hand-counted cases.

Java (PTB tokenizer, METEOR) is slow to start, so every Java-backed result is computed once per
module in fixtures and shared between tests.
"""

from __future__ import annotations

import math
import shutil
import warnings

import numpy as np
import pytest

pytest.importorskip("pycocoevalcap", reason="caption metrics need pycocoevalcap (pip install 'flowkit[coco]')")
if shutil.which("java") is None:
    pytest.skip("caption metrics need Java on PATH (pycocoevalcap's PTB tokenizer and METEOR)", allow_module_level=True)

from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.cider.cider_scorer import CiderScorer  # noqa: E402
from pycocoevalcap.meteor.meteor import Meteor  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # noqa: E402

from flowkit.metrics import (  # noqa: E402
    caption_scores,
    consensus_rerank,
    diversity_scores,
    nearest_neighbors,
    oracle_scores,
    pairwise_cider,
    ptb_tokenize,
    scoring_session,
)
from flowkit.metrics import captions as captions_module  # noqa: E402

KEYS = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]

REFS = {
    "img1": ["A red circle at the top left.", "A small red circle, top left!", "a circle that is red"],
    "img2": ["A blue square in the center.", "The blue square is centered."],
    7: ["Two green stars next to each other.", "A pair of green stars", "green stars side by side"],
    "img4": ["A yellow triangle to the left of a circle.", "a triangle left of a circle"],
}
CANDS = {
    "img1": "A red circle in the top left corner.",
    "img2": "",  # an empty caption must score 0, not crash
    7: "Two green stars.",
    "img4": "A yellow triangle next to a circle.",
}
# Different lengths per image: index 2 exists only for img1 and 7.
ORACLE_CANDS = {
    "img1": ["A blue square.", "A red circle at the top left.", "a small red circle"],
    "img2": ["A blue square in the centre.", ""],
    7: ["a green star", "two green stars next to each other", "A red circle."],
    "img4": ["A yellow triangle."],
}


def _direct_tokenize(refs: dict, cands: dict[object, list[str]]) -> tuple[dict, dict]:
    # pycocoevalcap's own tokenizer, one call for references and candidates.
    data = {("r", i): [{"caption": c} for c in v] for i, v in refs.items()}
    data.update({("c", i): [{"caption": c} for c in v] for i, v in cands.items()})
    tok = PTBTokenizer().tokenize(data)
    return {i: tok[("r", i)] for i in refs}, {i: tok[("c", i)] for i in cands}


def _direct_scores(gts: dict, res: dict, meteor: Meteor) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    corpus, per = {}, {}
    score, scores = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        corpus[f"Bleu_{n + 1}"], per[f"Bleu_{n + 1}"] = score[n], np.asarray(scores[n])
    for key, scorer in (("METEOR", meteor), ("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        score, scores = scorer.compute_score(gts, res)
        corpus[key], per[key] = score, np.asarray(scores)
    return corpus, per


@pytest.fixture(scope="module")
def direct() -> dict:
    """Everything computed straight with pycocoevalcap (one tokenizer run, one METEOR process)."""
    refs_tok, cands_tok = _direct_tokenize(REFS, {i: [c] for i, c in CANDS.items()})
    oracle_refs_tok, oracle_tok = _direct_tokenize(REFS, ORACLE_CANDS)
    meteor = Meteor()
    try:
        single = _direct_scores(refs_tok, cands_tok, meteor)
        # Oracle by hand: the scorer once per candidate index over the images having it.
        best: dict[str, dict[object, float]] = {k: {} for k in KEYS}
        for i in range(max(len(v) for v in ORACLE_CANDS.values())):
            ids = [j for j in REFS if len(ORACLE_CANDS[j]) > i]
            _, per = _direct_scores({j: oracle_refs_tok[j] for j in ids}, {j: [oracle_tok[j][i]] for j in ids}, meteor)
            for k in KEYS:
                for j, s in zip(ids, per[k]):
                    best[k][j] = max(best[k].get(j, -math.inf), float(s))
    finally:
        del meteor
    return {"refs_tok": refs_tok, "cands_tok": cands_tok, "single": single, "oracle_best": best}


@pytest.fixture(scope="module")
def ours() -> dict:
    # One METEOR process for both calls; the fixture records that it is shared and stopped.
    with warnings.catch_warnings(), scoring_session():
        warnings.simplefilter("ignore", RuntimeWarning)  # the SPICE notice
        corpus, per = caption_scores(REFS, CANDS, per_image=True)
        process = captions_module._session.get()._meteor.meteor_p
        oracle, oracle_per = oracle_scores(REFS, ORACLE_CANDS, metrics=KEYS, per_image=True)
        shared = captions_module._session.get()._meteor.meteor_p is process and process.poll() is None
    stopped = process.poll() is not None and captions_module._session.get() is None
    return {"corpus": corpus, "per": per, "oracle": oracle, "oracle_per": oracle_per, "session": (shared, stopped)}


def test_ptb_tokenize_matches_pycocoevalcap(direct: dict) -> None:
    sentences = [c for v in REFS.values() for c in v] + list(CANDS.values())
    expected = [c for v in direct["refs_tok"].values() for c in v] + [v[0] for v in direct["cands_tok"].values()]
    assert ptb_tokenize(sentences) == expected
    assert expected[0] == "a red circle at the top left"
    assert ptb_tokenize([]) == []


def test_caption_scores_equal_direct_pycocoevalcap(direct: dict, ours: dict) -> None:
    corpus, per = direct["single"]
    expected_keys = set(KEYS) | ({"SPICE"} if captions_module.spice_available() else set())
    assert set(ours["corpus"]) == expected_keys
    for k in KEYS:
        assert ours["corpus"][k] == pytest.approx(corpus[k], rel=1e-9, abs=1e-12), k
        assert [ours["per"][k][i] for i in REFS] == pytest.approx(list(per[k]), rel=1e-9, abs=1e-12), k
    # The empty candidate scores zero on every metric.
    for k in KEYS:
        assert ours["per"][k]["img2"] == pytest.approx(0.0, abs=1e-6), k
    assert ours["corpus"]["CIDEr"] > 0.5
    assert ours["session"] == (True, True)


def test_caption_scores_without_session(direct: dict) -> None:
    # Outside scoring_session each call runs its own scorer (no METEOR requested: no Java start).
    corpus = caption_scores(REFS, CANDS, metrics=["Bleu_4", "CIDEr"])
    assert set(corpus) == {"Bleu_4", "CIDEr"}
    for k in corpus:
        assert corpus[k] == pytest.approx(direct["single"][0][k], rel=1e-9, abs=1e-12)


def test_oracle_equals_per_index_runs_and_per_image_max(direct: dict, ours: dict) -> None:
    best = direct["oracle_best"]
    for k in KEYS:
        assert ours["oracle"][k] == pytest.approx(float(np.mean([best[k][i] for i in REFS])), rel=1e-9), k
        for i in REFS:
            assert ours["oracle_per"][k][i] == pytest.approx(best[k][i], rel=1e-9, abs=1e-12), (k, i)
    # img1's second candidate equals a reference: the oracle picks it.
    assert ours["oracle_per"]["ROUGE_L"]["img1"] == pytest.approx(1.0)
    assert ours["oracle"]["Bleu_1"] > 0.0


def test_spice_left_out_with_one_notice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captions_module, "spice_available", lambda: False)
    monkeypatch.setattr(captions_module, "_spice_notice_given", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys = captions_module._resolve_metrics(None)
        captions_module._resolve_metrics(None)
    assert "SPICE" not in keys and "CIDEr" in keys
    notices = [w for w in caught if "SPICE" in str(w.message)]
    assert len(notices) == 1
    assert "stanford-corenlp-3.6.0" in str(notices[0].message)
    with pytest.raises(RuntimeError, match="SPICE was requested"):
        captions_module._resolve_metrics(["SPICE"])
    assert captions_module._resolve_metrics(["Bleu", "CIDEr"]) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"]
    with pytest.raises(ValueError, match="unknown metric"):
        captions_module._resolve_metrics(["BLEU4"])


def test_clear_errors_for_ids_and_empty_lists() -> None:
    refs = {1: ["a cat"], 2: ["a dog"], 3: ["a cow"]}
    with pytest.raises(ValueError, match=r"same image ids.*1 only in references \[3\].*1 only in candidates \[4\]"):
        caption_scores(refs, {1: "a cat", 2: "a dog", 4: "a hen"})
    with pytest.raises(ValueError, match="same image ids"):
        oracle_scores(refs, {1: ["a cat"]})
    with pytest.raises(ValueError, match=r"1 images have an empty candidate list, e.g. \[2\]"):
        oracle_scores(refs, {1: ["a cat"], 2: [], 3: ["a cow"]})
    with pytest.raises(ValueError, match="empty candidate list"):
        diversity_scores({1: ["a cat"], 2: []})
    with pytest.raises(ValueError, match="empty candidate list"):
        consensus_rerank({1: []}, {1: [0.0]}, {5: [0.0]}, {5: ["a cat"]})
    with pytest.raises(ValueError, match="no reference captions"):
        caption_scores({1: []}, {1: "a cat"})
    with pytest.raises(TypeError, match="wrap it in a list"):
        caption_scores({1: "a cat"}, {1: "a cat"})
    with pytest.raises(TypeError, match="use oracle_scores"):
        caption_scores(refs, {1: ["a cat"], 2: ["a dog"], 3: ["a cow"]})
    with pytest.raises(ValueError, match="references is empty"):
        caption_scores({}, {})


# -- diversity ----------------------------------------------------------------------------------
DIV_CANDS = {
    "A": ["A red circle.", "a red circle", "A blue square!"],
    "B": ["a green star", "a small green star"],
}
DIV_TRAIN = {"t1": ["a red circle", "A green star."], "t2": ["a yellow heart"]}


def test_diversity_hand_counted() -> None:
    d = diversity_scores(DIV_CANDS, DIV_TRAIN)
    # Tokenized: A = {a red circle (x2), a blue square}, B = {a green star, a small green star}.
    assert d["unique"] == pytest.approx(100 * 4 / 5)
    assert d["novel"] == 2  # "a blue square", "a small green star"
    assert d["div1"] == pytest.approx((5 / 9 + 4 / 7) / 2)
    assert d["div2"] == pytest.approx((4 / 9 + 4 / 7) / 2)
    a = ["a red circle", "a red circle", "a blue square"]
    b = ["a green star", "a small green star"]
    per_index = [
        Bleu(4).compute_score({0: [a[1], a[2]], 1: [b[1]]}, {0: [a[0]], 1: [b[0]]}, verbose=0)[0][3],
        Bleu(4).compute_score({0: [a[0], a[2]], 1: [b[0]]}, {0: [a[1]], 1: [b[1]]}, verbose=0)[0][3],
        Bleu(4).compute_score({0: [a[0], a[1]]}, {0: [a[2]]}, verbose=0)[0][3],
    ]
    assert d["mbleu4"] == pytest.approx(float(np.mean(per_index)), rel=1e-12)
    # Without training captions there is no Novel; tokenize=False takes the text as is.
    d2 = diversity_scores({"A": a, "B": b}, tokenize=False)
    assert "novel" not in d2
    assert d2["unique"] == d["unique"] and d2["mbleu4"] == pytest.approx(d["mbleu4"])


def test_mbleu4_identical_vs_disjoint() -> None:
    same = diversity_scores({1: ["a man rides a red horse"] * 3, 2: ["two dogs play with a ball"] * 2}, tokenize=False)
    assert same["mbleu4"] == pytest.approx(1.0, abs=1e-6)
    assert same["unique"] == pytest.approx(100 * 2 / 5)
    disjoint = diversity_scores({1: ["one man rides horses", "two dogs play with balls", "cats sleep on sofas"]}, tokenize=False)
    assert disjoint["mbleu4"] < 1e-6
    assert disjoint["div1"] == pytest.approx(1.0) and disjoint["unique"] == 100.0
    # A single caption per image has no "other captions": mBLEU is undefined.
    assert math.isnan(diversity_scores({1: ["a cat"]}, tokenize=False)["mbleu4"])


# -- consensus re-ranking ---------------------------------------------------------------------
def test_pairwise_cider_equals_pycocoevalcap() -> None:
    cands = ["a red circle at the top", "a red red circle", "a blue square", "", "star"]
    refs = [
        "a red circle at the top left",
        "a small red circle",
        "a red circle",
        "a blue square in the center",
        "a red a red circle",
    ]
    ours = pairwise_cider(cands, refs)
    assert ours.shape == (5, 5)
    for c, cand in enumerate(cands):
        scorer = CiderScorer(n=4, sigma=6.0)
        for r in refs:
            scorer += (cand, [r])
        _, expected = scorer.compute_score()
        np.testing.assert_allclose(ours[c], expected, rtol=1e-10, atol=1e-12)
    assert ours[3].sum() == 0.0


def test_nearest_neighbors_ties_to_lower_index() -> None:
    keys = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [5.0, 5.0]])
    assert nearest_neighbors(np.zeros((1, 2)), keys, 3).tolist() == [[0, 1, 2]]
    assert nearest_neighbors(np.array([[5.0, 4.0]]), keys, 2).tolist() == [[3, 0]]
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbors(np.zeros((1, 2)), keys, 5)


def test_consensus_rerank_known_answer() -> None:
    train_captions = {
        "near1": ["A red circle at the top.", "a red circle on top", "red circle at the top"],
        "near2": ["a red circle at the top", "A big red circle at the top."],
        "far1": ["a blue square at the bottom", "A blue square at the bottom.", "blue square at the bottom"],
        "far2": ["a blue square at the bottom", "a square that is blue"],
    }
    train_features = (["far1", "near1", "near2", "far2"], np.array([[10.0, 10.0], [0.0, 0.1], [0.1, 0.0], [10.0, 9.9]]))
    candidates = {
        "q_near": ["A blue square at the bottom.", "a green star", "A red circle at the top."],
        "q_far": ["A blue square at the bottom.", "a green star", "A red circle at the top."],
    }
    test_features = {"q_near": np.zeros(2), "q_far": np.array([9.0, 9.5])}
    ranked, sums = consensus_rerank(candidates, test_features, train_features, train_captions, k=2, m=3, return_scores=True)
    # Near the red-circle images the red-circle caption wins; the far image's captions are not used.
    assert ranked["q_near"][0] == "A red circle at the top."
    assert ranked["q_near"][-1] in ("a green star", "A blue square at the bottom.")
    # q_far's 2 neighbours are the blue-square images.
    assert ranked["q_far"][0] == "A blue square at the bottom."
    assert sorted(ranked["q_near"]) == sorted(candidates["q_near"])  # original strings, all kept
    assert np.all(np.diff(sums["q_near"]) <= 0)
    # The sum of the top m scores, recomputed by hand for the winner.
    consensus = ptb_tokenize(train_captions["near1"] + train_captions["near2"])
    scores = pairwise_cider(["a red circle at the top"], consensus)[0]
    assert sums["q_near"][0] == pytest.approx(np.sort(scores)[::-1][:3].sum(), rel=1e-10)


def test_consensus_rerank_ties_and_errors() -> None:
    train_captions = {0: ["a cat"], 1: ["a dog"]}
    feats = (np.array([0, 1]), np.array([[0.0], [1.0]]))
    # No overlap with the consensus: all scores 0, input order kept.
    zebras = ["zebra one", "zebra two", "zebra three"]
    ranked = consensus_rerank({"t": zebras}, {"t": [0.0]}, feats, train_captions, k=1, tokenize=False)
    assert ranked["t"] == zebras
    with pytest.raises(ValueError, match="test_features lacks 1"):
        consensus_rerank({"t": ["a"], "u": ["b"]}, {"t": [0.0]}, feats, train_captions, tokenize=False)
    with pytest.raises(ValueError, match="no captions for 1 training images"):
        consensus_rerank({"t": ["a"]}, {"t": [0.0]}, feats, {0: ["a cat"]}, tokenize=False)
    with pytest.raises(ValueError, match="dimensions"):
        consensus_rerank({"t": ["a"]}, {"t": [0.0, 1.0]}, feats, train_captions, tokenize=False)
