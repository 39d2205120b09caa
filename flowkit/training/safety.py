r"""Nothing overwritten by accident: the run-folder lock and checks of output paths.

* :class:`RunLock`: one training process per run folder. The lock is the file
  ``RUN/.flowkit.lock`` holding ``{"pid", "host", "time", "command"}`` as JSON. It is created
  atomically with its content (written to a temporary file, then ``os.link``-ed to the lock
  name, which fails if the name exists: the same guarantee as ``O_CREAT | O_EXCL`` without a
  window in which the lock exists but is empty). It is removed when the process leaves the
  ``with`` block, including on errors and Ctrl-C. A process killed with SIGKILL (or a crashed
  machine) leaves the file behind: the next process finds it *stale* when it was written on
  the same host by a pid that no longer runs, says so in a warning, and takes the lock over.
  A lock from another host cannot be checked: the error names the file to remove by hand.
* :func:`check_output` (from :mod:`flowkit.io`, re-exported): refuses to write onto a training checkpoint (``checkpoint.pt``, the
  run's own checkpoint, or any file holding a flowkit checkpoint) and checks that the folder
  is writable before any work is done.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from flowkit.io import check_output, is_checkpoint_file, pid_alive

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "check_output", "is_checkpoint_file"]

LOCK_NAME = ".flowkit.lock"
_HELD: dict[str, int] = {}  # lock files this process holds -> nesting depth


class RunLockedError(RuntimeError):
    r"""The run folder is in use by another training process."""


def _describe(info: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("time", 0))))
    return f"pid {info.get('pid')} on host {info.get('host')!r} since {when}"


def _read(lock: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(lock.read_text())
        return info if isinstance(info, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


class RunLock:
    r"""An exclusive lock on a run folder while a process trains in it (see the module doc).

    Re-entrant within a process: :func:`flowkit.training.train` and ``flowkit train`` both
    take it, the inner one is a no-op.

    Arguments:
        folder: The run folder (created if needed).

    Example:
        >>> import tempfile
        >>> run = tempfile.mkdtemp()
        >>> with RunLock(run):
        ...     (Path(run) / LOCK_NAME).is_file()
        True
        >>> (Path(run) / LOCK_NAME).exists()
        False
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.key = ""

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        r"""Takes the lock; raises :class:`RunLockedError` when a live process holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = str(self.path.resolve())
        if self.key in _HELD:
            _HELD[self.key] += 1
            return
        for _ in range(3):
            if self._create():
                _HELD[self.key] = 1
                return
            self._break_if_stale()
        raise RunLockedError(f"cannot lock the run folder '{self.folder}': {self.path} keeps changing; retry")

    def release(self) -> None:
        r"""Releases the lock (removes the file once the outermost holder leaves)."""
        if self.key not in _HELD:
            return
        _HELD[self.key] -= 1
        if _HELD[self.key] == 0:
            del _HELD[self.key]
            info = _read(self.path)
            if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "command": " ".join(sys.argv)}
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f"{LOCK_NAME}.{os.getpid()}.", suffix=".new")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            os.link(tmp, self.path)  # atomic: fails when the lock exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _break_if_stale(self) -> None:
        info = _read(self.path)
        if info is None:  # released meanwhile
            return
        same_host = info.get("host") == socket.gethostname()
        pid = info.get("pid")
        if info and not (same_host and isinstance(pid, int) and not pid_alive(pid)):
            where = "" if same_host else " (another host: flowkit cannot check whether it still runs)"
            raise RunLockedError(
                f"the run folder '{self.folder}' is in use by a training process: {_describe(info)}{where}. "
                f"Wait for it to finish or pass another --out; if no such process runs, remove {self.path}"
            )
        # Stale (dead pid) or unreadable: move it aside under a unique name, then check that what
        # was moved is still the stale lock (another process may have replaced it meanwhile).
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = _read(aside) or {}
        if moved.get("pid") not in (None, pid) and pid_alive(int(moved["pid"])):
            with_link = True
            try:
                os.link(aside, self.path)
            except FileExistsError:
                with_link = False
            os.unlink(aside)
            if with_link:
                raise RunLockedError(f"the run folder '{self.folder}' is in use by a training process: {_describe(moved)}")
            return
        os.unlink(aside)
        warnings.warn(
            f"removed the stale lock of '{self.folder}' left by {_describe(info) if info else 'an unreadable lock file'} "
            f"(that process no longer runs)",
            stacklevel=3,
        )
