"""The lifecycle the database-backed stores share: table prefix, clock, ``async with``, and the
SQLite connection or PostgreSQL pool behind them.

The processed-key store (``common.idempotency``) and the job-state store (``common.job_state``)
each define their contract on ``Store``; their SQLite and PostgreSQL kinds inherit the
connection set-up from ``SQLiteStore`` or ``PostgresStore`` (next to the contract in the MRO,
``class SQLiteJobStateStore(SQLiteStore, JobStateStore)``) and give only their schema
(``_set_up``) and their own error class (``unavailable``). The drivers and ``sqlite3`` are
imported only when a store opens.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from conveyor.common.clock import Clock, SystemClock
from conveyor.common.sql import (
    check_schema_version,
    check_table_prefix,
    connect_sqlite,
    create_pg_pool,
    postgres_errors_as,
    sqlite_errors_as,
)

if TYPE_CHECKING:
    import aiosqlite

__all__ = ["DEFAULT_TABLE_PREFIX", "PostgresStore", "SQLiteStore", "Store"]

DEFAULT_TABLE_PREFIX = "conveyor_"
_CLOSE_TIMEOUT = 5.0


class Store(abc.ABC):
    """A store's table prefix, clock and lifecycle. ``async with store:`` opens and closes it.

    A contract sets ``schema_version`` and ``version_table_name`` (the table that records it)."""

    kind: ClassVar[str] = ""
    schema_version: ClassVar[int]
    version_table_name: ClassVar[str]

    def __init__(self, *, table_prefix: str = DEFAULT_TABLE_PREFIX, clock: Clock | None = None) -> None:
        self.table_prefix = check_table_prefix(table_prefix)
        self.clock = clock or SystemClock()
        self.version_table = f"{table_prefix}{self.version_table_name}"

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if needed; calling it again is a no-op."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; ``open`` may be called again afterwards."""

    def _cutoff(self, older_than: timedelta) -> datetime:
        if older_than < timedelta(0):
            raise ValueError("older_than must not be negative")
        return self.clock.now() - older_than

    def _check_schema_version(self, found: int | None) -> None:
        check_schema_version(self.version_table, found, self.schema_version)


class _Database(Store):
    """What the database kinds add: the schema set-up and the error their failures become."""

    unavailable: ClassVar[type[Exception]]

    @abc.abstractmethod
    async def _set_up(self, conn: Any) -> None:
        """Create or upgrade the schema on ``conn`` (inside a transaction the caller holds)."""


class SQLiteStore(_Database):
    """One autocommit connection in WAL mode, serialised by an ``asyncio.Lock``.

    ``synchronous``: FULL where a write must be on disk before a message is acked, NORMAL
    where the last writes may go on a power cut (WAL keeps the file intact)."""

    synchronous: ClassVar[str] = "FULL"

    def __init__(
        self,
        path: str | Path,
        *,
        table_prefix: str = DEFAULT_TABLE_PREFIX,
        clock: Clock | None = None,
        busy_timeout: float = 30.0,
    ) -> None:
        super().__init__(table_prefix=table_prefix, clock=clock)
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    def _mapped(self, what: str) -> contextlib.AbstractContextManager[None]:
        return sqlite_errors_as(self.unavailable, what)

    async def open(self) -> None:
        if self._conn is not None:
            return
        with self._mapped("open"):
            conn = await connect_sqlite(self.path, busy_timeout=self.busy_timeout, synchronous=self.synchronous)
            try:
                async with self._immediate(conn):
                    await self._set_up(conn)
            except BaseException:
                await conn.close()
                raise
        self._conn = conn

    async def close(self) -> None:
        import sqlite3

        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                await conn.close()

    @contextlib.asynccontextmanager
    async def _immediate(self, conn: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error. The write lock is taken
        up front, so two writers never deadlock on a lock upgrade."""
        import sqlite3

        with self._mapped("begin"):
            try:
                await conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                # Cancelled (a caller's timeout) while aiosqlite's thread ran the BEGIN: it still opens
                # the transaction, and every later BEGIN on this connection failed ("cannot start a
                # transaction within a transaction") for good. The ROLLBACK is queued behind it.
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
                raise
        try:
            yield conn
            with self._mapped("commit"):
                await conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            raise


class PostgresStore(_Database):
    """An asyncpg pool; the schema is set up under a transaction-scoped advisory lock (one id
    per table set), so processes starting together do not race on ``CREATE TABLE``."""

    default_max_size: ClassVar[int] = 10

    def __init__(
        self,
        dsn: str,
        *,
        table_prefix: str = DEFAULT_TABLE_PREFIX,
        clock: Clock | None = None,
        min_size: int = 1,
        max_size: int | None = None,
        command_timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(table_prefix=table_prefix, clock=clock)
        self._dsn = dsn
        self._sizes = (min_size, self.default_max_size if max_size is None else max_size)
        self._timeouts = (command_timeout, connect_timeout)
        self._pool: Any = None  # an asyncpg.Pool (asyncpg ships no type information)
        self._lock_id = int.from_bytes(hashlib.sha256(self.version_table.encode()).digest()[:8], "big", signed=True)

    def _mapped(self, what: str) -> contextlib.AbstractContextManager[None]:
        return postgres_errors_as(self.unavailable, what)

    async def open(self) -> None:
        if self._pool is not None:
            return
        with self._mapped("connect"):
            pool = await create_pg_pool(
                self._dsn, min_size=self._sizes[0], max_size=self._sizes[1],
                command_timeout=self._timeouts[0], connect_timeout=self._timeouts[1],
            )
        try:
            with self._mapped("schema set-up"):
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_id)
                    await self._set_up(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        """Bounded: a connection the network dropped mid-statement must not hold up a worker's
        shutdown (asyncpg's graceful close waits for it), so past 5 s the pool is terminated."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT)
            except Exception:
                pool.terminate()
