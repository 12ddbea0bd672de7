"""Fixtures of the interop tests: a fake black-box teacher on a free port."""

from __future__ import annotations

import pytest

from fake_teacher import start_fake_teacher


@pytest.fixture(scope="module")
def fake_teacher():
    """A running fake teacher (see ``fake_teacher.py``); tests ``reset()`` it before use."""
    fake, server = start_fake_teacher()
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session", autouse=True)
def _haproxy_ports_of_their_own(own_haproxy_ports):
    """The cascades these tests start take free HAProxy ports (see ``own_haproxy_ports``)."""
