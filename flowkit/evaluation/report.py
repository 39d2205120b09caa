r"""The evaluation report: Markdown tables mirroring the paper's Tables 1, 2, 3 and 6, the same
numbers as JSON, the sampled captions, and PNG figures.

.. code-block:: python

    from flowkit.evaluation import write_report

    paths = write_report({"captioning": cap, "text_to_image": t2i, "meta": {...}}, "runs/a/report")
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowkit.evaluation.results import JsonResult, to_jsonable

__all__ = ["write_report", "format_captioning_table", "format_text_to_image_table", "run_facts", "to_jsonable"]

_LABELS = {
    "Bleu_1": "B-1",
    "Bleu_2": "B-2",
    "Bleu_3": "B-3",
    "Bleu_4": "B-4",
    "METEOR": "M",
    "ROUGE_L": "R",
    "CIDEr": "C",
    "SPICE": "S",
}
#: The paper's COCO numbers (SPEC section 4), shown for scale only: other data, other model size.
PAPER_COCO = {
    "oracle": {"Bleu_4": 0.597, "CIDEr": 1.705},
    "consensus": {"Bleu_4": 0.318, "CIDEr": 1.055},
    "diversity": {"unique": 97.0, "novel": 4741, "mbleu4": 0.60, "div1": 0.37, "div2": 0.51},
    "text_to_image": {"inception_score": 12.10, "ivom": 0.430, "lpips": 0.481},
}


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{x:.{digits}f}"


def _metric_keys(*tables: Mapping[str, Any]) -> list[str]:
    keys = [k for k in _LABELS if any(k in t for t in tables)]
    return keys


def _decoding(cap: Mapping[str, Any]) -> str:
    method = cap.get("method", "greedy")
    return f"beam-{cap.get('beam_width', 2)}" if method == "beam" else method


def format_captioning_table(cap: Mapping[str, Any]) -> str:
    r"""Markdown of Tables 1, 2 and 3 (and the ground-truth judges) from :func:`evaluate_captioning`'s result."""
    oracle, consensus = cap["oracle"], cap["consensus"]
    keys = _metric_keys(oracle, consensus)
    n, s = cap["num_images"], cap["num_samples"]
    lines = [
        f"Split `{cap['split']}`: {n} images x {s} sampled captions per image "
        f"({_decoding(cap)} decoding, temperature {cap.get('temperature', 1.0)}).",
        "",
        f"**Table 1 (oracle)** best of {s} per image and metric; **Table 2 (consensus re-ranking)** top-1 of {s} after "
        f"re-ranking with k={cap['consensus_k']}, m={cap['consensus_m']}; k-NN features: {cap['rerank_features_description']}.",
        "",
        "| | " + " | ".join(_LABELS[k] for k in keys) + " |",
        "|---|" + "---|" * len(keys),
        f"| oracle ({s} samples) | " + " | ".join(_f(oracle.get(k)) for k in keys) + " |",
        f"| consensus top-1 (of {s}) | " + " | ".join(_f(consensus.get(k)) for k in keys) + " |",
        "",
        f"**Table 3 (diversity)** of the best {cap['best_n']} per image after consensus re-ranking "
        "(Unique %, Novel = distinct captions not among the training captions, mBLEU-4: lower is more diverse).",
        "",
        "| Unique % | Novel | mBLEU-4 | Div-1 | Div-2 |",
        "|---|---|---|---|---|",
    ]
    d = cap["diversity"]
    lines.append(f"| {_f(d.get('unique'), 1)} | {_f(d.get('novel'))} | {_f(d.get('mbleu4'))} | {_f(d.get('div1'))} | {_f(d.get('div2'))} |")
    gt = cap.get("ground_truth")
    if gt:
        lines += [
            "",
            f"**Ground truth (exact judges of the shapes grammar)**: accuracy = fraction of all {s} sampled captions "
            f"true of their image; coverage = mean fraction of an image's true caption meanings reached by its {s} samples "
            f"(the dataset's own 5 references reach {_f(gt.get('reference_coverage'))}).",
            "",
            f"| accuracy (all {s}) | coverage (all {s}) | top-1 accuracy | best-{cap['best_n']} accuracy | best-{cap['best_n']} coverage |",
            "|---|---|---|---|---|",
            f"| {_f(gt.get('accuracy'))} | {_f(gt.get('coverage'))} | {_f(gt.get('top1_accuracy'))} | {_f(gt.get('best_n_accuracy'))} | {_f(gt.get('best_n_coverage'))} |",
        ]
    return "\n".join(lines)


