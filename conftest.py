r"""Settings of every pytest run: the tests in ``tests/`` and the docstring examples in
``flowkit/`` (``pyproject.toml`` collects both, the examples with ``--doctest-modules``).

* Few threads: CI has 2 cores.
* A docstring example runs in a fresh temporary folder: its working directory, :mod:`tempfile`'s
  folder and ``$FLOWKIT_CACHE`` all lie under pytest's ``tmp_path``, so no example writes
  elsewhere, even by mistake.
* An example that needs an optional dependency (:data:`NEEDS`) is skipped where it is missing
  (``scripts/bootstrap.sh`` installs them all; the caption metrics need Java too).
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


_CAPTION_TOOLS = (_installed("pycocoevalcap") and shutil.which("java") is not None, "needs pycocoevalcap and Java (flowkit[coco])")
_NFLOWS = (_installed("nflows"), "needs nflows (flowkit[nflows])")
_HYPOTHESIS = (_installed("hypothesis"), "needs hypothesis (flowkit[test])")

#: Docstring examples that need an optional dependency, by name (a trailing "." names a
#: whole module): they are skipped, with the reason, where it is missing.
NEEDS: dict[str, tuple[bool, str]] = {
    "flowkit.metrics.captions.": _CAPTION_TOOLS,
    "flowkit.metrics.diversity.diversity_scores": _CAPTION_TOOLS,
    "flowkit.metrics.rerank.consensus_rerank": _CAPTION_TOOLS,
    "flowkit.data.coco.load_coco": _CAPTION_TOOLS,
    "flowkit.testing.run_property_checks": _HYPOTHESIS,
}
# Modules that cannot even be imported without their dependency are not collected at all.
_IMPORTS_NEED = {"flowkit/testing/strategies.py": _HYPOTHESIS, "flowkit/interop/nflows.py": _NFLOWS}
collect_ignore = [path for path, (available, _) in _IMPORTS_NEED.items() if not available]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, DoctestItem):
            continue
        for name, (available, why) in NEEDS.items():
            if not available and (item.name == name or (name.endswith(".") and item.name.startswith(name))):
                item.add_marker(pytest.mark.skip(reason=f"{item.name} {why}"))


@pytest.fixture(autouse=True)
def _doctest_in_tmp(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if not isinstance(request.node, DoctestItem):
        return
    tmp = request.getfixturevalue("tmp_path")
    monkeypatch.chdir(tmp)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp / "cache"))
