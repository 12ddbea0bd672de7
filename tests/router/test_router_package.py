"""The router package: public surface, isolation from heavy dependencies, docstring examples."""

import doctest
import importlib
import subprocess
import sys

import pytest

import router

MODULES = ["audit", "breaker", "budget", "calibration", "confidence", "cost", "goals", "policy", "thresholds"]


def test_all_names_exist():
    assert all(hasattr(router, name) for name in router.__all__)


def test_import_pulls_in_no_torch_ray_or_scipy():
    code = "import sys, router; print(sorted(m for m in ('torch', 'ray', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name):
    result = doctest.testmod(importlib.import_module(f"router.{name}"))
    assert result.failed == 0
