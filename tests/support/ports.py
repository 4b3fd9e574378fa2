"""A TCP port on 127.0.0.1 that nothing listens on, for a subprocess's HTTP endpoints."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
