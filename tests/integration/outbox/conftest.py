"""Outbox fixtures: the real PostgreSQL, one fresh outbox table per test (dropped after)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from conveyor.producer.outbox.schema import migrate
from tests.integration.conftest import amqp_url, pulsar_url  # noqa: F401 - shared fixtures

# database_url: tests/integration/conftest.py's, inherited


async def drop_outbox(database_url: str, table: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(f"DROP TABLE IF EXISTS {table}; DROP FUNCTION IF EXISTS {table}_notify()")
    finally:
        await connection.close()


@pytest.fixture
async def bare_table(database_url: str) -> AsyncIterator[str]:
    """A unique outbox table name, not created; dropped after the test."""
    table = f"outbox_{uuid.uuid4().hex[:12]}"
    yield table
    await drop_outbox(database_url, table)


@pytest.fixture
async def table(database_url: str, bare_table: str) -> str:
    """A unique, migrated outbox table."""
    connection = await asyncpg.connect(database_url)
    try:
        await migrate(connection, bare_table)
    finally:
        await connection.close()
    return bare_table


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()