def format_text_to_image_table(t2i: Mapping[str, Any]) -> str:
    r"""Markdown of Table 6 (and the classifier judges) from :func:`evaluate_text_to_image`'s result."""
    n, s = t2i["num_captions"], t2i["num_samples"]
    div_name = "LPIPS" if t2i.get("lpips") is not None else "pixel diversity (not LPIPS)"
    lines = [
        f"{n} captions x {s} generated images per caption (temperature {t2i.get('temperature', 1.0)}).",
        "",
        f"| IS (attribute classifier) | IvOM (MSE, [0,1] pixels) | {div_name} | caption accuracy | reference accuracy | free-attribute spread |",
        "|---|---|---|---|---|---|",
        f"| {_f(t2i.get('inception_score'), 2)} ± {_f(t2i.get('inception_score_std'), 2)} | {_f(t2i.get('ivom'), 4)} | {_f(t2i.get('diversity'))} | "
        f"{_f(t2i.get('caption_accuracy'))} | {_f(t2i.get('reference_accuracy'))} | {_f(t2i.get('free_attribute_spread'))} |",
        "",
        f"IS network: {t2i.get('inception_network', 'n/a')}. IvOM optimises "
        + str(t2i.get("ivom_variable", "n/a"))
        + f" ({t2i.get('ivom_restarts', 'n/a')} restarts x {t2i.get('ivom_steps', 'n/a')} Adam steps) "
        "to reconstruct the held-out image the caption came from. Caption accuracy: fraction of generated images whose scene, "
        "as the attribute classifier reads it, makes the caption true (reference accuracy: the same for the real held-out images). "
        "Free-attribute spread: normalized entropy (0..1) of the attributes each caption leaves free, over its correct images.",
    ]
    if t2i.get("lpips") is None:
        lines += [
            "",
            f"Diversity is `pixel_diversity` (RMS pixel distance between two samples of a caption), not LPIPS: value {_f(t2i.get('pixel_diversity'))}.",
        ]
    for note in t2i.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines)


def run_facts(checkpoint: str | os.PathLike[str], ckpt: Mapping[str, Any], device: str, seconds: float) -> dict[str, Any]:
    r"""The ``meta`` section of a report: which run, its training steps, preset and data, the
    machine and the evaluation time.

    Arguments:
        checkpoint: The run folder or checkpoint evaluated, as given.
        ckpt: Its checkpoint dict (with ``_data_options`` when loaded by :func:`flowkit.evaluation.load_run`).
        device: The device the evaluation ran on.
        seconds: The evaluation time.

    Example:
        >>> run_facts("runs/a", {"step": 10, "config": {"notes": {"preset": "small"}}}, "cpu", 1.23)["preset"]
        'small'
    """
    import torch

    opts = ckpt.get("_data_options", {})
    src = opts.get("data", "?")
    where = opts.get("coco_root") if src == "coco" else f"sizes {opts.get('sizes') or 'default'}, seed {opts.get('data_seed', 0)}"
    return {
        "checkpoint": str(checkpoint),
        "training steps": ckpt.get("step"),
        "preset": (ckpt.get("config", {}).get("notes") or {}).get("preset", "custom"),
        "data": f"{src} ({where})",
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, device {device}",
        "evaluation seconds": round(seconds, 1),
    }


def _extra_sections(results: Mapping[str, Any], out: Path) -> list[str]:
    r"""Markdown of the optional ``probes`` ({code: {attribute: {accuracy, chance}}}) and
    ``frontier`` ([{label, accuracy, coverage, distinct}]) parts, with ``frontier.png`` if present."""
    md: list[str] = []
    probes = results.get("probes")
    if probes:
        attrs = list(next(iter(probes.values())))
        md += [
            "## Linear probes (test accuracy; best constant guess in brackets)",
            "",
            "| code | " + " | ".join(attrs) + " |",
            "|---" * (len(attrs) + 1) + "|",
        ]
        for name, table in probes.items():
            md.append(
                f"| {name} | "
                + " | ".join(f"{table[a]['accuracy']:.2f} ({table[a]['chance']:.2f})" if a in table else "-" for a in attrs)
                + " |"
            )
        md.append("")
    frontier = results.get("frontier")
    if frontier:
        md += [
            "## Accuracy against coverage over sampling temperatures",
            "",
            "| setting | accuracy | coverage | distinct per image |",
            "|---|---|---|---|",
        ]
        md += [f"| {p['label']} | {p['accuracy']:.3f} | {p['coverage']:.4f} | {p['distinct']:.1f} |" for p in frontier]
        md.append("")
        if (out / "frontier.png").is_file():
            md += ["![accuracy against coverage](frontier.png)", ""]
    return md


_PAPER_SCALE = [
    "## For scale: the paper's COCO numbers (not comparable: other data and model size)",
    "",
    "Oracle B-4 0.597, C 1.705; consensus B-4 0.318, C 1.055; Unique 97.0 %, Novel 4741, mBLEU-4 0.60, Div-1 0.37, "
    "Div-2 0.51; text-to-image IS 12.10 (Inception), IvOM 0.430, LPIPS 0.481.",
    "",
]


