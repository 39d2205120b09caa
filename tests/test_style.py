r"""The code is ruff-clean: lint (the rules of ``[tool.ruff.lint]`` in pyproject.toml) and format."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["flowkit", "tests", "benchmarks", "examples", "conftest.py"]


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        import ruff  # noqa: F401  (installed with the "test" extra)
    except ImportError:
        if shutil.which("ruff") is None:
            pytest.skip("ruff is not installed (pip install -e '.[test]')")
    return subprocess.run([sys.executable, "-m", "ruff", *args, *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint_is_clean() -> None:
    r = _ruff("check", "--no-cache", "--output-format", "concise")
    assert r.returncode == 0, f"ruff check found problems (fix them, or `ruff check --fix`):\n{r.stdout}{r.stderr}"


def test_ruff_format_is_clean() -> None:
    r = _ruff("format", "--no-cache", "--check")
    assert r.returncode == 0, f"files not formatted (run `ruff format`):\n{r.stdout}{r.stderr}"
