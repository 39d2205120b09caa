"""The layer diagram of docs/dev/ARCHITECTURE.md holds: no import in flowkit/ points up it.
And no function in flowkit/ is longer than MAX_FUNCTION_LINES.

Every import is collected with ``ast``, also those inside functions and under ``TYPE_CHECKING``,
relative ones, and ``importlib.import_module("flowkit...")`` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flowkit"

# Each part of flowkit and the parts it stands on directly. A part may import itself, the parts
# it stands on and everything they stand on, nothing else. Keep in step with ARCHITECTURE.md.
STANDS_ON: dict[str, tuple[str, ...]] = {
    "flowkit._validation": (),
    "flowkit.io": (),  # files: atomic writes, cache folder, checkpoints (the engine refactor adds it)
    "flowkit.nn": ("flowkit._validation",),
    "flowkit.metrics": ("flowkit._validation", "flowkit.io"),
    "flowkit.data": ("flowkit._validation", "flowkit.io"),
    "flowkit.transforms": ("flowkit.nn",),
    "flowkit.distributions": ("flowkit.transforms",),
    "flowkit.builders": ("flowkit.distributions",),
    "flowkit.interop": ("flowkit.distributions",),
    "flowkit": ("flowkit.builders", "flowkit.interop"),  # the facade, flowkit/__init__.py only
    "flowkit.testing": ("flowkit",),
    "flowkit.models": ("flowkit", "flowkit.data", "flowkit.metrics"),
    "flowkit.training": ("flowkit", "flowkit.data", "flowkit.metrics"),  # the engine: knows no model
    "flowkit.recipes": ("flowkit.training", "flowkit.models"),  # wires a model's step to the engine
    "flowkit.evaluation": ("flowkit.models",),  # evaluates models from files; not the engine
    "flowkit.commands": ("flowkit.recipes", "flowkit.evaluation"),
    "flowkit.cli": ("flowkit.commands",),
    "flowkit.__main__": ("flowkit.cli",),
}

# Imports that point up the diagram: none since the engine refactor (the engine knows no model,
# evaluation writes through flowkit.io). An entry added here must name why; a stale one fails below.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()

# The minimum rule, with no exceptions: the bottom never imports models, the engine or the
# evaluation, and models never import the engine or the evaluation.
NEVER: dict[str, tuple[str, ...]] = {
    "flowkit.transforms": ("flowkit.models", "flowkit.training", "flowkit.evaluation"),
    "flowkit.distributions": ("flowkit.models", "flowkit.training", "flowkit.evaluation"),
    "flowkit.testing": ("flowkit.models", "flowkit.training", "flowkit.evaluation"),
    "flowkit.metrics": ("flowkit.models", "flowkit.training", "flowkit.evaluation"),
    "flowkit.data": ("flowkit.models", "flowkit.training", "flowkit.evaluation"),
    "flowkit.models": ("flowkit.training", "flowkit.evaluation"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool = False) -> Iterator[tuple[str, int]]:
    r"""Every flowkit module ``source`` imports, with its line: ``import``, ``from ... import``
    (relative too; ``from a import b`` names ``a.b`` when that is a module) and
    ``importlib.import_module`` with a literal name, anywhere in the file."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if _is_module(full) else base), node.lineno
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "import_module" and isinstance(node.args[0].value, str):
                yield node.args[0].value, node.lineno


def part_of(module: str) -> str | None:
    r"""The part of the diagram a module belongs to (the longest matching key), or None."""
    if module == "flowkit":
        return "flowkit"
    keys = [k for k in STANDS_ON if k != "flowkit" and (module == k or module.startswith(k + "."))]
    return max(keys, key=len) if keys else None


@cache
def allowed(part: str) -> frozenset[str]:
    r"""The parts ``part`` may import: itself and all it stands on, transitively."""
    out = {part}
    for below in STANDS_ON[part]:
        out |= allowed(below)
    return frozenset(out)


