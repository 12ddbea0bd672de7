"""Default locations, each overridable by an environment variable and a CLI flag."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The repository root when running from a checkout (``pip install -e .``)."""

DEFAULT_DATA = "banking77"
"""The embedded default data set: what an empty home is bootstrapped from."""


def default_banking77_dir() -> Path:
    """Banking77 location: ``$CASCADE_BANKING77``, else ``../shared/data/banking77`` beside the project."""
    env = os.environ.get("CASCADE_BANKING77")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "data" / "banking77"


def default_home() -> Path:
    """Where the registry and caches live: ``$CASCADE_HOME``, else ``./.cascade``."""
    return Path(os.environ.get("CASCADE_HOME", ".cascade")).resolve()


class Paths(BaseModel):
    """Where a cascade's files are on one host, in one place: the model registry (versions, their
    pointers and the shared routing documents), the teacher's output cache, and the escalation,
    traffic and feedback logs. ``Paths.under(home)`` is a home's own layout; a serving config may
    put the logs elsewhere (``serving.config.CascadeConfig.paths``).

    >>> Paths.under(Path("/srv/cascade")).registry
    PosixPath('/srv/cascade/registry')
    """

    model_config = ConfigDict(frozen=True)

    home: Path
    registry: Path
    cache: Path
    escalations: Path
    traffic: Path
    feedback: Path

    @classmethod
    def under(cls, home: Path, escalations: Path | None = None, traffic: Path | None = None,
              feedback: Path | None = None) -> "Paths":
        """``home``'s layout, with any log given elsewhere."""
        return cls(home=home, registry=home / "registry", cache=home / "cache", escalations=escalations or home / "escalations",
                   traffic=traffic or home / "traffic", feedback=feedback or home / "feedback")
