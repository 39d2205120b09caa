"""Runs ``flowkit`` in a child process with a fault hook, for tests/test_fault_runs.py.

``FK_FAULT`` selects the hook; the child writes ``FK_MARKER`` when it reaches the fault point,
then sleeps there so that the test can kill it with SIGKILL at exactly that point:

* ``step:N``: after step N's log row (between steps);
* ``save:N``: inside the N-th checkpoint write, after half of the bytes reached the temp file;
* ``slow``: every step sleeps 0.2 s (to make two runs overlap), no marker.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(int(os.environ.get("FLOWKIT_TEST_THREADS", "2")))


def _pause() -> None:
    Path(os.environ["FK_MARKER"]).write_text(str(os.getpid()))
    time.sleep(120)


def install(fault: str) -> None:
    kind, _, arg = fault.partition(":")
    if kind == "step":
        from flowkit.training import logging as logs

        original_log = logs.RunLogger.log

        def log(self, step, *a, **k):
            original_log(self, step, *a, **k)
            if step == int(arg):
                self.close()  # the row is on disk, as after a normal flush
                _pause()

        logs.RunLogger.log = log
    elif kind == "save":
        from flowkit.training import checkpoint

        original_save, calls = torch.save, [0]

        def save(obj, f, *a, **k):
            if not (isinstance(obj, dict) and "optimizer" in obj):
                return original_save(obj, f, *a, **k)
            calls[0] += 1
            if calls[0] < int(arg):
                return original_save(obj, f, *a, **k)
            buf = io.BytesIO()
            original_save(obj, buf, *a, **k)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            _pause()

        checkpoint.torch.save = save  # the module's torch is the global torch: patch its save
    elif kind == "slow":
        from flowkit.training import trainer

        original_step = trainer.Trainer.train_step

        def train_step(self, batch):
            time.sleep(0.2)
            return original_step(self, batch)

        trainer.Trainer.train_step = train_step


if __name__ == "__main__":
    if os.environ.get("FK_FAULT"):
        install(os.environ["FK_FAULT"])
    from flowkit.cli import main

    sys.exit(main(sys.argv[1:]))
