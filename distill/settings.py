"""Default locations, each overridable by an environment variable and a CLI flag."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The repository root when running from a checkout (``pip install -e .``)."""


def default_banking77_dir() -> Path:
    """Banking77 location: ``$CASCADE_BANKING77``, else ``../shared/data/banking77`` beside the project."""
    env = os.environ.get("CASCADE_BANKING77")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "data" / "banking77"


def default_home() -> Path:
    """Where the registry and caches live: ``$CASCADE_HOME``, else ``./.cascade``."""
    return Path(os.environ.get("CASCADE_HOME", ".cascade")).resolve()
