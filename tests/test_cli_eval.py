r"""``flowkit caption | synthesize | evaluate`` over a tiny checkpoint made by ``flowkit train``."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import flowkit.data.judges as judges
from flowkit.cli import build_parser, main

pytestmark = pytest.mark.filterwarnings("ignore:SPICE is left out")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "--data", "shapes", "--sizes", "train=30,val=3,test=3", "--steps", "3", "--batch-size", "8"]
    assert main(argv + ["--out", str(out), "--no-progress", "--log", "csv"]) == 0
    return out


@pytest.fixture
def quick_judge(monkeypatch):
    r"""A judge trained in a second instead of the cached full one (about a minute)."""
    clf = judges.train_attribute_classifier(judges.ClassifierConfig(train_size=128, test_size=16, epochs=1, batch_size=32))
    monkeypatch.setattr(judges, "get_attribute_classifier", lambda *a, **k: clf)
    return clf


def test_help_explains_every_option():
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("caption", "synthesize", "evaluate"):
        sub = subs.choices[name]
        assert sub.description
        for action in sub._actions:
            assert action.help, f"flowkit {name} {action.option_strings} has no help"
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--help"])
    assert e.value.code == 0


def test_caption(run_dir, tmp_path, capsys):
    out = tmp_path / "caps.json"
    assert main(["caption", "--checkpoint", str(run_dir), "--num-samples", "3", "--limit", "2", "--out", str(out), "--no-progress"]) == 0
    caps = json.loads(out.read_text())
    assert len(caps) == 2 and all(len(v) == 3 and all(isinstance(c, str) for c in v) for v in caps.values())
    printed = capsys.readouterr().out
    assert "wrote 2 images x 3 captions" in printed and "reference:" in printed
    # one image by id (found in its split), beam decoding, default output file in the run folder
    first = next(iter(caps))
    assert (
        main(
            [
                "caption",
                "--checkpoint",
                str(run_dir),
                "--images",
                first,
                "--num-samples",
                "2",
                "--method",
                "beam",
                "--no-progress",
                "--show",
                "0",
            ]
        )
        == 0
    )
    assert list(json.loads((run_dir / "captions_test.json").read_text())) == [first]


def test_synthesize(run_dir, tmp_path, capsys):
    png, pt = tmp_path / "grid.png", tmp_path / "images.pt"
    argv = ["synthesize", "--checkpoint", str(run_dir), "--caption", "a red circle", "--caption", "a blue zebra"]
    assert main(argv + ["--num-samples", "2", "--out", str(png), "--save-tensor", str(pt)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    images = torch.load(pt, weights_only=True)
    assert images.shape == (2, 2, 3, 64, 64) and 0 <= images.min() and images.max() <= 1
    assert "zebra" in capsys.readouterr().err  # out-of-vocabulary words are named


def test_evaluate_writes_the_report(run_dir, tmp_path, quick_judge, capsys):
    report = tmp_path / "report"
    argv = ["evaluate", "--checkpoint", str(run_dir), "--limit", "2", "--num-samples", "3", "--k", "2", "--m", "5"]
    argv += [
        "--t2i-captions",
        "2",
        "--t2i-samples",
        "2",
        "--ivom-restarts",
        "1",
        "--ivom-steps",
        "1",
        "--out",
        str(report),
        "--no-progress",
        "--beam-width",
        "3",
    ]
    assert main(argv) == 0
    res = json.loads((report / "results.json").read_text())
    assert res["captioning"]["num_images"] == 2 and res["captioning"]["num_samples"] == 3
    # --beam-width alone asks for beams (the run's preset, small, decodes greedily)
    assert (res["captioning"]["method"], res["captioning"]["beam_width"]) == ("beam", 3)
    assert {"oracle", "consensus", "diversity", "ground_truth"} <= set(res["captioning"])
    assert {"inception_score", "ivom", "diversity", "caption_accuracy", "free_attribute_spread"} <= set(res["text_to_image"])
    assert res["meta"]["training steps"] == 3
    md = (report / "report.md").read_text()
    assert "Table 1" in md and "Table 6" in md and "3 sampled captions per image" in md
    assert (report / "captions.png").is_file() and (report / "text_to_image.png").is_file()
    assert "| oracle (3 samples) |" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["caption"], ["synthesize", "--caption", "a red circle"], ["evaluate"]])
def test_missing_or_invalid_checkpoint(command, tmp_path, capsys):
    assert main([command[0], "--checkpoint", str(tmp_path / "nowhere"), *command[1:]]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main([command[0], "--checkpoint", str(tmp_path), *command[1:]]) == 1
    err = capsys.readouterr().err
    assert f"flowkit {command[0]}: error:" in err and "corrupt" in err