def all_imports() -> list[tuple[str, str, int]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for target, line in imports_of(path.read_text(), module, path.name == "__init__.py"):
            if target == "flowkit" or target.startswith("flowkit."):
                out.append((module, target, line))
    return out


def test_the_walker_finds_every_kind_of_import() -> None:
    source = (
        "import flowkit.nn\n"
        "from flowkit.models import LNFMM\n"
        "from . import grammar\n"
        "from .shapes import ShapesCaptions\n"
        "from flowkit.data import judges\n"
        "def f():\n"
        "    from flowkit.training import train\n"
        "    import importlib\n"
        "    return importlib.import_module('flowkit.evaluation')\n"
        "if TYPE_CHECKING:\n"
        "    from ..metrics import caption_scores\n"
    )
    found = {t for t, _ in imports_of(source, "flowkit.data.judges")}
    assert found >= {
        "flowkit.nn",
        "flowkit.models",
        "flowkit.data.grammar",
        "flowkit.data.shapes",
        "flowkit.data.judges",
        "flowkit.training",
        "flowkit.evaluation",
        "flowkit.metrics",
    }, found


def test_every_module_has_a_place_in_the_diagram() -> None:
    lost = sorted(
        {m for m, _, _ in all_imports() if part_of(m) is None}
        | {module_name(p) for p in PACKAGE.rglob("*.py") if part_of(module_name(p)) is None}
    )
    assert not lost, f"modules outside the layer diagram (add them to STANDS_ON and ARCHITECTURE.md): {lost}"


def test_no_import_points_up_the_diagram() -> None:
    wrong = []
    for module, target, line in all_imports():
        here, there = part_of(module), part_of(target)
        assert here is not None and there is not None, (module, target)
        if there not in allowed(here) and (module, target) not in KNOWN_VIOLATIONS:
            wrong.append(f"{module} (line {line}) imports {target}: {here} does not stand on {there}")
    assert not wrong, "imports against docs/dev/ARCHITECTURE.md:\n" + "\n".join(wrong)


def test_the_known_violations_are_still_there() -> None:
    present = {(m, t) for m, t, _ in all_imports()}
    stale = sorted(KNOWN_VIOLATIONS - present)
    assert not stale, f"remove these from KNOWN_VIOLATIONS, they are gone: {stale}"
    for module, target in KNOWN_VIOLATIONS:  # only allowed where the diagram is broken
        assert part_of(target) not in allowed(part_of(module) or ""), (module, target)


@pytest.mark.parametrize("low", sorted(NEVER))
def test_the_minimum_rule(low: str) -> None:
    # No allow-list here: this must hold now and forever.
    wrong = [
        f"{module} (line {line}) imports {target}"
        for module, target, line in all_imports()
        if part_of(module) == low and any(target == t or target.startswith(t + ".") for t in NEVER[low])
    ]
    assert not wrong, wrong


# -- function length ------------------------------------------------------------------------
#: The longest a function (or method) may be, from its ``def`` line to its last line, docstring
#: included. Split a longer one into named helpers.
MAX_FUNCTION_LINES = 80

# Functions allowed to be longer for now, as "path::qualified name". An entry must name why; a
# stale one (the function is gone or short enough) fails below.
LONG_FUNCTIONS_ALLOWED: frozenset[str] = frozenset()


def function_lengths(source: str) -> Iterator[tuple[str, int, int]]:
    r"""``(qualified name, def line, lines)`` of every function and method in ``source``, nested
    ones too (``outer.inner``, ``Class.method``); lines run from ``def`` to the last line."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    yield name, child.lineno, child.end_lineno - child.lineno + 1  # type: ignore[operator]
                yield from walk(child, name + ".")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(source), "")


def long_functions() -> dict[str, str]:
    r"""``{"path::name": "path:line name (N lines)"}`` of the functions over the limit."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for name, line, length in function_lengths(path.read_text()):
            if length > MAX_FUNCTION_LINES:
                out[f"{rel}::{name}"] = f"{rel}:{line} {name} ({length} lines)"
    return out


def test_the_length_walker_measures_every_function() -> None:
    source = (
        "def short():\n"
        "    return 1\n"
        "class A:\n"
        "    async def method(self):\n"
        "        def inner():\n"
        "            pass\n"
        "        return inner\n"
        "if True:\n"
        "    def hidden(): pass\n"
    )
    assert sorted(function_lengths(source)) == [
        ("A.method", 4, 4),
        ("A.method.inner", 5, 2),
        ("hidden", 9, 1),
        ("short", 1, 2),
    ]


def test_no_function_is_longer_than_the_limit() -> None:
    found = long_functions()
    wrong = sorted(v for k, v in found.items() if k not in LONG_FUNCTIONS_ALLOWED)
    assert not wrong, f"functions longer than {MAX_FUNCTION_LINES} lines (split them into named helpers):\n" + "\n".join(wrong)


def test_the_allowed_long_functions_are_still_long() -> None:
    stale = sorted(LONG_FUNCTIONS_ALLOWED - set(long_functions()))
    assert not stale, f"remove these from LONG_FUNCTIONS_ALLOWED, they are no longer over {MAX_FUNCTION_LINES} lines: {stale}"
