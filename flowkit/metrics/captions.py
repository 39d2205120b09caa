r"""Caption accuracy: the COCO scorers of pycocoevalcap after PTB tokenization, and oracle scores.

Captions are plain strings keyed by image id. Scores use pycocoevalcap's keys
(``Bleu_1`` .. ``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``, ``SPICE``); ``CIDEr`` is
pycocoevalcap's ``Cider``, which is CIDEr-D in the coco-caption sense (clipped n-gram counts,
Gaussian length penalty with :math:`\sigma = 6`, times 10; document frequencies from the
references of the images scored together).

Java is needed (PTB tokenizer, METEOR, SPICE). Every public call tokenizes all of its
sentences in one Java run and starts METEOR's Java process at most once. SPICE runs only when
the Stanford CoreNLP 3.6.0 jars sit in pycocoevalcap's ``spice/lib`` folder (offline machines
cannot download them); otherwise it is left out with one notice per process.

See ``docs/evaluation.md`` for the exact definitions.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "METRIC_KEYS",
    "caption_scores",
    "oracle_scores",
    "ptb_tokenize",
    "scoring_session",
    "spice_available",
]

#: All keys the caption scorers can produce, in pycocoevalcap's spelling.
METRIC_KEYS: tuple[str, ...] = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
_BLEU_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")

# Same list as pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS: tokens dropped after tokenizing.
_PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"])
_CORENLP_TOKENIZER_JAR = "stanford-corenlp-3.4.1.jar"
_SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")

_spice_notice_given = False

ImageId = Hashable


# -- optional dependencies -------------------------------------------------------------------
def _pycocoevalcap_dir() -> str:
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer as ptb
    except ImportError as e:
        raise ImportError(
            "flowkit's caption metrics need pycocoevalcap (BLEU, METEOR, ROUGE-L, CIDEr, SPICE and the PTB "
            f"tokenizer): importing it failed ({e}). Fix: pip install 'flowkit[coco]' (or pip install pycocoevalcap)"
        ) from e
    return os.path.dirname(os.path.dirname(os.path.abspath(ptb.__file__)))


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(
            "flowkit's caption metrics run pycocoevalcap's Java tools (PTB tokenizer, METEOR, SPICE) and found no "
            "`java` on PATH. Fix: install a Java runtime (8 or newer; e.g. apt-get install default-jre-headless)"
        )
    return java


def spice_available() -> bool:
    r"""Whether SPICE can run offline: pycocoevalcap's ``spice/lib`` holds the CoreNLP 3.6.0 jars.

    Example:
        >>> isinstance(spice_available(), bool)
        True
    """
    try:
        root = _pycocoevalcap_dir()
    except ImportError:
        return False
    lib = os.path.join(root, "spice", "lib")
    return all(os.path.isfile(os.path.join(lib, jar)) for jar in _SPICE_CORENLP_JARS)


def _spice_notice() -> None:
    global _spice_notice_given
    if _spice_notice_given:
        return
    _spice_notice_given = True
    lib = "<pycocoevalcap>/spice/lib"
    with contextlib.suppress(ImportError):
        lib = os.path.join(_pycocoevalcap_dir(), "spice", "lib")
    warnings.warn(
        "SPICE is left out: it needs Stanford CoreNLP 3.6.0 (" + ", ".join(_SPICE_CORENLP_JARS) + f") in {lib}, "
        "which pycocoevalcap downloads on first use and cannot fetch offline. To enable it, copy both jars from "
        "stanford-corenlp-full-2015-12-09.zip into that folder (or run "
        "`python -m pycocoevalcap.spice.get_stanford_models` once with network access). "
        "This notice is shown once per process.",
        RuntimeWarning,
        stacklevel=4,  # _spice_notice <- _resolve_metrics <- public function <- caller
    )


# -- tokenization -----------------------------------------------------------------------------
def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    r"""Tokenizes sentences exactly as pycocoevalcap's ``PTBTokenizer``, in one Java run.

    Stanford's PTB tokenizer (CoreNLP 3.4.1, lower-cased, one line per sentence), then the
    punctuation tokens pycocoevalcap removes are dropped. Empty sentences give empty strings.
    Unlike ``PTBTokenizer.tokenize``, the temporary file goes to the system temp folder (not the
    installed package) and the output is checked to have one line per sentence.

    Arguments:
        sentences: The sentences.

    Returns:
        The tokenized sentences, space-separated, in input order.

    Example:
        >>> ptb_tokenize(["A man, riding a Horse.", ""])
        ['a man riding a horse', '']
    """
    sentences = list(sentences)
    for s in sentences:
        if not isinstance(s, str):
            raise TypeError(f"captions must be strings, got {type(s).__name__}: {s!r}")
    if not sentences:
        return []
    jar = os.path.join(_pycocoevalcap_dir(), "tokenizer", _CORENLP_TOKENIZER_JAR)
    java = _java()
    # str.split() also breaks on \r, \x0b, \x0c, \x85, \u2028, ...: Java would read those as line
    # ends and shift every later sentence by one.
    lines = [" ".join(s.split()) for s in sentences]
    with tempfile.TemporaryDirectory(prefix="flowkit-ptb-") as tmp:
        path = os.path.join(tmp, "sentences.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        proc = subprocess.run(
            [java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path],
            capture_output=True,
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(
            f"the PTB tokenizer (java -cp {jar}) failed with exit code {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}"
        )
    out = proc.stdout.decode("utf-8", errors="replace").split("\n")
    if len(out) < len(sentences):
        raise RuntimeError(
            f"the PTB tokenizer returned {len(out)} lines for {len(sentences)} sentences; "
            f"stderr: {proc.stderr.decode(errors='replace')[-2000:]}"
        )
    return [" ".join(w for w in line.rstrip().split(" ") if w not in _PUNCTUATIONS) for line in out[: len(sentences)]]


def _tqdm_disable(progress: bool | None) -> bool | None:
    # tqdm's disable=None shows the bar only on a terminal.
    return None if progress is None else not progress


# -- input checks -----------------------------------------------------------------------------
def _examples(ids: Any, count: int = 3) -> str:
    ids = sorted(ids, key=repr)
    shown = ", ".join(repr(i) for i in ids[:count])
    return f"[{shown}{', ...' if len(ids) > count else ''}]"


def _check_caption_lists(captions: Mapping[ImageId, Sequence[str]], name: str, empty_what: str) -> None:
    # references and candidate lists share one shape: a non-empty dict id -> non-empty list
    if not isinstance(captions, Mapping):
        raise TypeError(f"{name} must be a dict image id -> list of captions, got {type(captions).__name__}")
    if len(captions) == 0:
        raise ValueError(f"no images to score: {name} is empty")
    bad = [i for i, v in captions.items() if isinstance(v, str)]
    if bad:
        raise TypeError(
            f"{name} must map each image id to a list of captions; {len(bad)} ids map to a single string "
            f"(e.g. {_examples(bad)}): wrap it in a list"
        )
    empty = [i for i, v in captions.items() if len(v) == 0]
    if empty:
        raise ValueError(f"{len(empty)} images have {empty_what}, e.g. {_examples(empty)}")


def _check_references(references: Mapping[ImageId, Sequence[str]]) -> None:
    _check_caption_lists(references, "references", "no reference captions")


def _check_ids(references: Mapping[ImageId, Any], candidates: Mapping[ImageId, Any]) -> None:
    if not isinstance(candidates, Mapping):
        raise TypeError(f"candidates must be a dict keyed by image id, got {type(candidates).__name__}")
    ref_ids, cand_ids = set(references), set(candidates)
    if ref_ids != cand_ids:
        only_r, only_c = ref_ids - cand_ids, cand_ids - ref_ids
        raise ValueError(
            "references and candidates must have the same image ids: "
            f"{len(ref_ids)} reference ids, {len(cand_ids)} candidate ids; "
            f"{len(only_r)} only in references {_examples(only_r)}, "
            f"{len(only_c)} only in candidates {_examples(only_c)}"
        )


def _check_candidate_lists(candidates: Mapping[ImageId, Sequence[str]]) -> None:
    _check_caption_lists(candidates, "candidates", "an empty candidate list")


def _resolve_metrics(metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        keys = [k for k in METRIC_KEYS if k != "SPICE"]
        if spice_available():
            keys.append("SPICE")
        else:
            _spice_notice()
        return keys
    if isinstance(metrics, str):
        metrics = [metrics]
    keys: list[str] = []
    for name in metrics:
        expanded = list(_BLEU_KEYS) if name == "Bleu" else [name]
        for k in expanded:
            if k not in METRIC_KEYS:
                raise ValueError(f"unknown metric {name!r}; choose from {list(METRIC_KEYS)} or 'Bleu' for all four")
            if k not in keys:
                keys.append(k)
    if "SPICE" in keys and not spice_available():
        raise RuntimeError(
            "SPICE was requested but Stanford CoreNLP 3.6.0 is missing from pycocoevalcap's spice/lib folder "
            "(it is downloaded on first use, impossible offline). Copy stanford-corenlp-3.6.0.jar and "
            "stanford-corenlp-3.6.0-models.jar there, or leave metrics=None to skip SPICE with a notice"
        )
    return [k for k in METRIC_KEYS if k in keys]


# -- scoring ----------------------------------------------------------------------------------
class _CocoScorer:
    r"""Runs pycocoevalcap's scorers on tokenized (hypothesis, references) pairs.

    METEOR's Java process starts on first use and lives until :meth:`close`, so one public call
    pays its start-up once.
    """

    def __init__(self, keys: Sequence[str] = ()) -> None:
        _pycocoevalcap_dir()
        self._meteor: Any = None
        if "METEOR" in keys:
            self.meteor()  # Popen returns at once; the JVM loads while we tokenize and score

    def __enter__(self) -> _CocoScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        m, self._meteor = self._meteor, None
        if m is None:
            return
        with m.lock:
            p = m.meteor_p
            for stream in (p.stdin, p.stdout, p.stderr):
                with contextlib.suppress(Exception):
                    stream.close()
            p.kill()
            p.wait()
        # pycocoevalcap's Meteor.__del__ repeats close/kill/wait; harmless on a finished process.

    def meteor(self) -> Any:
        if self._meteor is None:
            _java()
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()
        return self._meteor

    def score(
        self, references: Sequence[Sequence[str]], hypotheses: Sequence[str], keys: Sequence[str]
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        r"""Corpus scores and per-pair scores (arrays aligned with ``hypotheses``)."""
        gts = {j: list(r) for j, r in enumerate(references)}
        res = {j: [h] for j, h in enumerate(hypotheses)}
        corpus: dict[str, float] = {}
        per: dict[str, np.ndarray] = {}
        if not gts:
            return corpus, per
        if any(k in keys for k in _BLEU_KEYS):
            from pycocoevalcap.bleu.bleu import Bleu

            score, scores = Bleu(4).compute_score(gts, res, verbose=0)
            for n, k in enumerate(_BLEU_KEYS):
                if k in keys:
                    corpus[k], per[k] = float(score[n]), np.asarray(scores[n], dtype=np.float64)
        if "ROUGE_L" in keys:
            from pycocoevalcap.rouge.rouge import Rouge

            score, scores = Rouge().compute_score(gts, res)
            corpus["ROUGE_L"], per["ROUGE_L"] = float(score), np.asarray(scores, dtype=np.float64)
        if "CIDEr" in keys:
            from pycocoevalcap.cider.cider import Cider

            if not any(s.strip() for r in gts.values() for s in r):
                raise ValueError("CIDEr needs at least one non-empty reference caption after tokenization")
            score, scores = Cider().compute_score(gts, res)
            corpus["CIDEr"], per["CIDEr"] = float(score), np.asarray(scores, dtype=np.float64)
        if "SPICE" in keys:
            _java()
            from pycocoevalcap.spice.spice import Spice

            # Integer keys 0..n-1: Spice sorts ids, so its list follows our order.
            _, scores = Spice().compute_score(gts, res)
            f = np.asarray([s["All"]["f"] for s in scores], dtype=np.float64)
            corpus["SPICE"], per["SPICE"] = float(np.nanmean(f)), f
        if "METEOR" in keys:  # last: its Java start-up overlaps the Python scorers
            # A '|||' inside a reference would split it into two fields of METEOR's line protocol
            # (pycocoevalcap strips it from hypotheses only).
            gts_m = {j: [s.replace("|||", "") for s in r] for j, r in gts.items()}
            score, scores = self.meteor().compute_score(gts_m, res)
            corpus["METEOR"], per["METEOR"] = float(score), np.asarray(scores, dtype=np.float64)
        return corpus, per


_session: contextvars.ContextVar[_CocoScorer | None] = contextvars.ContextVar("flowkit_scoring_session", default=None)


@contextlib.contextmanager
def scoring_session() -> Iterator[None]:
    r"""Shares one METEOR Java process between all caption-metric calls inside the block.

    Each call of :func:`caption_scores` or :func:`oracle_scores` otherwise starts (and stops)
    its own METEOR process, which takes seconds.

    Example:
        >>> refs = {1: ["a red circle", "a small red circle"], 2: ["a blue square"]}
        >>> with scoring_session():
        ...     a = caption_scores(refs, {1: "a red circle", 2: "a blue square"}, metrics=["METEOR"])
        ...     b = oracle_scores(refs, {1: ["a circle", "a red circle"], 2: ["a blue square"] * 2}, metrics=["METEOR"])
        >>> sorted(a) == sorted(b) == ["METEOR"]
        True
    """
    scorer = _CocoScorer()
    token = _session.set(scorer)
    try:
        yield
    finally:
        _session.reset(token)
        scorer.close()


@contextlib.contextmanager
def _scorer(keys: Sequence[str]) -> Iterator[_CocoScorer]:
    shared = _session.get()
    if shared is not None:
        if "METEOR" in keys:
            shared.meteor()
        yield shared
        return
    with _CocoScorer(keys) as scorer:
        yield scorer


@overload
def caption_scores(
    references: Mapping[ImageId, Sequence[str]],
    candidates: Mapping[ImageId, str],
    metrics: Sequence[str] | None = ...,
    *,
    per_image: Literal[False] = ...,
    tokenize: bool = ...,
) -> dict[str, float]: ...


@overload
def caption_scores(
    references: Mapping[ImageId, Sequence[str]],
    candidates: Mapping[ImageId, str],
    metrics: Sequence[str] | None = ...,
    *,
    per_image: Literal[True],
    tokenize: bool = ...,
) -> tuple[dict[str, float], dict[str, dict[ImageId, float]]]: ...


def caption_scores(
    references: Mapping[ImageId, Sequence[str]],
    candidates: Mapping[ImageId, str],
    metrics: Sequence[str] | None = None,
    *,
    per_image: bool = False,
    tokenize: bool = True,
) -> dict[str, float] | tuple[dict[str, float], dict[str, dict[ImageId, float]]]:
    r"""COCO caption metrics of one candidate per image (pycocoevalcap after PTB tokenization).

    ``Bleu_n`` is corpus-level BLEU (pycocoevalcap, "closest" reference length); ``METEOR`` is
    METEOR 1.5's corpus score; ``ROUGE_L`` and ``CIDEr`` (CIDEr-D) are means of per-image
    scores; ``SPICE`` is the mean per-image F-score, present only when :func:`spice_available`.

    Arguments:
        references: Image id -> its reference captions.
        candidates: Image id -> one candidate caption; same ids as ``references``.
        metrics: Keys to compute (``"Bleu"`` stands for the four BLEU keys); default all, SPICE
            only when its jars are present (otherwise one notice per process).
        per_image: Also return per-image scores ``{metric: {image id: score}}`` (BLEU: the
            per-sentence scores pycocoevalcap returns beside the corpus score).
        tokenize: PTB-tokenize first (one Java run); pass False for already tokenized text.

    Returns:
        ``{metric: score}``, or ``(scores, per_image_scores)`` when ``per_image``.

    Example:
        >>> refs = {1: ["a red circle", "a small red circle"], 2: ["a blue square"]}
        >>> caption_scores(refs, {1: "a red circle", 2: "a blue square"}, metrics=["Bleu", "CIDEr"])["Bleu_1"]
        0.99...
    """
    _check_references(references)
    _check_ids(references, candidates)
    bad = [i for i, c in candidates.items() if not isinstance(c, str)]
    if bad:
        raise TypeError(
            f"caption_scores takes one caption string per image; {len(bad)} ids map to "
            f"{type(candidates[bad[0]]).__name__} (e.g. {_examples(bad)}); for several candidates use oracle_scores"
        )
    keys = _resolve_metrics(metrics)
    ids = list(references)
    refs = [list(references[i]) for i in ids]
    hyps = [candidates[i] for i in ids]
    with _scorer(keys) as scorer:
        if tokenize:
            refs, (hyps,) = _tokenize_nested(refs, [hyps])
        corpus, per = scorer.score(refs, hyps, keys)
    if not per_image:
        return corpus
    return corpus, {k: {i: float(v[j]) for j, i in enumerate(ids)} for k, v in per.items()}


def _tokenize_nested(refs: Sequence[Sequence[str]], groups: Sequence[Sequence[str]]) -> tuple[list[list[str]], list[list[str]]]:
    # One Java run for the references and every group of flat sentences.
    flat = [s for r in refs for s in r] + [s for g in groups for s in g]
    tok = iter(ptb_tokenize(flat))
    out_refs = [[next(tok) for _ in r] for r in refs]
    out_groups = [[next(tok) for _ in g] for g in groups]
    return out_refs, out_groups


@overload
def oracle_scores(
    references: Mapping[ImageId, Sequence[str]],
    candidates: Mapping[ImageId, Sequence[str]],
    metrics: Sequence[str] | None = ...,
    *,
    per_image: Literal[False] = ...,
    tokenize: bool = ...,
    progress: bool | None = ...,
) -> dict[str, float]: ...


@overload
def oracle_scores(
    references: Mapping[ImageId, Sequence[str]],
    candidates: Mapping[ImageId, Sequence[str]],
    metrics: Sequence[str] | None = ...,
    *,
    per_image: Literal[True],
    tokenize: bool = ...,
    progress: bool | None = ...,
) -> tuple[dict[str, float], dict[str, dict[ImageId, float]]]: ...


def oracle_scores(
    references: Mapping[ImageId, Sequence[str]],
    candidates: Mapping[ImageId, Sequence[str]],
    metrics: Sequence[str] | None = None,
    *,
    per_image: bool = False,
    tokenize: bool = True,
    progress: bool | None = None,
) -> dict[str, float] | tuple[dict[str, float], dict[str, dict[ImageId, float]]]:
    r"""Oracle caption scores (the paper's Table 1): per image and metric, the best candidate.

    For each candidate index :math:`i` the COCO scorer runs over all images that have an
    :math:`i`-th candidate, giving per-image scores :math:`s_m(x, i)`; then

    .. math:: \mathrm{oracle}_m = \frac{1}{|X|} \sum_{x \in X} \max_i s_m(x, i)

    separately for each metric :math:`m` (BLEU uses per-sentence scores). Per-image BLEU,
    METEOR, ROUGE-L and SPICE do not depend on the other images, so they are computed in one
    scorer run over all (image, index) pairs; CIDEr-D does (document frequencies over the
    images scored together), so it runs once per index. Lists may differ in length; an index
    then covers only the images that have it.

    Arguments:
        references: Image id -> reference captions.
        candidates: Image id -> candidate captions (e.g. 100 samples); same ids.
        metrics: As in :func:`caption_scores`.
        per_image: Also return ``{metric: {image id: best score}}``.
        tokenize: PTB-tokenize first (one Java run for everything).
        progress: Show a progress bar over indices (None: only on a terminal).

    Example:
        >>> refs = {1: ["a red circle"], 2: ["a blue square"]}
        >>> cands = {1: ["a blue square", "a red circle"], 2: ["a blue square", "a red circle"]}
        >>> oracle_scores(refs, cands, metrics=["Bleu_1"])["Bleu_1"]
        0.99...
    """
    _check_references(references)
    _check_ids(references, candidates)
    _check_candidate_lists(candidates)
    keys = _resolve_metrics(metrics)
    ids = list(references)
    refs = [list(references[i]) for i in ids]
    cands = [list(candidates[i]) for i in ids]
    n_images = len(ids)
    best = {k: np.full(n_images, -np.inf) for k in keys}
    with _scorer(keys) as scorer:
        if tokenize:
            refs, cands = _tokenize_nested(refs, cands)
        if "CIDEr" in keys:
            n_max = max(len(c) for c in cands)
            for i in tqdm(range(n_max), desc="oracle CIDEr", disable=_tqdm_disable(progress)):
                js = [j for j in range(n_images) if len(cands[j]) > i]
                _, per = scorer.score([refs[j] for j in js], [cands[j][i] for j in js], ["CIDEr"])
                np.maximum.at(best["CIDEr"], np.asarray(js, dtype=np.int64), per["CIDEr"])
        independent = [k for k in keys if k != "CIDEr"]
        if independent:  # METEOR last, see _CocoScorer.score
            owner = np.asarray([j for j, c in enumerate(cands) for _ in c], dtype=np.int64)
            _, per = scorer.score([refs[j] for j in owner], [s for c in cands for s in c], independent)
            for k in independent:
                np.maximum.at(best[k], owner, per[k])
    corpus = {k: float(v.mean()) for k, v in best.items()}
    if not per_image:
        return corpus
    return corpus, {k: {i: float(v[j]) for j, i in enumerate(ids)} for k, v in best.items()}
