"""Fakes for driving the Ray-free ``CascadeService`` over its real FastAPI app
(``serving.http``): model clients that answer fixed rows, and ``make_service``, which builds a
service over them with its HTTP client. Importable from every test directory (pytest puts
``tests/`` on the path for its root conftest); a test module that calls ``make_service`` imports
``close_services`` too, so that the autouse fixture closes what its tests opened."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from distill.escalations import read_records
from serving.compose import build_service
from serving.config import CascadeConfig
from serving.guards import FEEDBACK_TOKEN_ENV, BearerToken, GuardSettings, InFlightLimit
from serving.http import build_api
from serving.metrics import DashboardFigures
from serving.service import CascadeService

LABELS = ["a", "b", "c"]
TOKEN = "s3cret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


class FakeModel:
    """A model client: every text gets ``row``; ``fail`` makes every call raise it."""

    def __init__(self, version: str, row, policy=None, labels=LABELS):
        self.version, self.row, self.policy, self.labels = version, np.asarray(row, dtype=float), policy, labels
        self.fail: Exception | None = None
        self.calls = 0

    async def predict(self, texts):
        from serving.cascade import ModelOutput

        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return ModelOutput(np.tile(self.row, (len(texts), 1)), self.version, self.policy)

    async def info(self):
        if self.fail is not None:
            raise self.fail
        return {"labels": self.labels, "version": self.version, "policy": self.policy}

    async def reload(self):
        return self.version


OPEN_SERVICES: list[CascadeService] = []


@pytest.fixture(autouse=True)
def close_services():
    """Close every service a test made: their log threads and files go with the test."""
    yield
    while OPEN_SERVICES:
        OPEN_SERVICES.pop().close()


def make_service(home: Path, student=None, teacher=None, feedback_token: str | None = None, feedback: dict | None = None, *,
                 admin_token: str | None = TOKEN, limits: dict | None = None, max_body_bytes: int = 1 << 20,
                 **routing) -> tuple[CascadeService, TestClient, Callable[[], list]]:
    """A service over fakes, its HTTP client, and a reader of its escalation log; the
    ``close_services`` fixture closes it. Audits
    are off unless a test sets ``audit_rate``: a random audit would consult the teacher on an item
    a test expects the student to answer alone. ``admin_token`` None turns the admin routes off;
    ``limits`` is the config's section, ``max_body_bytes`` the guard's byte cap."""
    routing.setdefault("audit_rate", 0.0)
    config = CascadeConfig.model_validate({"home": str(home), "routing": routing, "feedback": feedback or {}, **({"limits": limits} if limits else {})})
    student = student or FakeModel("student-v1", [0.5, 0.3, 0.2], {"threshold": 0.7})  # every item unsure
    teacher = teacher or FakeModel("teacher-v1", [0.1, 0.8, 0.1])
    in_flight = InFlightLimit(8)
    service = build_service(config, student, teacher, in_flight=in_flight, shared_check_every_s=0)
    OPEN_SERVICES.append(service)
    guard = GuardSettings(max_body_bytes=max_body_bytes, in_flight=in_flight, retry_after_s=1, admin_token=BearerToken(admin_token),
                          feedback_token=BearerToken(feedback_token, FEEDBACK_TOKEN_ENV, "feedback"))

    async def figures():
        return DashboardFigures(time=0.0)

    async def history():
        return []

    return service, TestClient(build_api(service, guard, figures, history, "cascade")), lambda: read_records(config.paths().escalations)
