"""The SQLite processed-key store (aiosqlite): one file, WAL mode, for one machine.

One connection per store, in autocommit mode; every write that needs two statements runs in
``BEGIN IMMEDIATE`` (it takes the write lock up front, so two writers never deadlock on a
lock upgrade). An ``asyncio.Lock`` serialises the store's operations on that connection, and
a ``transaction()`` holds it until it commits: SQLite has one writer at a time anyway, so keep
handler transactions short. Other processes on the same file wait up to ``busy_timeout``.

``synchronous=FULL``: a success recorded is on disk before the message is acked; WAL keeps
readers from blocking the writer. Timestamps are stored as Unix seconds (REAL).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from conveyor.common.idempotency.base import (
    SCHEMA_VERSION,
    STATUS_SUCCEEDED,
    IdempotencyStoreUnavailable,
    ProcessedKeyStore,
    Record,
    StoreTransaction,
    decode_state,
    encode_state,
)
from conveyor.common.stores import SQLiteStore

if TYPE_CHECKING:
    import aiosqlite

__all__ = ["SQLiteProcessedKeyStore"]


class SQLiteProcessedKeyStore(SQLiteStore, ProcessedKeyStore):
    kind = "sqlite"
    unavailable = IdempotencyStoreUnavailable

    async def journal_mode(self) -> str:
        async with self._using() as conn, conn.execute("PRAGMA journal_mode") as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else ""

    async def _set_up(self, conn: aiosqlite.Connection) -> None:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.version_table} ("
            " version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        async with conn.execute(f"SELECT max(version) FROM {self.version_table}") as cursor:
            row = await cursor.fetchone()
        self._check_schema_version(row[0] if row else None)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.keys_table} ("
            " key TEXT PRIMARY KEY, status TEXT NOT NULL, payload_hash TEXT NOT NULL,"
            " job_id TEXT NOT NULL, finished_at REAL NOT NULL) WITHOUT ROWID"
        )
        await conn.execute(
            f"CREATE INDEX IF NOT EXISTS {self.keys_table}_finished_at ON {self.keys_table} (finished_at)"
        )
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.checkpoints_table} ("
            " job_id TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL) WITHOUT ROWID"
        )
        await conn.execute(
            f"CREATE INDEX IF NOT EXISTS {self.checkpoints_table}_updated_at"
            f" ON {self.checkpoints_table} (updated_at)"
        )
        await conn.execute(
            f"INSERT OR IGNORE INTO {self.version_table} (version, applied_at) VALUES (?, ?)",
            (SCHEMA_VERSION, self._now()),
        )

    # -- plumbing ----------------------------------------------------------------------
    def _now(self) -> float:
        return self.clock.now().timestamp()

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection: the open transaction's (same task), else the shared one, locked."""
        tx = self._active()
        if tx is not None:
            yield tx.connection
            return
        async with self._lock:
            if self._conn is None:
                raise IdempotencyStoreUnavailable("the sqlite store is not open")
            yield self._conn

    @contextlib.asynccontextmanager
    async def _atomic(self) -> AsyncIterator[aiosqlite.Connection]:
        """Several statements as one: inside the open transaction, or a short one of their own."""
        in_tx = self._active() is not None
        async with self._using() as conn:
            if in_tx:
                yield conn
                return
            async with self._immediate(conn):
                yield conn

    async def _fetch_record(self, conn: aiosqlite.Connection, key: str) -> Record | None:
        sql = f"SELECT key, status, payload_hash, job_id, finished_at FROM {self.keys_table} WHERE key = ?"
        async with conn.execute(sql, (key,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        return Record(row[0], row[1], row[2], row[3], datetime.fromtimestamp(row[4], UTC))

    # -- operations --------------------------------------------------------------------
    async def get(self, key: str) -> Record | None:
        with self._mapped("get"):
            async with self._using() as conn:
                return await self._fetch_record(conn, key)

    async def record_success(self, key: str, payload_hash: str, job_id: str) -> bool:
        with self._mapped("record_success"):
            async with self._atomic() as conn:
                cursor = await conn.execute(
                    f"INSERT OR IGNORE INTO {self.keys_table} (key, status, payload_hash, job_id, finished_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (key, STATUS_SUCCEEDED, payload_hash, job_id, self._now()),
                )
                if cursor.rowcount == 1:
                    await conn.execute(f"DELETE FROM {self.checkpoints_table} WHERE job_id = ?", (job_id,))
                    return True
                existing = await self._fetch_record(conn, key)
        # Within BEGIN IMMEDIATE nobody can delete it between the two statements.
        assert existing is not None
        return self._compare(key, payload_hash, existing)

    async def save_checkpoint(self, job_id: str, state: dict[str, Any]) -> None:
        data = encode_state(state).decode()
        with self._mapped("save_checkpoint"):
            async with self._using() as conn:
                await conn.execute(
                    f"INSERT INTO {self.checkpoints_table} (job_id, state, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                    (job_id, data, self._now()),
                )

    async def load_checkpoint(self, job_id: str) -> dict[str, Any] | None:
        with self._mapped("load_checkpoint"):
            async with self._using() as conn:
                sql = f"SELECT state FROM {self.checkpoints_table} WHERE job_id = ?"
                async with conn.execute(sql, (job_id,)) as cursor:
                    row = await cursor.fetchone()
        return None if row is None else decode_state(row[0])

    async def clear_checkpoint(self, job_id: str) -> None:
        with self._mapped("clear_checkpoint"):
            async with self._using() as conn:
                await conn.execute(f"DELETE FROM {self.checkpoints_table} WHERE job_id = ?", (job_id,))

    async def expire(self, older_than: timedelta) -> int:
        cutoff = self._cutoff(older_than).timestamp()
        with self._mapped("expire"):
            async with self._atomic() as conn:
                cursor = await conn.execute(f"DELETE FROM {self.keys_table} WHERE finished_at < ?", (cutoff,))
                deleted = cursor.rowcount
                await conn.execute(f"DELETE FROM {self.checkpoints_table} WHERE updated_at < ?", (cutoff,))
        return max(0, deleted)

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[StoreTransaction]:
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise IdempotencyStoreUnavailable("the sqlite store is not open")
            async with self._immediate(conn):
                yield StoreTransaction(self, conn)
