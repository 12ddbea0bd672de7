"""A free TCP port for a test's server (importable from every test directory: pytest puts
``tests/`` on the path for its root conftest).

The port comes from below the kernel's ephemeral range, never from it: a port the kernel picked
for us is free again the moment we close the probe, and a Ray node starting before our server
binds it may be given the same number for one of its own listeners or outgoing connections. If
that port was the node's ``metrics.port``, Ray's agent cannot bind it and ``ray.init`` times out
after half a minute, as CI saw once. Ray's own listeners (``ray.init`` starts them on port 0) and
the workers of a ``ray start`` cluster (10002-19999 by default) stay out of the range used here."""

import random
import socket
from pathlib import Path

_LOWEST = 20_000
_handed_out: set[int] = set()  # never the same port twice in one test session


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out on its own (Linux's default where it is unreadable)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A port nothing is bound to now, which the kernel will not hand to anyone else."""
    highest = _ephemeral_low() - 1
    if highest - _LOWEST < 1000:  # the kernel hands out (nearly) every port: let it pick one
        with socket.socket() as probe:
            probe.bind(("", 0))
            return probe.getsockname()[1]
    for _ in range(1000):
        port = random.randint(_LOWEST, highest)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port between {_LOWEST} and {highest}")
