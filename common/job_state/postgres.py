"""The PostgreSQL job-state store (asyncpg): shared by every worker and producer of a deployment.

A pool serves the operations, each in its own transaction; a batch of transitions is one
``executemany`` in one transaction (one round trip per batch, not per job). The schema is
created under a transaction-scoped advisory lock, so processes starting together do not race.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from conveyor.common.clock import Clock
from conveyor.common.errors import JobStateStoreUnavailable
from conveyor.common.job_state.base import DEFAULT_TABLE_PREFIX
from conveyor.common.job_state.sql_store import SqlConnection, SqlJobStateStore
from conveyor.common.sql import create_pg_pool, postgres_errors_as, rows_affected

__all__ = ["PostgresJobStateStore"]


def _mapped(what: str) -> contextlib.AbstractContextManager[None]:
    return postgres_errors_as(JobStateStoreUnavailable, what)


class _Connection(SqlConnection):
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        return rows_affected(await self._conn.execute(sql, *args))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return list(await self._conn.fetch(sql, *args))


class PostgresJobStateStore(SqlJobStateStore):
    kind = "postgres"
    _for_update = " FOR UPDATE"

    def __init__(
        self,
        dsn: str,
        *,
        table_prefix: str = DEFAULT_TABLE_PREFIX,
        clock: Clock | None = None,
        min_size: int = 1,
        max_size: int = 4,
        command_timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(table_prefix=table_prefix, clock=clock)
        self._dsn = dsn
        self._sizes = (min_size, max_size)
        self._timeouts = (command_timeout, connect_timeout)
        self._pool: Any = None
        self._lock_id = int.from_bytes(hashlib.sha256(self.version_table.encode()).digest()[:8], "big", signed=True)

    @staticmethod
    def placeholder(i: int) -> str:
        return f"${i}"

    def _to_db(self, value: datetime | None) -> Any:
        return value

    def _from_db(self, value: Any) -> datetime | None:
        return value  # type: ignore[no-any-return]

    async def open(self) -> None:
        if self._pool is not None:
            return
        with _mapped("connect"):
            pool = await create_pg_pool(
                self._dsn, min_size=self._sizes[0], max_size=self._sizes[1],
                command_timeout=self._timeouts[0], connect_timeout=self._timeouts[1],
            )
        try:
            with _mapped("schema set-up"):
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_id)
                    await self._migrate(_Connection(conn))
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[SqlConnection]:
        if self._pool is None:
            raise JobStateStoreUnavailable("the postgres job-state store is not open")
        with _mapped("transaction"):
            async with self._pool.acquire() as conn, conn.transaction():
                yield _Connection(conn)
