"""``flowkit train`` end to end at a tiny size, exact resume through the CLI, errors, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from flowkit.cli import build_parser, main
from flowkit.commands.train import parse_overrides
from flowkit.training import load_checkpoint, read_csv_log

TINY = [
    "shared_dim=8",
    "image_specific_dim=4",
    "text_specific_dim=4",
    "image_encoder_hidden=16",
    "conv_encoder_channels=4",
    "word_embedding_dim=8",
    "text_encoder_hidden=8",
    "text_encoder_layers=1",
    "decoder_hidden=16",
    "decoder_embedding_dim=8",
    "generator_channels=4",
    "discriminator_channels=4",
    "fs_layers=2",
    "fs_hidden=16",
    "fv_layers=2",
    "fv_hidden=16",
    "ft_layers=2",
    "ft_hidden=16",
    "image_encoder_init_steps=10",
]


def _args(out, steps, *extra):
    return [
        "train",
        "--data",
        "shapes",
        "--preset",
        "small",
        "--steps",
        str(steps),
        "--seed",
        "1",
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--sizes",
        "train=2,val=1,test=1",
        "--max-len",
        "12",
        "--log",
        "csv",
        "--no-progress",
        "--checkpoint-every",
        "2",
        "--set",
        *TINY,
        *extra,
    ]


def test_train_end_to_end_and_exact_resume(tmp_path, capsys):
    from flowkit.data import Vocabulary
    from flowkit.models import LNFMMConfig

    assert main(_args(tmp_path / "a", 5)) == 0
    assert "checkpoint.pt at step 5" in capsys.readouterr().out
    run = tmp_path / "a"
    for name in ("checkpoint.pt", "config.json", "vocab.json", "log.csv", "training.json"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 5
    config = LNFMMConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert config.to_dict() == ckpt["config"]
    assert config.flows.fs_layers == 2 and config.shared_dim == 8 and config.max_caption_len == 12
    vocab = Vocabulary.from_dict(json.loads((run / "vocab.json").read_text()))
    assert len(vocab) == config.vocab_size and ckpt["vocab"] == vocab.to_dict()
    assert [r["step"] for r in read_csv_log(run)] == [1, 2, 3, 4, 5]
    assert ckpt["meta"]["data"]["sizes"] == {"train": 2, "val": 1, "test": 1}

    # 3 steps, then --resume with only the new step count: every other option comes from the
    # checkpoint, and the weights equal the straight run's bit for bit.
    assert main(_args(tmp_path / "b", 3)) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--steps", "5", "--no-progress", "--log", "csv"]) == 0
    resumed = load_checkpoint(tmp_path / "b")
    assert resumed["step"] == 5
    for k, v in ckpt["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert [r["step"] for r in read_csv_log(tmp_path / "b")] == [1, 2, 3, 4, 5]


def test_resume_errors_are_clear(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing"), "--steps", "2"]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint at" in err and "nothing" in err

    assert main(["train", "--data", "shapes"]) == 1
    assert "--out DIR is required" in capsys.readouterr().err

    assert main(_args(tmp_path / "a", 1)) == 0
    capsys.readouterr()
    assert main(_args(tmp_path / "a", 1)) == 1  # a fresh run would replace the checkpoint
    assert "already holds a checkpoint: pass --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "a"), "--steps", "2", "--set", *TINY, "fs_layers=3"]) == 1
    err = capsys.readouterr().err
    assert "config.flows.fs_layers: checkpoint 2, now 3" in err
    assert main(["train", "--resume", str(tmp_path / "a"), "--steps", "2", "--data-seed", "9"]) == 1
    assert "--data-seed: checkpoint 0, now 9" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "a"), "--steps", "2", "--batch-size", "2"]) == 1
    assert "batch_size: checkpoint 4, now 2" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"garbage")
    assert main(["train", "--resume", str(tmp_path / "bad"), "--steps", "2"]) == 1
    assert "corrupt or truncated" in capsys.readouterr().err


def test_parse_overrides_types_and_errors():
    from flowkit.models import LNFMMConfig

    got = parse_overrides(["fs_layers=6", "gan=true", "lr=1", "alignment=mse", "cross-condition=no"], LNFMMConfig)
    assert got == {"fs_layers": 6, "gan": True, "lr": 1.0, "alignment": "mse", "cross_condition": False}
    assert isinstance(got["lr"], float)
    with pytest.raises(ValueError, match="unknown config field; known fields: .*fs_layers"):
        parse_overrides(["fs_layerz=6"], LNFMMConfig)
    with pytest.raises(ValueError, match="expected a int"):
        parse_overrides(["fs_layers=six"], LNFMMConfig)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["fs_layers"], LNFMMConfig)


def test_parser_lists_train_and_rejects_bad_values(capsys):
    parser = build_parser()
    assert "train" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--labeled-fraction", "1.5", "--out", "x"])
    assert "must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--sizes", "train=2,bogus=1"])
    # the spelling that survives torchrun's parser
    assert parser.parse_args(["train", "--log-backend", "csv"]).log == "csv"


def test_python_m_flowkit_train_help():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "flowkit", "train", "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for option in (
        "--data",
        "--preset",
        "--steps",
        "--seed",
        "--out",
        "--resume",
        "--batch-size",
        "--lr",
        "--coco-root",
        "--features",
        "--labeled-fraction",
        "--log",
        "--checkpoint-every",
        "--device",
        "--set",
        "--amp",
    ):
        assert option in text, option
    assert "torchrun" in text and "weights_only=True" in text
