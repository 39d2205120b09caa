r"""Interoperability with other flow libraries.

:mod:`flowkit.interop.nflows` wraps flowkit transforms as nflows transforms and back
(``to_nflows`` / ``from_nflows``); it needs ``nflows`` (``pip install flowkit[nflows]``) and
imports it only when used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["to_nflows", "from_nflows"]


def __getattr__(name: str) -> Any:
    # Lazy: importing flowkit.interop must not import nflows.
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("flowkit.interop.nflows"), name)
    raise AttributeError(f"module 'flowkit.interop' has no attribute {name!r}")
