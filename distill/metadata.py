"""The project's metadata beside a model's weights: ``cascade.json``.

A model directory describes itself: its role, version, lineage, the data and training
settings it came from, its metrics and its fitted escalation policy. Pydantic validates it,
so a hand-edited file with a wrong field fails loudly at load time.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, Field, ValidationError

from distill.errors import ModelError
from router import EscalationPolicy

META_FILE = "cascade.json"
Role = Literal["student", "teacher"]


class ModelMeta(BaseModel):
    """Everything the cascade records about one model version."""

    version: str
    role: Role
    kind: str  # "embedded-teacher", "bow-student", "transformer-student", "hf"
    parent: str | None = None  # the version this one was distilled from or warm-started from
    teacher: str | None = None  # the teacher version whose soft labels trained it
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    data: dict[str, Any] = Field(default_factory=dict)  # data spec, fingerprint, row counts
    train_config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    policy: dict[str, Any] | None = None  # router.EscalationPolicy.to_dict(), when fitted


def read_meta(directory: Path) -> ModelMeta | None:
    """The directory's ``cascade.json``, or None when it has none (a plain hub model)."""
    path = directory / META_FILE
    if not path.is_file():
        return None
    try:
        return ModelMeta.model_validate_json(path.read_text())
    except ValidationError as err:
        raise ModelError(f"{path} is invalid: {err}") from err


def write_meta(directory: Path, meta: ModelMeta) -> None:
    """Write ``cascade.json`` into a model directory."""
    (directory / META_FILE).write_text(meta.model_dump_json(indent=2) + "\n")


def escalation_policy(source: ModelMeta | Mapping[str, Any] | None) -> EscalationPolicy:
    """The escalation policy fitted for a student: from its metadata, or from the ``policy``
    dict that metadata carries (as a serving replica passes it on); the default policy when
    there is none (a foreign model, a teacher).

    >>> escalation_policy(None).threshold
    0.7
    """
    policy = source.policy if isinstance(source, ModelMeta) else source
    return EscalationPolicy.from_dict(dict(policy)) if policy else EscalationPolicy()
