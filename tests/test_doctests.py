"""Every docstring example (``>>>``) in router/, distill/ and serving/ runs, one test per module
that has any. Only those modules are imported: ``--doctest-modules`` would import every module,
ray's and torch's too. A module whose import pulls in torch, ray or transformers (read from its
imports, and theirs, without importing anything) is marked slow: the fast tier stays fast, and the
default run (``python -m pytest``) runs it all."""

from __future__ import annotations

import ast
import doctest
import importlib
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("router", "distill", "serving")
HEAVY = {"torch", "ray", "transformers"}  # seconds to import
EXAMPLE = re.compile(r"^\s*>>>", re.MULTILINE)


def module_path(name: str) -> Path | None:
    """The source file of project module ``name`` (a package's ``__init__.py``), or None when it is not one."""
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_statements(body: list[ast.stmt]):
    """The statements run when the module is imported: its top level, class bodies, ``if``/``try``
    blocks, but not function bodies or ``if TYPE_CHECKING`` blocks."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _import_time_statements(node.orelse if _is_type_checking(node.test) else node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _import_time_statements(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
        elif isinstance(node, (ast.ClassDef, ast.With)):
            yield from _import_time_statements(node.body)


def imported_at_import_time(name: str) -> set[str]:
    """The modules project module ``name`` imports when it is imported (for ``from m import x``: m,
    and m.x where that is a project module), and the packages above it."""
    path = module_path(name)
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}  # importing a.b.c imports a and a.b
    for node in _import_time_statements(tree.body):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if module_path(f"{base}.{alias.name}")}
    return found


@cache
def pulls_in_heavy(name: str) -> bool:
    """Whether importing project module ``name`` imports torch, ray or transformers, directly or
    through the project modules it imports."""
    pending, seen = [name], {name}
    while pending:
        for imported in imported_at_import_time(pending.pop()):
            if imported.split(".")[0] in HEAVY:
                return True
            if imported not in seen and module_path(imported):
                seen.add(imported)
                pending.append(imported)
    return False


def modules_with_examples() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if EXAMPLE.search(path.read_text()):
                parts = path.relative_to(ROOT).with_suffix("").parts
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = modules_with_examples()


def test_the_examples_are_found():
    assert {"router.decision", "router.figures", "serving.guards"} <= set(MODULES)
    assert pulls_in_heavy("serving.model_server") and pulls_in_heavy("distill.backends")
    assert not pulls_in_heavy("router.decision") and not pulls_in_heavy("serving.metrics")  # metrics imports ray lazily


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if pulls_in_heavy(name) else name for name in MODULES])
def test_docstring_examples_hold(name: str):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} example(s) in {name} failed (the diff is in the captured stdout)"
