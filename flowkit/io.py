r"""Files: atomic writes, the cache folder, checkpoints, run folders and their metadata.

The one home of everything flowkit writes to disk or finds there; it imports nothing from
flowkit, so every layer (data, training, evaluation, the command line) may use it.

* **Atomic writes** (:func:`atomic_write` and its ``_bytes`` / ``_text`` / ``_json`` forms):
  the content goes to a temporary file ``.NAME.PID.*.tmp`` in the target's folder, which is
  flushed, fsync'ed and renamed over the target with :func:`os.replace`. A crash mid-write
  leaves the previous file untouched; a temporary file left by a killed writer is removed by
  the next write.
* **Checkpoints** (:func:`save_checkpoint`, :func:`load_checkpoint`): plain dicts of tensors
  and Python values, loadable with ``torch.load(path, weights_only=True)``, holding at least
  ``model``, ``optimizer``, ``step`` and ``config``.
* **Run folders** (:func:`checkpoint_path`, :func:`run_folder`, :func:`write_run_metadata`):
  a run folder holds ``checkpoint.pt``, ``config.json``, ``vocab.json``, ``training.json``
  and ``log.csv``; commands accept the folder or its checkpoint file.
* **The cache folder** (:func:`cache_dir`, :func:`read_cache`): ``$FLOWKIT_CACHE`` or
  ``~/.cache/flowkit``.
* **Output checks** (:func:`check_output`): never write onto a training checkpoint.

Example:
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> _ = save_checkpoint(run / CHECKPOINT_NAME, {"model": {}, "optimizer": {}, "step": 3, "config": {}})
    >>> load_checkpoint(run)["step"], checkpoint_path(run) == run / "checkpoint.pt", run_folder(run / "checkpoint.pt") == run
    (3, True, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import hashlib
import json
import os
import pickle
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

import torch

__all__ = [
    "CHECKPOINT_NAME",
    "REQUIRED_KEYS",
    "CheckpointError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "cache_dir",
    "check_output",
    "checkpoint_path",
    "is_checkpoint_file",
    "load_checkpoint",
    "pid_alive",
    "read_cache",
    "run_folder",
    "save_checkpoint",
    "write_run_metadata",
]

CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS: tuple[str, ...] = ("model", "optimizer", "step", "config")
_RUN_HINT = "pass the folder of a training run (flowkit train --out DIR) or its checkpoint file"


class CheckpointError(RuntimeError):
    r"""Raised for a checkpoint that is corrupt, truncated or not a flowkit checkpoint."""


# -- atomic writes -----------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    r"""Whether a process with this id runs on this machine (signal 0 probes without sending).

    Arguments:
        pid: The process id.

    Example:
        >>> pid_alive(os.getpid())
        True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except (OSError, ValueError, OverflowError):
        return False
    return True


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
        return OSError(
            errno.ENOSPC,
            f"cannot write '{path}': no space left on the device; free some space (or "
            f"write to another folder) and retry; the previous version of the file is intact",
        )
    return OSError(
        getattr(e, "errno", None) or errno.EIO,
        f"cannot write '{path}': {str(e).splitlines()[0] if str(e) else type(e).__name__}; the previous version of the file is intact",
    )


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any], durable: bool = True) -> Path:
    r"""Writes a file atomically: ``write(f)`` fills a temporary file that replaces ``path``.

    Whatever goes wrong (a full disk, Ctrl-C, an object that cannot be written), ``path``
    keeps its previous content and no temporary file is left behind.

    Arguments:
        path: The destination file; parent folders are created.
        write: Writes the content into the binary file object it is given.
        durable: fsync the file and its folder before returning (a crash of the machine
            cannot lose the write) and first remove temporary files of this target left by
            killed writers; False keeps the write atomic but skips both, for many small files
            that can be rewritten (an export of images).

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> p = atomic_write(Path(tempfile.mkdtemp()) / "a.bin", lambda f: f.write(b"abc"))
        >>> p.read_bytes()
        b'abc'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if durable:
        _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, (NotImplementedError, RecursionError)):
            raise _write_error(path, e) from e
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> Path:
    r"""Writes bytes atomically, as :func:`atomic_write`.

    Arguments:
        path: The destination file.
        data: Its content.
        durable: See :func:`atomic_write`.

    Example:
        >>> import tempfile
        >>> atomic_write_bytes(Path(tempfile.mkdtemp()) / "a.bin", b"\x00\x01").stat().st_size
        2
    """
    return atomic_write(path, lambda f: f.write(data), durable=durable)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    r"""Writes a text file (UTF-8) atomically, as :func:`atomic_write`.

    Arguments:
        path: The destination file.
        text: Its content.

    Example:
        >>> import tempfile
        >>> atomic_write_text(Path(tempfile.mkdtemp()) / "config.json", "{}").read_text()
        '{}'
    """
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, durable: bool = True, **dumps: Any) -> Path:
    r"""Writes ``json.dumps(obj, **dumps)`` atomically, as :func:`atomic_write`.

    Arguments:
        path: The destination file.
        obj: A JSON-able object.
        durable: See :func:`atomic_write`.
        dumps: Options of :func:`json.dumps` (e.g. ``indent=2``).

    Example:
        >>> import tempfile
        >>> atomic_write_json(Path(tempfile.mkdtemp()) / "a.json", {"a": 1}).read_text()
        '{"a": 1}'
    """
    return atomic_write_bytes(path, json.dumps(obj, **dumps).encode("utf-8"), durable=durable)


# -- the cache folder --------------------------------------------------------------------------


def cache_dir() -> Path:
    r"""The flowkit cache folder: ``$FLOWKIT_CACHE`` or ``~/.cache/flowkit``.

    Example:
        >>> cache_dir().name in (os.environ.get("FLOWKIT_CACHE", "flowkit").rstrip("/").split("/")[-1], "flowkit")
        True
    """
    env = os.environ.get("FLOWKIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "flowkit"


def read_cache(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    r"""A cache file written with :func:`torch.save` (``weights_only=True``), or None when it is
    missing or unreadable; an unreadable one is named in a warning and removed (it is rebuilt).

    Arguments:
        path: The cache file.

    Example:
        >>> read_cache("/nonexistent/cache.pt") is None
        True
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
        warnings.warn(
            f"cache file '{path}' is corrupt ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); removing it and rebuilding",
            stacklevel=2,
        )
        with contextlib.suppress(OSError):
            path.unlink()
        return None


