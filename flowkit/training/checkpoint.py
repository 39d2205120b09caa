r"""Atomic, ``weights_only``-loadable checkpoints and random-number-generator states.

A checkpoint is a plain dict of tensors and Python primitives, so that
``torch.load(path, weights_only=True)`` reads it without unpickling arbitrary objects. It
holds at least ``model`` (a state_dict), ``optimizer``, ``step`` and ``config`` (a dict).

Writes are atomic: the dict goes to a temporary file in the same directory, which is flushed,
fsync'ed and renamed over the target with :func:`os.replace`. A crash mid-write leaves the
previous checkpoint untouched.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import pickle
import random
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_NAME",
    "REQUIRED_KEYS",
    "CheckpointError",
    "atomic_write_text",
    "get_rng_state",
    "load_checkpoint",
    "pid_alive",
    "read_cache",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS: tuple[str, ...] = ("model", "optimizer", "step", "config")


class CheckpointError(RuntimeError):
    r"""Raised for a checkpoint that is corrupt, truncated or not a flowkit checkpoint."""


def _fsync_dir(directory: Path) -> None:
    # The rename itself is only durable once the directory entry is on disk (POSIX).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        with contextlib.suppress(OSError):  # not every file system syncs directories
            os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    r"""Whether a process with this id runs on this machine (signal 0 probes without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


def _remove_stale_temps(path: Path) -> None:
    # A writer killed with SIGKILL cannot clean up: its ".NAME.PID.*.tmp" stays behind. Any
    # temp file of this target whose writer is dead is removed before the next write.
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _write_error(path: Path, e: BaseException) -> OSError:
    # torch.save reports a full disk as "PytorchStreamWriter failed writing file ...".
    full = getattr(e, "errno", None) == errno.ENOSPC or "file write failed" in str(e) or "No space left" in str(e)
    if full:
        return OSError(errno.ENOSPC, f"cannot write '{path}': no space left on the device; free some space (or "
                       f"write to another folder) and retry; the previous version of the file is intact")
    return OSError(getattr(e, "errno", None) or errno.EIO, f"cannot write '{path}': {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                   f"the previous version of the file is intact")


def _atomic_write(path: str | os.PathLike, write: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # Whatever went wrong (disk full, KeyboardInterrupt, a bad object), the target keeps
        # its previous content and no temporary file is left behind.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, (NotImplementedError, RecursionError)):
            raise _write_error(path, e) from e
        raise
    _fsync_dir(path.parent)
    return path


def read_cache(path: str | os.PathLike) -> dict[str, Any] | None:
    r"""A cache file written with :func:`torch.save` (``weights_only=True``), or None when it is
    missing or unreadable; an unreadable one is named in a warning and removed (it is rebuilt).

    Arguments:
        path: The cache file.
    """

    path = Path(path)
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict):
            raise TypeError(f"holds a {type(blob).__name__}, not a dict")
        return blob
    except Exception as e:  # truncated, garbage, or refused by weights_only
        warnings.warn(f"cache file '{path}' is corrupt ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                      f"removing it and rebuilding", stacklevel=2)
        with contextlib.suppress(OSError):
            path.unlink()
        return None


_PLAIN = (str, int, float, bool, complex, bytes, type(None), torch.dtype, torch.device, torch.Size)


def _check_plain(obj: Any, where: str) -> None:
    # Exact types: a str subclass such as torch.__version__ (TorchVersion) would be pickled as
    # its class, which weights_only=True refuses.
    if type(obj) in _PLAIN or isinstance(obj, torch.Tensor):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if type(k) not in _PLAIN:
                raise TypeError(f"checkpoint key {where}[{k!r}] has type {type(k).__name__}; use str or int keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"checkpoint entry {where} is a {type(obj).__module__}.{type(obj).__qualname__}, which "
        f"torch.load(weights_only=True) cannot load; store tensors and plain Python values only"
    )


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    r"""Saves a checkpoint atomically (temporary file, flush, fsync, :func:`os.replace`).

    Arguments:
        path: The destination file, e.g. ``"runs/a/checkpoint.pt"``. Parent folders are created.
        state: A dict of tensors and Python primitives (what ``weights_only=True`` can load);
            anything else is a :class:`TypeError` naming the entry, before anything is written.

    Returns:
        The path written.

    Example:
        >>> save_checkpoint(tmp / "checkpoint.pt", {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": 10, "config": {}})
    """

    if not isinstance(state, Mapping):
        raise TypeError(f"a checkpoint must be a dict, got {type(state).__name__}")
    state = dict(state)
    _check_plain(state, "state")
    return _atomic_write(path, lambda f: torch.save(dict(state), f))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    r"""Writes a text file atomically, like :func:`save_checkpoint`.

    Arguments:
        path: The destination file.
        text: Its content (UTF-8).

    Example:
        >>> atomic_write_text(tmp / "config.json", json.dumps(config.to_dict()))
    """

    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device | None = "cpu",
    required: Iterable[str] = REQUIRED_KEYS,
) -> dict[str, Any]:
    r"""Loads a checkpoint with ``torch.load(..., weights_only=True)`` and checks its keys.

    Arguments:
        path: A checkpoint file, or a run folder holding ``checkpoint.pt``.
        map_location: Where to put the tensors (CPU by default).
        required: Keys the checkpoint must hold.

    Raises:
        FileNotFoundError: The file does not exist (the message names it).
        CheckpointError: The file is corrupt or truncated, holds objects that
            ``weights_only=True`` refuses, or is not a flowkit checkpoint (missing keys named).

    Example:
        >>> ckpt = load_checkpoint("runs/a")
        >>> model.load_state_dict(ckpt["model"])
    """

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (corrupt or truncated)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch wraps every unpickling failure in its long weights_only notice; keep the cause.
        text = str(e)
        cause = text.split("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0].strip() or text.splitlines()[0]
        if "unsupported global" in text.lower() or "not an allowed global" in text.lower():
            raise CheckpointError(
                f"checkpoint '{path}' holds objects that torch.load(weights_only=True) refuses to "
                f"load; flowkit checkpoints hold only tensors and plain Python values ({cause})"
            ) from e
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated: {cause}") from e
    except Exception as e:  # garbage bytes can fail anywhere inside the unpickler
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated: {first}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' is not a flowkit checkpoint: it holds a {type(state).__name__}, not a dict")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(
            f"'{path}' is not a flowkit checkpoint: missing key(s) {', '.join(repr(k) for k in missing)} "
            f"(found {', '.join(repr(k) for k in sorted(map(str, state)))})"
        )
    return state


# -- random-number-generator states ---------------------------------------------------------
# torch.load(weights_only=True) accepts tensors and Python primitives only, so numpy's and
# Python's states (which hold numpy arrays / long tuples) are converted to int64 tensors.


def get_rng_state() -> dict[str, Any]:
    r"""Returns the torch (CPU and CUDA), numpy and Python RNG states in ``weights_only``-safe types.

    Example:
        >>> state = get_rng_state(); x = torch.rand(3); set_rng_state(state)
        >>> assert torch.equal(torch.rand(3), x)
    """

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    r"""Restores RNG states saved by :func:`get_rng_state`.

    Arguments:
        state: The dict returned by :func:`get_rng_state` (possibly after a save/load round trip).
    """

    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].cpu().numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu().to(torch.uint8) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)

