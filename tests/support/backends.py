"""Which brokers the shared suites run against, and how to reach them.

``CONVEYOR_TEST_BACKENDS`` (default ``memory,rabbitmq,pulsar``) lists them. A listed real broker
without its URL is a hard failure: run ``scripts/test`` (which starts the servers) or set
``CONVEYOR_AMQP_URL`` / ``CONVEYOR_PULSAR_URL`` yourself. Nothing is skipped.

The list itself is checked when the suites are collected (``pytest.UsageError``): an empty list
or an unknown name always, and under CI (``CI=true``) a list without both real brokers, so the
suite can never pass without running where it matters. Locally a subset runs (the report
header says what it leaves out).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from conveyor.common.transport.base import Transport
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport

__all__ = ["ALL_BACKENDS", "Backend", "backend_names", "left_out", "make_backend", "require_env"]

# Small delay tiers so retry tests take well under a second per hop on RabbitMQ.
TEST_DELAY_TIERS = (0.2, 0.5, 1.0, 2.0, 5.0)


ALL_BACKENDS = ("memory", "rabbitmq", "pulsar")
REAL_BACKENDS = ("rabbitmq", "pulsar")


def backend_names() -> list[str]:
    """The backends the shared suites run on; a list that would let them pass without running
    where they must is a ``pytest.UsageError``."""
    raw = os.environ.get("CONVEYOR_TEST_BACKENDS", ",".join(ALL_BACKENDS))
    names = list(dict.fromkeys(name.strip() for name in raw.split(",") if name.strip()))
    if not names:
        raise pytest.UsageError(
            f"CONVEYOR_TEST_BACKENDS={raw!r} lists no backend: the conformance suite would run nothing; "
            f"unset it for {','.join(ALL_BACKENDS)}"
        )
    for name in names:
        if name not in ALL_BACKENDS:
            raise pytest.UsageError(
                f"CONVEYOR_TEST_BACKENDS: unknown backend {name!r} (known: {', '.join(ALL_BACKENDS)})"
            )
    missing = [name for name in REAL_BACKENDS if name not in names]
    if missing and os.environ.get("CI") == "true":
        raise pytest.UsageError(
            f"CONVEYOR_TEST_BACKENDS={raw!r} lacks {', '.join(missing)}: under CI the conformance suite "
            "runs on the real brokers (scripts/test starts them)"
        )
    return names


def left_out(names: list[str]) -> list[str]:
    return [name for name in ALL_BACKENDS if name not in names]


def require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: run scripts/test (it starts the servers) or export {name}",
            pytrace=False,
        )
    return value


@dataclass
class Backend:
    name: str
    _factory: Callable[[], Transport]
    queue: str = field(default_factory=lambda: f"conformance.{uuid.uuid4().hex[:12]}")
    opened: list[Transport] = field(default_factory=list)
    memory: MemoryBroker | None = None

    async def transport(self) -> Transport:
        """A new connected transport (a new connection, as a separate process would have)."""
        transport = self._factory()
        await transport.connect()
        self.opened.append(transport)
        return transport

    async def close_all(self) -> None:
        # Remove this test's queues: quorum queues left behind pile up on a long-lived broker.
        if self.opened:
            cleaner = self._factory()
            try:
                await cleaner.connect()
                await cleaner.delete(self.queue)
                await cleaner.close()
            except Exception:
                pass
        for transport in reversed(self.opened):
            try:
                await transport.close()
            except Exception:
                pass


def make_backend(name: str) -> Backend:
    if name == "memory":
        broker = MemoryBroker()
        return Backend(name, lambda: MemoryTransport(broker), memory=broker)
    if name == "rabbitmq":
        from conveyor.common.transport.rabbitmq import RabbitMQTransport

        url = require_env("CONVEYOR_AMQP_URL")
        return Backend(name, lambda: RabbitMQTransport(url, delay_tiers=TEST_DELAY_TIERS))
    if name == "pulsar":
        from conveyor.common.transport.factory import transport_from_url

        url = require_env("CONVEYOR_PULSAR_URL")
        return Backend(name, lambda: transport_from_url(url))
    raise ValueError(f"unknown test backend {name!r}")
