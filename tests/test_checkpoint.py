"""Checkpoints: atomic writes, weights_only loading, clear errors, RNG state round trips."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

import flowkit
from flowkit.training import (
    CheckpointError,
    Trainer,
    TrainSettings,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from flowkit.training import checkpoint as ckpt_module


def _state(step: int = 1) -> dict:
    net = nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    return {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "config": {"a": 1}}


def test_roundtrip_loads_with_weights_only(tmp_path):
    state = _state(7)
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pt", state)
    raw = torch.load(path, weights_only=True)  # what users call, without flowkit
    assert raw["step"] == 7
    loaded = load_checkpoint(tmp_path / "run")  # a run folder works too
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert loaded["config"] == {"a": 1}


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state(1))
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")  # a partial write, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]  # no temporary file left


def test_interrupt_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state(1))

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"x" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_module.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _state(2))
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere" / "checkpoint.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        load_checkpoint(tmp_path)  # a folder without a checkpoint


@pytest.mark.parametrize("keep", [0, 0.5])
def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path, keep):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_garbage_file_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_not_a_flowkit_checkpoint_names_missing_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"missing key\(s\) 'model', 'optimizer', 'step', 'config'"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a flowkit checkpoint"):
        load_checkpoint(path)


class _Opaque:
    pass


def test_arbitrary_objects_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({**_state(), "extra": _Opaque()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    seed_everything(3)
    random.gauss(0, 1)  # Python's cached gaussian is part of the state
    state = get_rng_state()
    expected = (torch.rand(4), np.random.rand(3), random.random(), random.gauss(0, 1))
    save_checkpoint(tmp_path / "c.pt", {**_state(), "rng": state})
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(4), np.random.rand(3), random.random(), random.gauss(0, 1))
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2:] == got[2:]
    assert state["torch"].dtype == torch.uint8


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, images, captions):
        loss = self.lin(images).pow(2).mean()
        return {"loss": loss, "rec": loss.detach()}


def _tiny_step(model, batch):
    return model(batch["image"], batch["caption"])  # every parameter in one group (the default)


class _Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randn(4, generator=g), "caption": torch.full((3,), i), "image_id": i}


def test_trainer_checkpoint_contents(tmp_path):
    seed_everything(0)
    trainer = Trainer(
        _Tiny(),
        _Pairs(),
        TrainSettings(steps=3, batch_size=2, progress=False, device="cpu"),
        step=_tiny_step,
        out=tmp_path,
        config={"width": 4},
        vocab={"format": "flowkit.vocab/1", "itos": ["<pad>", "<start>", "<end>", "<unk>", "a"]},
    )
    trainer.fit()
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key in ("model", "optimizer", "step", "config", "vocab", "rng", "data", "flowkit_version", "training"):
        assert key in raw, key
    assert raw["step"] == 3
    assert raw["flowkit_version"] == flowkit.__version__
    assert raw["config"] == {"width": 4}
    assert raw["data"] == {"epoch": 1, "batch": 0, "batches_per_epoch": 3, "dataset_size": 6}
    assert raw["rng"][0]["torch"].dtype == torch.uint8
    assert json.loads((tmp_path / "config.json").read_text()) == {"width": 4}
    assert json.loads((tmp_path / "vocab.json").read_text())["itos"][-1] == "a"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_unloadable_entries_are_refused_before_writing(tmp_path):
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(TypeError, match=r"state\['extra'\]\[0\].*weights_only"):
        save_checkpoint(path, {**_state(), "extra": [_Opaque()]})
    with pytest.raises(TypeError, match="torch_version"):
        save_checkpoint(path, {**_state(), "torch_version": torch.__version__})  # a str subclass
    assert not path.exists() and os.listdir(tmp_path) == []
