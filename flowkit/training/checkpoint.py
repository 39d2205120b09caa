r"""Random-number-generator states for exact resume, and the checkpoint files of
:mod:`flowkit.io` under their old names.

Checkpoints are written and read by :mod:`flowkit.io` (atomic, ``weights_only``-loadable);
this module adds the RNG states a checkpoint carries, in types ``weights_only=True`` loads.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from flowkit.io import (
    CHECKPOINT_NAME,
    REQUIRED_KEYS,
    CheckpointError,
    atomic_write,
    atomic_write_text,
    load_checkpoint,
    pid_alive,
    read_cache,
    save_checkpoint,
)

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

_atomic_write = atomic_write  # the old private name, kept for code written against it


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
    np.random.set_state((npy["kind"], npy["keys"].cpu().numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu().to(torch.uint8) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
