"""The engine knows no model: a plain Flow trained with a density step, exact resume, the step
protocol's errors, and the layering (the engine imports no model, the model's step no engine)."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import flowkit
from flowkit.recipes import DensityStep, train_flow
from flowkit.training import NonFiniteLossError, Trainer, TrainSettings, load_checkpoint, read_csv_log, seed_everything

ROOT = Path(__file__).resolve().parents[1] / "flowkit"


def banana(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    a = 1.5 * torch.randn(n, generator=g)
    b = 0.5 * a**2 - 1.0 + 0.3 * torch.randn(n, generator=g)
    return [{"x": v} for v in torch.stack([a, b], dim=1)]


def _flow() -> flowkit.Flow:
    seed_everything(0)
    return flowkit.glow(2, 0, num_layers=4, hidden_features=32)  # ActNorm: a data-dependent init


def _settings(**kw) -> TrainSettings:
    return TrainSettings(**{"steps": 300, "batch_size": 64, "seed": 1, "progress": False, "device": "cpu", "log": "csv", **kw})


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_flow_trained_by_the_engine_lowers_its_nll(tmp_path):
    test = torch.stack([d["x"] for d in banana(2000, seed=99)])
    trainer = train_flow(_flow(), banana(1024, seed=0), _settings(), out=tmp_path, lr=3e-3)
    rows = read_csv_log(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 301)) and set(rows[0]) == {"step", "loss", "lr", "time"}
    first, last = np.mean([r["loss"] for r in rows[:20]]), np.mean([r["loss"] for r in rows[-20:]])
    assert last < first - 0.5, (first, last)
    flow = trainer.module.eval()
    with torch.no_grad():
        nll = float(-flow.log_prob(test).mean())
        gauss = float(-torch.distributions.MultivariateNormal(test.mean(0), torch.cov(test.T)).log_prob(test).mean())
    assert nll < gauss - 0.1, (nll, gauss)  # better than the best Gaussian: the banana's bend is learned
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["step"] == 300 and ckpt["config"] == {} and ckpt["optimizer"]["param_groups"][0]["name"] == "flow"


def test_flow_resume_is_bit_exact(tmp_path):
    data = banana(200, seed=0)  # 3 batches of 64 per epoch: both runs cross epochs mid-way
    straight = train_flow(_flow(), data, _settings(steps=10, lr_schedule="cosine"), out=tmp_path / "a", lr=3e-3)
    first = Trainer(_flow(), data, _settings(steps=10, lr_schedule="cosine"), step=DensityStep(3e-3), out=tmp_path / "b")
    first.fit(steps=4)  # a run of 10 stopped after step 4: only its checkpoint is left
    assert load_checkpoint(tmp_path / "b")["data"] == {"epoch": 1, "batch": 1, "batches_per_epoch": 3, "dataset_size": 200}
    torch.manual_seed(12345), np.random.seed(7), random.seed(7)  # a new process' RNGs
    resumed = train_flow(_flow(), data, _settings(steps=10, lr_schedule="cosine"), out=tmp_path / "b", resume=tmp_path / "b", lr=3e-3)
    assert resumed.step == 10 and resumed.resumed_from == 4
    _same(straight.module.state_dict(), resumed.module.state_dict())
    _same(straight.module.state_dict(), load_checkpoint(tmp_path / "b")["model"])
    a, b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(v, b[i][k]) for i in a for k, v in a[i].items())
    assert [r["loss"] for r in read_csv_log(tmp_path / "a")] == [r["loss"] for r in read_csv_log(tmp_path / "b")]


def test_a_plain_function_step_trains_every_parameter_and_checks_its_output(tmp_path):
    data = [{"x": torch.randn(3), "y": torch.randn(1)} for _ in range(16)]

    def mse(model, batch):
        return {"loss": (model(batch["x"]) - batch["y"]).pow(2).mean(), "scale": batch["x"].abs().mean()}

    seed_everything(0)
    trainer = Trainer(torch.nn.Linear(3, 1), data, _settings(steps=3, batch_size=8), step=mse)
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["all"]
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-3
    assert set(trainer.fit()) == {"loss", "scale"}

    bad = Trainer(torch.nn.Linear(3, 1), data, _settings(steps=1, batch_size=8), step=lambda m, b: m(b["x"]).sum())
    with pytest.raises(TypeError, match="the step must return a dict with a scalar 'loss'"):
        bad.fit()
    nan = Trainer(torch.nn.Linear(3, 1), data, _settings(steps=1, batch_size=8), step=lambda m, b: {"loss": m(b["x"]).sum() * float("nan")})
    with pytest.raises(NonFiniteLossError, match="'loss' at step 1"):
        nan.fit()
    with pytest.raises(TypeError, match="Trainer needs step=.*DensityStep"):
        Trainer(torch.nn.Linear(3, 1), data, _settings())
    pairs = [(d["x"], d["y"]) for d in data]
    with pytest.raises(TypeError, match="dataset items must be dicts"):
        Trainer(torch.nn.Linear(3, 1), pairs, _settings(steps=1, batch_size=8), step=mse).fit()


def test_entries_the_step_never_reads_are_not_moved():
    from flowkit.training.trainer import _DeviceBatch

    batch = _DeviceBatch({"x": torch.zeros(2), "image_id": torch.arange(2)}, torch.device("meta"))
    assert batch["x"].device.type == "meta" and batch["x"] is batch["x"]  # moved once, then kept
    assert batch._data["image_id"].device.type == "cpu"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "where,forbidden",
    [
        ("training", ("flowkit.models", "flowkit.recipes", "flowkit.evaluation", "flowkit.commands", "flowkit.data")),
        ("models/lnfmm/step.py", ("flowkit.training", "flowkit.recipes")),
        ("models/lnfmm/pretraining.py", ("flowkit.training", "flowkit.recipes")),
        ("io.py", ("flowkit",)),
        ("evaluation", ("flowkit.training", "flowkit.recipes", "flowkit.commands")),
        ("data", ("flowkit.training", "flowkit.models", "flowkit.evaluation")),
    ],
)
def test_layering(where, forbidden):
    # every import, also those inside functions: the engine knows no model, io knows nothing above it
    root = ROOT / where
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    bad = [f"{f.relative_to(ROOT)}: {m}" for f in files for m in _imports(f) if m.startswith(forbidden)]
    assert not bad