# -- checkpoints -------------------------------------------------------------------------------

_PLAIN = (str, int, float, bool, complex, bytes, type(None), torch.dtype, torch.device, torch.Size)


def settings_key(settings: Any, version: int = 1) -> str:
    r"""A short hash of a settings dataclass and a version, to name a cache file: other
    settings, or another version of the code that reads them, never read a stale file.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Settings:
        ...     steps: int = 10
        >>> settings_key(Settings()) == settings_key(Settings(steps=10)) != settings_key(Settings(steps=11))
        True
    """
    blob = json.dumps({"v": version, **dataclasses.asdict(settings)}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


_Trained = TypeVar("_Trained", bound=torch.nn.Module)


def cached_trained(
    path: str | os.PathLike[str],
    settings: Any,
    build: Callable[[Mapping[str, Any]], _Trained],
    train: Callable[[], _Trained],
    cache: bool = True,
) -> _Trained:
    r"""A trained network that carries a ``metrics`` dict: read from the cache file ``path``,
    or trained by ``train()`` and written there atomically (weights, ``settings`` as a dict,
    metrics; read back with ``weights_only=True``).

    Arguments:
        path: The cache file (under :func:`cache_dir`, named with :func:`settings_key`).
        settings: The settings dataclass it was trained with.
        build: An untrained network of the stored settings (a dict), to load the weights into.
        train: Trains one; its result must have ``metrics``.
        cache: Read and write the cache.

    Returns:
        The network, in eval mode when it was read from the cache.
    """
    blob = read_cache(path) if cache else None
    if blob is not None and {"state_dict", "config", "metrics"} <= set(blob):
        module = build(blob["config"])
        module.load_state_dict(blob["state_dict"])
        module.metrics = dict(blob["metrics"])
        return module.eval()
    module = train()
    if cache:
        state = {"state_dict": module.state_dict(), "config": dataclasses.asdict(settings), "metrics": dict(module.metrics)}
        atomic_write(path, lambda f: torch.save(state, f))
    return module


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


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    r"""Saves a checkpoint atomically (temporary file, flush, fsync, :func:`os.replace`).

    Arguments:
        path: The destination file, e.g. ``"runs/a/checkpoint.pt"``. Parent folders are created.
        state: A dict of tensors and Python primitives (what ``weights_only=True`` can load);
            anything else is a :class:`TypeError` naming the entry, before anything is written.

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> net = torch.nn.Linear(2, 1); opt = torch.optim.Adam(net.parameters())
        >>> path = save_checkpoint(Path(tempfile.mkdtemp()) / "checkpoint.pt", {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": 10, "config": {}})
        >>> torch.load(path, weights_only=True)["step"]
        10
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"a checkpoint must be a dict, got {type(state).__name__}")
    state = dict(state)
    _check_plain(state, "state")
    return atomic_write(path, lambda f: torch.save(dict(state), f))


def checkpoint_path(run: str | os.PathLike[str]) -> Path:
    r"""The checkpoint file of a run folder (``RUN/checkpoint.pt``) or of a checkpoint path.

    Arguments:
        run: A training run folder or a checkpoint file; a path that does not exist and has no
            suffix is taken for a run folder.

    Raises:
        FileNotFoundError: There is no checkpoint there (the message names the path).

    Example:
        >>> import tempfile
        >>> checkpoint_path(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        FileNotFoundError: '...' holds no checkpoint.pt: pass the folder of a training run (flowkit train --out DIR) or its checkpoint file
    """
    path = Path(run)
    if path.is_dir():
        target = path / CHECKPOINT_NAME
        if not target.is_file():
            raise FileNotFoundError(f"'{path}' holds no {CHECKPOINT_NAME}: {_RUN_HINT}")
        return target
    if path.is_file():
        return path
    target = path if path.suffix else path / CHECKPOINT_NAME
    raise FileNotFoundError(f"no checkpoint at '{target}': {_RUN_HINT}")


def run_folder(run: str | os.PathLike[str]) -> Path:
    r"""The run folder of a run folder or checkpoint path (where a run's outputs go by default).

    Arguments:
        run: A training run folder or a checkpoint file (need not exist).

    Example:
        >>> run_folder("runs/a/checkpoint.pt"), run_folder("runs/a")
        (PosixPath('runs/a'), PosixPath('runs/a'))
    """
    path = Path(run)
    return path if path.is_dir() or not path.suffix else path.parent


def load_checkpoint(
    path: str | os.PathLike[str],
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
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> _ = save_checkpoint(run / "checkpoint.pt", {"model": {}, "optimizer": {}, "step": 1, "config": {}})
        >>> load_checkpoint(run)["step"]
        1
    """
    path = checkpoint_path(path)
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


# -- run folders -------------------------------------------------------------------------------


def write_run_metadata(
    out: str | os.PathLike[str],
    training: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    vocab: Mapping[str, Any] | None = None,
) -> None:
    r"""Writes a run folder's metadata atomically: ``training.json`` and, when given,
    ``config.json`` and ``vocab.json``.

    Arguments:
        out: The run folder (created if needed).
        training: The training settings and facts about the run (JSON-able).
        config: The model config as a dict.
        vocab: The vocabulary dict.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> write_run_metadata(run, {"steps": 10}, config={"width": 4})
        >>> sorted(p.name for p in run.iterdir())
        ['config.json', 'training.json']
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config is not None:
        atomic_write_text(out / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    if vocab is not None:
        atomic_write_text(out / "vocab.json", json.dumps(vocab) + "\n")
    atomic_write_text(out / "training.json", json.dumps(training, indent=2, sort_keys=True) + "\n")


def is_checkpoint_file(path: str | os.PathLike[str]) -> bool:
    r"""Whether ``path`` holds a flowkit training checkpoint (a torch zip whose pickle names
    ``model`` and ``optimizer``; only the small pickle is read, no tensor).

    Arguments:
        path: Any path.

    Example:
        >>> is_checkpoint_file(__file__)
        False
    """
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return False
            text = z.read(name)
    except (OSError, zipfile.BadZipFile):
        return False
    return b"optimizer" in text and b"model" in text and b"step" in text


def check_output(path: str | os.PathLike[str], what: str, protected: tuple[str | os.PathLike[str], ...] = ()) -> Path:
    r"""Checks an output file before any work: not a checkpoint, and its folder writable.

    Arguments:
        path: The file to be written.
        what: The option that named it, for the message (e.g. ``"--out"``).
        protected: Files that must never be overwritten (e.g. the run's checkpoint).

    Raises:
        FileExistsError: ``path`` is a training checkpoint.
        IsADirectoryError: ``path`` is a folder.
        PermissionError: The folder cannot be written.

    Example:
        >>> check_output("runs/a/checkpoint.pt", "--out")
        Traceback (most recent call last):
        ...
        FileExistsError: --out 'runs/a/checkpoint.pt' is a training checkpoint; writing there would destroy it. Pass another file name
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} '{path}' is a folder; pass a file name inside it")
    same = any(Path(p).exists() and path.exists() and os.path.samefile(path, p) for p in protected)
    if path.name == CHECKPOINT_NAME or same or is_checkpoint_file(path):
        raise FileExistsError(f"{what} '{path}' is a training checkpoint; writing there would destroy it. Pass another file name")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".flowkit-write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise PermissionError(f"{what} '{path}': cannot write to the folder '{folder}' ({e.strerror or e}); pass a writable path") from e
    return path
