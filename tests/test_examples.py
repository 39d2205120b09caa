r"""End-to-end smoke runs of the examples, as a user runs them (a subprocess, ``--tiny``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THREADS = os.environ.get("FLOWKIT_TEST_THREADS", "2")


def _run(script: str, *args: str, cache: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLOWKIT_CACHE": str(cache), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(ROOT / "examples" / script), *args, "--threads", THREADS, "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cache)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_coco_caption_tiny(tmp_path):
    out = tmp_path / "out"
    proc = _run("coco_caption.py", "--tiny", "--out", str(out), cache=tmp_path)
    text = proc.stdout
    # the COCO-format export, read back through the COCO path
    root = tmp_path / "shapes_coco_120_8_8_seed0"
    assert (root / "annotations" / "captions_train.json").is_file() and (root / "dataset_coco.json").is_file()
    assert "loaded with pycocotools" in (out / "report" / "report.md").read_text()
    # the printed captions and metric tables
    assert "Diverse captions (10 samples per image" in text
    for row in (
        "| oracle (10 samples) |",
        "| consensus top-1 (of 10) |",
        "| Unique % | Novel | mBLEU-4 | Div-1 | Div-2 |",
        "accuracy (all 10)",
    ):
        assert row in text
    res = json.loads((out / "report" / "results.json").read_text())
    cap = res["captioning"]
    assert cap["num_images"] == 4 and cap["num_samples"] == 10
    assert 0 <= cap["ground_truth"]["accuracy"] <= 1 and 0 <= cap["oracle"]["CIDEr"]
    assert 0 <= cap["ground_truth"]["coverage"] <= 1
    assert (out / "run" / "checkpoint.pt").is_file() and (out / "report" / "captions.png").is_file()
    # the paper's route: features extracted once by the pre-trained trunk, read back by id
    assert len(list((root / "features").glob("shapes_trunk-*.npz"))) == 1
    assert "captioning recipe" in (out / "report" / "report.md").read_text()
    # the learning curve, the probes and the frontier
    assert (out / "run" / "validation.csv").read_text().startswith("step,accuracy,coverage,accuracy_t0,recon_own")
    assert set(res["probes"]) == {"code", "code_text_space", "caption_code", "features"}
    assert [p["label"] for p in res["frontier"]] == ["T=0", "T=0.25", "T=0.5", "T=0.75", "T=1"]
    assert (out / "report" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    # the run records its data: the CLI reloads it from the checkpoint alone
    env = {**os.environ, "FLOWKIT_CACHE": str(tmp_path)}
    cli = [
        sys.executable,
        "-m",
        "flowkit",
        "caption",
        "--checkpoint",
        str(out / "run"),
        "--limit",
        "1",
        "--num-samples",
        "2",
        "--no-progress",
    ]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 1 images x 2 captions" in proc.stdout


def test_coco_text_to_image_tiny(tmp_path):
    out = tmp_path / "out"
    proc = _run("coco_text_to_image.py", "--tiny", "--out", str(out), "--num-samples", "3", cache=tmp_path)
    assert (out / "text_to_image.png").read_bytes()[:4] == b"\x89PNG"
    assert "a red circle" in proc.stdout and "accuracy" in proc.stdout
    assert (out / "run" / "checkpoint.pt").is_file()


def test_custom_prior_tiny(tmp_path):
    proc = _run("custom_prior.py", "--tiny", "--out", str(tmp_path / "run"), cache=tmp_path)
    assert "f_t replaced: PiecewiseRationalQuadraticCouplingTransform" in proc.stdout
    assert "trained 10 steps" in proc.stdout and "distinct of 8" in proc.stdout
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


@pytest.mark.parametrize("script", ["coco_caption.py", "coco_text_to_image.py", "custom_prior.py"])
def test_example_help(script):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--tiny" in proc.stdout


def test_density_estimation_quick(tmp_path):
    png = tmp_path / "density.png"
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "density_estimation.py"),
        "--quick",
        "--plot",
        str(png),
        "--threads",
        THREADS,
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("nsf", "maf", "realnvp"):
        assert f"| {name} |" in proc.stdout
    assert "test NLL of the true density" in proc.stdout and png.read_bytes()[:4] == b"\x89PNG"
