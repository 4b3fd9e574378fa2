"""The PostgreSQL processed-key store against a REAL server: the shared store contract, plus
races between connections, concurrent schema set-up and an unreachable server.

Needs ``CONVEYOR_DATABASE_URL`` (``scripts/services/postgres.sh up`` prints it); a missing or
unreachable server fails these tests, it never skips them. Each test works in tables of its
own prefix and drops them afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from conveyor.common.clock import FakeClock
from conveyor.common.errors import ConfigurationError
from conveyor.common.idempotency.base import IdempotencyStoreUnavailable, ProcessedKeyStore
from conveyor.common.idempotency.postgres import PostgresProcessedKeyStore
from tests.support.idempotency_contract import *  # noqa: F403 - the shared contract tests
from tests.support.idempotency_contract import Effects, PostgresEffects

HASH = "c" * 64


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}_"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(database_url: str, prefix: str, clock: FakeClock) -> AsyncIterator[PostgresProcessedKeyStore]:
    chosen = PostgresProcessedKeyStore(database_url, table_prefix=prefix, clock=clock, max_size=4)
    async with chosen:
        try:
            yield chosen
        finally:
            await chosen.drop_schema()
            async with chosen.transaction() as tx:
                await tx.connection.execute(f"DROP TABLE IF EXISTS {prefix}effects")


@pytest.fixture
async def second_store(
    database_url: str, prefix: str, clock: FakeClock, store: ProcessedKeyStore
) -> AsyncIterator[ProcessedKeyStore]:
    # Its own pool: its own connections, as another worker process would have.
    async with PostgresProcessedKeyStore(database_url, table_prefix=prefix, clock=clock, max_size=4) as other:
        yield other


@pytest.fixture
def effects(prefix: str) -> Effects:
    return PostgresEffects(f"{prefix}effects")


async def test_many_connections_racing_for_one_key_have_exactly_one_winner(
    database_url: str, store: PostgresProcessedKeyStore, prefix: str, clock: FakeClock
) -> None:
    others = [PostgresProcessedKeyStore(database_url, table_prefix=prefix, clock=clock, max_size=1) for _ in range(6)]
    try:
        await asyncio.gather(*(o.open() for o in others))
        results = await asyncio.gather(
            *(o.record_success("t.job:hot", HASH, f"job-{i}") for i, o in enumerate(others))
        )
        assert results.count(True) == 1 and results.count(False) == 5
        record = await store.get("t.job:hot")
        assert record is not None and record.job_id == f"job-{results.index(True)}"
    finally:
        await asyncio.gather(*(o.close() for o in others))


async def test_workers_starting_together_set_up_the_schema_once(database_url: str, clock: FakeClock) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    stores = [PostgresProcessedKeyStore(database_url, table_prefix=prefix, clock=clock, max_size=1) for _ in range(5)]
    try:
        await asyncio.gather(*(s.open() for s in stores))  # concurrent CREATE … IF NOT EXISTS
        assert await stores[0].record_success("t.job:k", HASH, "job-1") is True
        assert await stores[4].record_success("t.job:k", HASH, "job-2") is False
    finally:
        await stores[0].drop_schema()
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_schema_newer_than_this_code_is_refused(
    database_url: str, store: PostgresProcessedKeyStore, prefix: str
) -> None:
    async with store.transaction() as tx:
        assert await tx.connection.fetchval(f"SELECT max(version) FROM {prefix}idempotency_schema") == 1
        await tx.connection.execute(f"INSERT INTO {prefix}idempotency_schema (version) VALUES (99)")
    newer = PostgresProcessedKeyStore(database_url, table_prefix=prefix)
    with pytest.raises(ConfigurationError, match="newer"):
        await newer.open()
    await newer.close()


async def test_an_unreachable_server_is_a_retryable_error_without_the_password() -> None:
    store = PostgresProcessedKeyStore(
        "postgresql://conveyor:hunter2@127.0.0.1:1/conveyor", connect_timeout=2.0, min_size=0
    )
    with pytest.raises(IdempotencyStoreUnavailable) as caught:
        await store.open()
    assert "hunter2" not in str(caught.value)
    with pytest.raises(IdempotencyStoreUnavailable):
        await store.get("t.job:k")  # never opened
