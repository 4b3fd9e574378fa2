"""Fixtures for tests against real servers. A missing server FAILS the test, never skips it.

Start the servers with ``scripts/services/<name>.sh up`` and export what it prints, e.g.
``CONVEYOR_AMQP_URL=$(scripts/services/rabbitmq.sh up | tail -n1)``.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator

import pytest

from conveyor.common.secrets import mask_url


def _require_env(name: str, how: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        pytest.fail(f"{name} is not set: integration tests need a real server ({how})", pytrace=False)
    return value


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The RabbitMQ under test; checked once per session with a real AMQP handshake."""
    url = _require_env("CONVEYOR_AMQP_URL", "run scripts/services/rabbitmq.sh up")

    async def probe() -> None:
        import aio_pika

        connection = await aio_pika.connect(url, timeout=10)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # any failure to reach or log in is fatal for these tests
        pytest.fail(
            f"RabbitMQ at {mask_url(url)} is unreachable: {type(exc).__name__}: {str(exc)[:300]}", pytrace=False
        )
    return url


@pytest.fixture(scope="session")
def pulsar_url() -> str:
    """The Pulsar under test; checked once per session (binary protocol and admin API)."""
    url = _require_env("CONVEYOR_PULSAR_URL", "run scripts/services/pulsar.sh up")

    async def probe() -> None:
        from conveyor.common.transport.pulsar import PulsarTransport

        transport = PulsarTransport(url, connect_timeout=15)
        await transport.connect()
        try:
            await transport._admin_client().subscriptions(transport.names.rest_path("conveyor-probe"))
        finally:
            await transport.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # any failure to reach the broker or its admin API is fatal for these tests
        pytest.fail(
            f"Pulsar at {mask_url(url)} is unreachable: {type(exc).__name__}: {str(exc)[:300]}", pytrace=False
        )
    return url


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    """A queue name no other test (or concurrent test run) uses."""
    name = re.sub(r"[^A-Za-z0-9_.:-]", "-", request.node.name[:40])  # ids hold '[', ' ' …
    return f"test.{name}.{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def transport(amqp_url: str, queue_name: str) -> AsyncIterator[object]:
    """A connected RabbitMQ transport with small test delay tiers and ``queue_name`` declared,
    deleted afterwards. Modules that need another transport define their own ``transport``."""
    from conveyor.common.transport.rabbitmq import RabbitMQTransport
    from tests.support.backends import TEST_DELAY_TIERS

    t = RabbitMQTransport(amqp_url, delay_tiers=TEST_DELAY_TIERS, connect_timeout=5)
    async with t:
        await t.declare(queue_name)
        try:
            yield t
        finally:
            await t.delete(queue_name)


@pytest.fixture(scope="session")
def database_url() -> str:
    url = os.environ.get("CONVEYOR_DATABASE_URL", "").strip()
    if not url:
        pytest.fail(
            "CONVEYOR_DATABASE_URL is not set: these tests need a real PostgreSQL "
            "(run scripts/services/postgres.sh up)",
            pytrace=False,
        )

    async def probe() -> None:
        import asyncpg

        connection = await asyncpg.connect(url, timeout=10)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {mask_url(url)} is unreachable: {type(exc).__name__}: {str(exc)[:300]}", pytrace=False)
    return url
