"""A free TCP port for a test's server (importable from every test directory: pytest puts
``tests/`` on the path for its root conftest)."""

import socket


def free_port() -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