def _as_json(part: Any) -> dict[str, Any]:
    r"""A part of the results as a JSON dict: a result's ``to_json()``, a mapping as it is, {} for None."""
    if part is None:
        return {}
    return part.to_json() if isinstance(part, JsonResult) else dict(part)


def _table_sections(title: str, meta: Mapping[str, Any], cap: Mapping[str, Any], t2i: Mapping[str, Any]) -> list[str]:
    r"""The report's title, its ``meta`` facts and the Markdown of the captioning and text-to-image tables."""
    md = [f"# {title}", ""]
    if meta:
        md += [f"- **{k}**: {v}" for k, v in meta.items()] + [""]
    if cap:
        md += ["## Captioning (Tables 1, 2, 3)", "", format_captioning_table(cap), ""]
        if cap.get("spice_note"):
            md += [cap["spice_note"], ""]
    if t2i:
        md += ["## Text-to-image (Table 6)", "", format_text_to_image_table(t2i), ""]
    return md


def _figures(cap: Any, t2i: Any, out: Path) -> tuple[list[str], dict[str, Path]]:
    r"""Draws the figures of typed results (plain dicts have none): the Markdown and ``{name: path}``."""
    from flowkit.evaluation.captioning import CaptioningResult
    from flowkit.evaluation.plots import plot_captioning_result, plot_text_to_image_result
    from flowkit.evaluation.text_to_image import TextToImageResult

    paths: dict[str, Path] = {}
    md: list[str] = []
    if isinstance(cap, CaptioningResult) and (path := plot_captioning_result(cap, out / "captions.png")) is not None:
        paths["captions_figure"] = path
        md += [f"![sampled captions]({path.name})", ""]
    if isinstance(t2i, TextToImageResult) and (path := plot_text_to_image_result(t2i, out / "text_to_image.png")) is not None:
        paths["images_figure"] = path
        md += [f"![text-to-image samples]({path.name})", ""]
    return (["## Figures", ""] + md if md else []), paths


def _write_json(
    results: Mapping[str, Any], meta: Mapping[str, Any], cap: Mapping[str, Any], t2i: Mapping[str, Any], out: Path
) -> dict[str, Path]:
    r"""Writes ``results.json`` (``captions.json`` too, with the captions of ``cap``)."""
    from flowkit.io import atomic_write_text

    paths: dict[str, Path] = {}
    payload: dict[str, Any] = {"meta": meta}
    if cap:
        payload["captioning"] = {k: v for k, v in cap.items() if k not in ("samples", "ranked", "references")}
        samples = {"samples": cap.get("samples", {}), "ranked_best_n": cap.get("ranked", {}), "references": cap.get("references", {})}
        paths["captions"] = out / "captions.json"
        atomic_write_text(paths["captions"], json.dumps(to_jsonable(samples), indent=1) + "\n")
    if t2i:
        payload["text_to_image"] = t2i
    payload.update({k: results[k] for k in ("probes", "frontier") if k in results})
    paths["json"] = out / "results.json"
    atomic_write_text(paths["json"], json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return paths


def write_report(
    results: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    title: str = "LNFMM evaluation",
    figures: bool = True,
) -> dict[str, Path]:
    r"""Writes ``report.md``, ``results.json``, ``captions.json`` and the figures to ``out_dir``.

    Arguments:
        results: ``{"captioning": evaluate_captioning(...), "text_to_image":
            evaluate_text_to_image(...), "meta": {...}}``; each part optional, a result or its
            ``to_json()`` dict (which has no figures). ``meta`` (free facts: checkpoint, data,
            steps, machine) is listed at the top of the report; ``probes`` and ``frontier``
            get their own sections.
        out_dir: The output folder (created).
        title: The report's title.
        figures: Save the PNG figures (``captions.png``: images beside their best re-ranked
            captions; ``text_to_image.png``: a grid of images per caption).

    Returns:
        ``{name: path}`` of the files written (``markdown``, ``json``, ``captions``,
        ``captions_figure``, ``images_figure``).

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> paths = write_report({"meta": {"checkpoint": "runs/a"}}, out)
        >>> sorted(paths), json.loads(paths["json"].read_text())
        (['json', 'markdown'], {'meta': {'checkpoint': 'runs/a'}})
    """
    from flowkit.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cap, t2i = _as_json(results.get("captioning")), _as_json(results.get("text_to_image"))
    meta = results.get("meta") or {}
    md = _table_sections(title, meta, cap, t2i) + _extra_sections(results, out) + _PAPER_SCALE
    paths: dict[str, Path] = {}
    if figures:
        figure_md, paths = _figures(results.get("captioning"), results.get("text_to_image"), out)
        md += figure_md
    paths.update(_write_json(results, meta, cap, t2i, out))
    paths["markdown"] = out / "report.md"
    atomic_write_text(paths["markdown"], "\n".join(md))
    return paths
