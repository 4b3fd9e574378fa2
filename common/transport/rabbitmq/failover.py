"""A robust aio-pika connection that moves to the next node of a cluster when it loses one.

aio-pika's ``RobustConnection`` reconnects to the one URL it was given. Each reconnect attempt
goes through its private ``__connect_transport``; ``FailoverConnection`` overrides exactly that
step to point the attempt at the next host of the cluster URL (``rabbitmq.addresses``), round
and round, every ``reconnect_interval``, until one answers. Everything else (channels reopened,
consumers restored, the reconnect callbacks the consumers re-attach with) is aio-pika's.
``open_connection`` makes the *first* connection: it tries each host in turn and fails only
when none answers. The hook's name is checked at import (aio-pika is pinned; a release that
renames it fails loudly here instead of silently sticking to one host).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
from aio_pika.robust_connection import RobustConnection
from yarl import URL

__all__ = ["FailoverConnection", "open_failover"]

log = logging.getLogger(__name__)

_HOOK = "_RobustConnection__connect_transport"
_connect_transport: Callable[[RobustConnection], Awaitable[None]] = getattr(RobustConnection, _HOOK)


class FailoverConnection(RobustConnection):
    """``RobustConnection`` over several single-host URLs, tried in turn (see module docs)."""

    def __init__(self, url: URL, *args: Any, addresses: Sequence[str] = (), start: int = 0, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        self._addresses = [URL(address) for address in addresses] or [self.url]
        self._next = start
        self._serving: int | None = None  # index of the host of the open connection

    @property
    def host_index(self) -> int | None:
        return self._serving

    async def _RobustConnection__connect_transport(self) -> None:
        index = self._next % len(self._addresses)
        self._next = index + 1
        self.url = self._addresses[index]
        if self._serving is not None:
            host, port = self._addresses[self._serving].host, self._addresses[self._serving].port
            log.warning("RabbitMQ: connection to %s:%s lost; reconnecting to %s:%s", host, port, self.url.host,
                        self.url.port)
        self._serving = None
        await _connect_transport(self)
        self._serving = index


async def open_failover(urls: Sequence[str], **kwargs: Any) -> tuple[FailoverConnection, list[BaseException]]:
    """The first host that accepts a connection, tried in order, and the errors of those before.

    Raises the last host's error when none accepts (the caller words it).
    """
    errors: list[BaseException] = []
    for start, url in enumerate(urls):
        try:
            connection = await aio_pika.connect_robust(
                url, connection_class=FailoverConnection, addresses=urls, start=start, **kwargs
            )
        except Exception as exc:
            errors.append(exc)
            if start == len(urls) - 1:
                raise
            log.warning("RabbitMQ: %s:%s does not answer (%s); trying the next host",
                        URL(url).host, URL(url).port, type(exc).__name__)
            continue
        return connection, errors
    raise AssertionError("no URL given")  # pragma: no cover - urls is never empty
