"""Fixtures of the metrics tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _haproxy_ports_of_their_own(own_haproxy_ports):
    """The cascades these tests start take free HAProxy ports (see ``own_haproxy_ports``)."""
