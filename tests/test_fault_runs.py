"""Fault injection on runs: training processes killed with SIGKILL at several points (between
steps, mid-checkpoint, before the first checkpoint) and resumed to bit-identical weights;
concurrent runs on one folder; resume options; output paths pointing at checkpoints; a full
disk; a corrupt cache; a diverging run (issue 11)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flowkit.cli import main
from flowkit.training import load_checkpoint, read_csv_log
from flowkit.training.safety import LOCK_NAME, RunLock, RunLockedError

sys.path.insert(0, str(Path(__file__).parent))
from test_cli_train import _args  # noqa: E402

RUNNER = Path(__file__).with_name("fault_runner.py")
ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


def _spawn(args: list[str], fault: str, marker: Path) -> subprocess.Popen:
    env = {**os.environ, "FK_FAULT": fault, "FK_MARKER": str(marker), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(RUNNER), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_at(proc: subprocess.Popen, marker: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended before the fault point: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the child never reached the fault point")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a), load_checkpoint(b)
    assert wa["step"] == wb["step"] == STEPS
    for k, v in wa["model"].items():
        assert torch.equal(v, wb["model"][k]), k


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(_args(out, STEPS)) == 0
    return out


@pytest.mark.parametrize("fault", ["step:3", "save:2", "step:1"])
def test_killed_run_resumes_bit_identical(tmp_path, straight, fault):
    out, marker = tmp_path / "run", tmp_path / "marker"
    _kill_at(_spawn(_args(out, STEPS), fault, marker), marker)
    assert (out / LOCK_NAME).exists()  # left behind by the killed process: stale now
    if fault == "step:1":
        # killed before its first checkpoint: the same command starts over (stale lock taken over)
        assert not (out / "checkpoint.pt").exists()
        with pytest.warns(UserWarning, match="removed the stale lock"):
            assert main(_args(out, STEPS)) == 0
    else:
        ckpt = load_checkpoint(out)  # the last good checkpoint is intact
        assert ckpt["step"] == 2
        if fault.startswith("save"):
            assert list(out.glob(".checkpoint.pt.*.tmp")), "the killed save left its temp file"
        with pytest.warns(UserWarning, match="removed the stale lock"):
            assert main(["train", "--resume", str(out), "--steps", str(STEPS), "--no-progress"]) == 0
    _same_weights(straight, out)
    assert [r["step"] for r in read_csv_log(out)] == list(range(1, STEPS + 1))
    assert not list(out.glob(".*.tmp")) and not (out / LOCK_NAME).exists()


def test_two_runs_on_one_folder(tmp_path):
    out = tmp_path / "run"
    procs = [_spawn(_args(out, 4), "slow", tmp_path / "unused") for _ in range(2)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 1], results
    loser = next(r for r in results if r[2] == 1)
    assert "is in use by a training process: pid" in loser[1]
    ckpt = load_checkpoint(out)
    settings = json.loads((out / "training.json").read_text())
    assert ckpt["step"] == 4 and settings["steps"] == 4
    assert [r["step"] for r in read_csv_log(out)] == [1, 2, 3, 4]
    assert not (out / LOCK_NAME).exists()


def test_lock_is_exclusive_reentrant_and_stale_after_a_crash(tmp_path):
    with RunLock(tmp_path):
        with RunLock(tmp_path):  # the same process: re-entrant
            pass
        assert (tmp_path / LOCK_NAME).exists()
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and {"host", "time", "command"} <= set(info)
        child = subprocess.run(
            [sys.executable, "-c", f"from flowkit.training.safety import RunLock; RunLock({str(tmp_path)!r}).acquire()"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
        )
        assert child.returncode == 1 and "RunLockedError" in child.stderr and "remove" in child.stderr
    assert not (tmp_path / LOCK_NAME).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename, "time": 0}))
    lock = RunLock(tmp_path)
    with pytest.warns(UserWarning, match="stale lock"):
        lock.acquire()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": 0}))
    with pytest.raises(RunLockedError, match="another host"):
        RunLock(tmp_path).acquire()


def test_resume_keeps_every_option(tmp_path):
    # Case 1: a resume wrote checkpoint_every: 500 and log: both.
    out = tmp_path / "run"
    assert main(_args(out, 2, "--checkpoint-every", "1", "--log-every", "2")) == 0
    assert main(["train", "--resume", str(out), "--steps", "3", "--no-progress"]) == 0
    saved = json.loads((out / "training.json").read_text())
    assert (saved["checkpoint_every"], saved["log"], saved["log_every"], saved["steps"]) == (1, "csv", 2, 3)
    assert load_checkpoint(out)["training"]["checkpoint_every"] == 1
    assert main(["train", "--resume", str(out), "--steps", "4", "--no-progress", "--checkpoint-every", "3"]) == 0
    assert json.loads((out / "training.json").read_text())["checkpoint_every"] == 3  # given: it wins


def test_resume_into_a_folder_with_a_checkpoint(tmp_path, capsys):
    # Case 2: --resume A --out B replaced B's checkpoint silently.
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_args(a, 1)) == 0 and main(_args(b, 2)) == 0
    before = (b / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(a), "--out", str(b), "--steps", "2", "--no-progress"]) == 1
    assert "already holds another run's checkpoint" in capsys.readouterr().err
    assert (b / "checkpoint.pt").read_bytes() == before
    assert main(["train", "--resume", str(a), "--out", str(b), "--steps", "2", "--no-progress", "--overwrite"]) == 0


def test_batch_larger_than_the_data_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"batch size 64 is larger than the \d+ training items per process"):
        assert main(_args(tmp_path / "a", 1, "--batch-size", "64")) == 0


def test_diverging_run_reports_a_non_finite_loss(tmp_path, capsys):
    assert main(_args(tmp_path / "a", 4, "--lr", "1e3")) == 1
    err = capsys.readouterr().err
    assert "non-finite value in" in err and "at step" in err and "Lower the learning rate" in err
    assert "Sequential: context contains NaN" not in err.split("(", 1)[0]


# -- outputs -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("outs") / "run"
    assert main(_args(out, 1)) == 0
    return out


@pytest.mark.parametrize("command", ["synthesize", "caption"])
def test_outputs_never_overwrite_a_checkpoint(run, tmp_path, capsys, command):
    # Case 3: synthesize --save-tensor RUN/checkpoint.pt and caption --out RUN/checkpoint.pt destroyed it.
    before = (run / "checkpoint.pt").read_bytes()
    other = tmp_path / "copy.pt"
    other.write_bytes(before)  # a checkpoint under another name is protected as well
    for target in (run / "checkpoint.pt", other):
        if command == "synthesize":
            argv = [
                "synthesize",
                "--checkpoint",
                str(run),
                "--caption",
                "a red circle",
                "--num-samples",
                "1",
                "--save-tensor",
                str(target),
                "--out",
                str(tmp_path / "g.png"),
            ]
        else:
            argv = ["caption", "--checkpoint", str(run), "--limit", "1", "--num-samples", "1", "--out", str(target), "--no-progress"]
        assert main(argv) == 1
        assert "is a training checkpoint; writing there would destroy it" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before == other.read_bytes()


def test_synthesize_out_folder_writes_inside_and_says_so(run, tmp_path, capsys):
    folder = tmp_path / "pics"
    folder.mkdir()
    assert main(["synthesize", "--checkpoint", str(run), "--caption", "a red circle", "--num-samples", "1", "--out", str(folder)]) == 0
    assert (folder / "synthesized.png").is_file() and f"to {folder / 'synthesized.png'}" in capsys.readouterr().out
    assert (
        main(["synthesize", "--checkpoint", str(run), "--caption", "a red circle", "--num-samples", "1", "--out", str(tmp_path / "grid")])
        == 0
    )
    assert (tmp_path / "grid.png").is_file() and f"to {tmp_path / 'grid.png'}" in capsys.readouterr().out


def test_caption_on_a_read_only_run_fails_before_sampling(run, monkeypatch, capsys):
    import flowkit.evaluation as ev
    from flowkit.training import safety

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(safety.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(ev, "generate_captions", lambda *a, **k: pytest.fail("sampled before checking the output"))
    assert main(["caption", "--checkpoint", str(run), "--limit", "1", "--num-samples", "1", "--no-progress"]) == 1
    assert "cannot write to the folder" in capsys.readouterr().err


# -- disk and cache ------------------------------------------------------------------------------
def test_full_disk_while_checkpointing(tmp_path, monkeypatch):
    from flowkit.training import checkpoint

    path = checkpoint.save_checkpoint(tmp_path / "checkpoint.pt", {"model": {}, "optimizer": {}, "step": 1, "config": {}})

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/3: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(OSError, match="no space left on the device; free some space .* the previous version of the file is intact"):
        checkpoint.save_checkpoint(path, {"model": {}, "optimizer": {}, "step": 2, "config": {}})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1 and not list(tmp_path.glob(".*.tmp"))


def test_stale_temp_files_are_removed(tmp_path):
    from flowkit.training.checkpoint import atomic_write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".config.json.{int(dead.stdout)}.abc.tmp"
    stale.write_bytes(b"")
    mine = tmp_path / f".config.json.{os.getpid()}.xyz.tmp"  # a live writer's: kept
    mine.write_bytes(b"")
    atomic_write_text(tmp_path / "config.json", "{}")
    assert not stale.exists() and mine.exists()


def test_corrupt_cache_file_is_named_and_rebuilt(tmp_path, monkeypatch):
    from flowkit.models.lnfmm.pretraining import pretrain_shapes_encoder

    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path))
    kw = dict(channels=2, hidden=4, steps=1, images=4, batch_size=2)
    trunk = pretrain_shapes_encoder(**kw)
    (cached,) = tmp_path.glob("shapes_encoder-*.pt")
    cached.write_bytes(cached.read_bytes()[:100])
    with pytest.warns(UserWarning, match=rf"cache file '.*{cached.name}' is corrupt .* removing it and rebuilding"):
        again = pretrain_shapes_encoder(**kw)
    assert all(torch.equal(v, again[k]) for k, v in trunk.items())
    assert cached.is_file()
