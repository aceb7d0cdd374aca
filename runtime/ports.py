"""Free TCP ports for processes started on this machine (tests, the demo, benchmarks).

The kernel may hand the same ephemeral port to two `bind(0)` calls once the first socket is
closed, so a port is never given out twice by one process: two services told to use the same
port would otherwise collide (or, with SO_REUSEPORT, silently share it).
"""

from __future__ import annotations

import socket

_given: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, distinct from every port this process was given."""
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port
    raise RuntimeError("no free TCP port found")
