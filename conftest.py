r"""Settings of every pytest run: the tests in ``tests/`` and the docstring examples in
``flowkit/`` (``pyproject.toml`` collects both, the examples with ``--doctest-modules``).

* Few threads: CI has 2 cores.
* A docstring example runs in a fresh temporary folder: its working directory, :mod:`tempfile`'s
  folder and ``$FLOWKIT_CACHE`` all lie under pytest's ``tmp_path``, so no example writes
  elsewhere, even by mistake.
* The examples of a module whose optional dependency is not installed are not collected
  (``pip install flowkit[test,nflows,coco]`` has them all).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

import pytest
import torch
from _pytest.doctest import DoctestItem

torch.set_num_threads(int(os.environ.get("FLOWKIT_TEST_THREADS", "2")))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


#: Modules whose docstring examples need an optional dependency: {path: what it needs}.
_OPTIONAL = {
    "flowkit/testing/strategies.py": _installed("hypothesis"),
    "flowkit/testing/__init__.py": _installed("hypothesis"),
    "flowkit/interop/nflows.py": _installed("nflows"),
    "flowkit/metrics/captions.py": _installed("pycocoevalcap") and shutil.which("java") is not None,
}
collect_ignore = [path for path, available in _OPTIONAL.items() if not available]


@pytest.fixture(autouse=True)
def _doctest_in_tmp(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if not isinstance(request.node, DoctestItem):
        return
    tmp = request.getfixturevalue("tmp_path")
    monkeypatch.chdir(tmp)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp / "cache"))
