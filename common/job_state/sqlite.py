"""The SQLite job-state store (aiosqlite): one file, WAL mode, for one machine.

One connection, serialised by an ``asyncio.Lock``; every operation runs in ``BEGIN IMMEDIATE``
(the write lock up front: two writers never deadlock on a lock upgrade). ``synchronous=NORMAL``:
the state records are an account of the jobs, not what keeps them (the broker does), so the
last writes before a power cut may go; WAL keeps the file intact. Times are Unix seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from conveyor.common.errors import JobStateStoreUnavailable
from conveyor.common.job_state.sql_store import SqlConnection, SqlJobStateStore
from conveyor.common.stores import SQLiteStore

if TYPE_CHECKING:
    import aiosqlite

__all__ = ["SQLiteJobStateStore"]


class _Connection(SqlConnection):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = await self._conn.execute(sql, args)
        return max(0, cursor.rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        async with self._conn.execute(sql, args) as cursor:
            return list(await cursor.fetchall())


class SQLiteJobStateStore(SQLiteStore, SqlJobStateStore):
    kind = "sqlite"
    time_type = "REAL"
    text_type = "TEXT"

    unavailable = JobStateStoreUnavailable
    synchronous = "NORMAL"

    @staticmethod
    def placeholder(i: int) -> str:
        return f"?{i}"

    def _to_db(self, value: datetime | None) -> Any:
        return None if value is None else value.timestamp()

    def _from_db(self, value: Any) -> datetime | None:
        return None if value is None else datetime.fromtimestamp(value, UTC)

    def _add_column_sql(self, table: str, column: str, type_: str) -> str:
        return f"ALTER TABLE {table} ADD COLUMN {column} {type_}"  # no IF NOT EXISTS: see _missing_column

    async def _missing_column(self, conn: SqlConnection, table: str, column: str) -> bool:
        rows = await conn.fetch(f"SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1", column)
        return not rows

    async def _set_up(self, conn: aiosqlite.Connection) -> None:
        await self._migrate(_Connection(conn))

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[SqlConnection]:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise JobStateStoreUnavailable("the sqlite job-state store is not open")
            async with self._immediate(conn):
                with self._mapped("statement"):
                    yield _Connection(conn)
