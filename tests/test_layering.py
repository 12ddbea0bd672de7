"""The packages' layering, as pyproject.toml's ``[tool.importlinter]`` contracts state it:
serving above distill above router (router imports neither, distill never serving), router
free of torch, ray, scipy and transformers, and no import cycle among a package's modules.
``lint-imports`` reads the source without importing it: about a second."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports() -> str:
    """The ``lint-imports`` of this interpreter's environment (the ``test`` extra installs it)."""
    found = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert found, "lint-imports not found: pip install -e '.[test]' (import-linter)"
    return found


def test_import_contracts_are_kept():
    result = subprocess.run([lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    report = result.stdout[max(result.stdout.find("Contracts"), 0):]  # past the banner
    assert result.returncode == 0, f"an import breaks the layering (pyproject.toml, [tool.importlinter]):\n{report}{result.stderr}"
    assert "0 broken" in result.stdout
