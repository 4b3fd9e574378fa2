"""The PostgreSQL job-state store (asyncpg): shared by every worker and producer of a deployment.

A pool serves the operations, each in its own transaction; a batch of transitions is one
``executemany`` in one transaction (one round trip per batch, not per job). The schema is
created under a transaction-scoped advisory lock, so processes starting together do not race.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from conveyor.common.errors import JobStateStoreUnavailable
from conveyor.common.job_state.sql_store import SqlConnection, SqlJobStateStore
from conveyor.common.sql import rows_affected
from conveyor.common.stores import PostgresStore

__all__ = ["PostgresJobStateStore"]


class _Connection(SqlConnection):
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        return rows_affected(await self._conn.execute(sql, *args))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return list(await self._conn.fetch(sql, *args))


class PostgresJobStateStore(PostgresStore, SqlJobStateStore):
    kind = "postgres"
    _for_update = " FOR UPDATE"
    unavailable = JobStateStoreUnavailable
    default_max_size = 4

    @staticmethod
    def placeholder(i: int) -> str:
        return f"${i}"

    def _to_db(self, value: datetime | None) -> Any:
        return value

    def _from_db(self, value: Any) -> datetime | None:
        return value  # type: ignore[no-any-return]

    async def _set_up(self, conn: Any) -> None:
        await self._migrate(_Connection(conn))

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[SqlConnection]:
        if self._pool is None:
            raise JobStateStoreUnavailable("the postgres job-state store is not open")
        with self._mapped("transaction"):
            async with self._pool.acquire() as conn, conn.transaction():
                yield _Connection(conn)
