"""The outbox migration (SQL file and function) and the schema check a relay runs at start."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from conveyor.common.errors import ConfigurationError
from conveyor.producer.outbox.schema import check_schema, migrate, migration_sql


async def test_migrations_racing_and_repeated_leave_one_complete_schema(database_url: str, bare_table: str) -> None:
    connections = [await asyncpg.connect(database_url) for _ in range(5)]
    try:
        await asyncio.gather(*(migrate(c, bare_table) for c in connections))  # five pods starting at once
        for _ in range(20):
            await migrate(connections[0], bare_table)
        await check_schema(connections[0], bare_table)
        triggers = await connections[0].fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal", bare_table)
        assert triggers == 1
    finally:
        for connection in connections:
            await connection.close()


async def test_the_check_names_everything_that_is_missing(db: asyncpg.Connection, bare_table: str) -> None:
    with pytest.raises(ConfigurationError, match=f"outbox table '{bare_table}' does not exist: run 'conveyor outbox migrate'"):
        await check_schema(db, bare_table)
    await db.execute(migration_sql(bare_table))  # the shipped SQL, as an application's migration runs it
    await check_schema(db, bare_table)
    await db.execute(f"ALTER TABLE {bare_table} DROP COLUMN ordering_key, DROP COLUMN attempts;"
                     f" DROP INDEX {bare_table}_unsent; DROP TRIGGER {bare_table}_notify ON {bare_table}")
    with pytest.raises(ConfigurationError) as caught:
        await check_schema(db, bare_table)
    message = str(caught.value)
    assert "\n" not in message
    for part in ("column attempts", "column ordering_key", f"index {bare_table}_unsent", f"trigger {bare_table}_notify"):
        assert part in message
    await migrate(db, bare_table)  # completes what it can: the index and the trigger
    with pytest.raises(ConfigurationError, match="missing column attempts, column ordering_key: run") as caught:
        await check_schema(db, bare_table)


@pytest.mark.parametrize("name", ["Outbox", "drop table x", "a.b", "x" * 52, ""])
def test_a_table_name_that_is_not_a_plain_identifier_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="not a lower-case SQL identifier"):
        migration_sql(name)


async def test_failed_and_requeue_on_a_missing_table_say_to_migrate(db: asyncpg.Connection, bare_table: str) -> None:
    # `conveyor outbox failed|requeue` on a table not created yet answered PostgreSQL's
    # "relation … does not exist", where `check` and the relay say what to run.
    from conveyor.producer.outbox.admin import failed_rows, requeue_failed

    expected = f"outbox table '{bare_table}' does not exist: run 'conveyor outbox migrate'"
    with pytest.raises(ConfigurationError, match=expected):
        await failed_rows(db, bare_table)
    for ids in (None, [1]):
        with pytest.raises(ConfigurationError, match=expected):
            await requeue_failed(db, bare_table, ids=ids)
    await migrate(db, bare_table)
    assert await failed_rows(db, bare_table) == []
    assert await requeue_failed(db, bare_table) == 0
    assert await requeue_failed(db, bare_table) == 0  # again: nothing to requeue, no error
