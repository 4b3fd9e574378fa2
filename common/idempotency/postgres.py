"""The PostgreSQL processed-key store (asyncpg): shared by every worker of a deployment.

``record_success`` is ``INSERT … ON CONFLICT (key) DO NOTHING`` followed, when nothing was
inserted, by a look at the row that won: same payload hash → ``False`` (a duplicate), another
→ ``IdempotencyConflict``. Two connections recording the same key at once: the second insert
waits on the first one's row lock and then does nothing, so exactly one wins, also inside
``transaction()`` (where the loser's effects roll back with it).

A connection pool serves the operations; ``transaction()`` holds one connection for its
duration. The schema is created under a transaction-scoped advisory lock, so workers starting
together do not race on ``CREATE TABLE IF NOT EXISTS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
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
from conveyor.common.sql import rows_affected
from conveyor.common.stores import PostgresStore

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PostgresProcessedKeyStore"]


class PostgresProcessedKeyStore(PostgresStore, ProcessedKeyStore):
    kind = "postgres"
    unavailable = IdempotencyStoreUnavailable

    async def _set_up(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.version_table} ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        self._check_schema_version(await conn.fetchval(f"SELECT max(version) FROM {self.version_table}"))
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.keys_table} ("
            " key text PRIMARY KEY, status text NOT NULL, payload_hash text NOT NULL,"
            " job_id text NOT NULL, finished_at timestamptz NOT NULL)"
        )
        await conn.execute(
            f"CREATE INDEX IF NOT EXISTS {self.keys_table}_finished_at ON {self.keys_table} (finished_at)"
        )
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.checkpoints_table} ("
            " job_id text PRIMARY KEY, state jsonb NOT NULL, updated_at timestamptz NOT NULL)"
        )
        await conn.execute(
            f"CREATE INDEX IF NOT EXISTS {self.checkpoints_table}_updated_at"
            f" ON {self.checkpoints_table} (updated_at)"
        )
        await conn.execute(
            f"INSERT INTO {self.version_table} (version) VALUES ($1) ON CONFLICT DO NOTHING", SCHEMA_VERSION
        )

    async def drop_schema(self) -> None:
        """Drop this store's tables (tests and decommissioning only)."""
        with self._mapped("drop"):
            async with self._using() as conn:
                for table in (self.checkpoints_table, self.keys_table, self.version_table):
                    await conn.execute(f"DROP TABLE IF EXISTS {table}")

    # -- plumbing ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[asyncpg.Connection]:
        """The open transaction's connection (same task), else one from the pool."""
        tx = self._active()
        if tx is not None:
            yield tx.connection
            return
        if self._pool is None:
            raise IdempotencyStoreUnavailable("the postgres store is not open")
        async with self._pool.acquire() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _atomic(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._using() as conn:
            if self._active() is not None:
                yield conn  # already inside the caller's transaction
                return
            async with conn.transaction():
                yield conn

    async def _fetch_record(self, conn: asyncpg.Connection, key: str) -> Record | None:
        row = await conn.fetchrow(
            f"SELECT key, status, payload_hash, job_id, finished_at FROM {self.keys_table} WHERE key = $1", key
        )
        if row is None:
            return None
        return Record(row["key"], row["status"], row["payload_hash"], row["job_id"], row["finished_at"])

    # -- operations --------------------------------------------------------------------
    async def get(self, key: str) -> Record | None:
        with self._mapped("get"):
            async with self._using() as conn:
                return await self._fetch_record(conn, key)

    async def record_success(self, key: str, payload_hash: str, job_id: str) -> bool:
        with self._mapped("record_success"):
            for _ in range(3):  # the winner may expire between our insert and our look: insert again
                async with self._atomic() as conn:
                    status = await conn.execute(
                        f"INSERT INTO {self.keys_table} (key, status, payload_hash, job_id, finished_at)"
                        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
                        key, STATUS_SUCCEEDED, payload_hash, job_id, self.clock.now(),
                    )
                    if rows_affected(status) == 1:
                        await conn.execute(f"DELETE FROM {self.checkpoints_table} WHERE job_id = $1", job_id)
                        return True
                    existing = await self._fetch_record(conn, key)
                if existing is not None:
                    return self._compare(key, payload_hash, existing)
        raise IdempotencyStoreUnavailable("record_success could neither insert nor find the key")

    async def save_checkpoint(self, job_id: str, state: dict[str, Any]) -> None:
        data = encode_state(state).decode()
        with self._mapped("save_checkpoint"):
            async with self._using() as conn:
                await conn.execute(
                    f"INSERT INTO {self.checkpoints_table} (job_id, state, updated_at) VALUES ($1, $2::jsonb, $3)"
                    " ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                    job_id, data, self.clock.now(),
                )

    async def load_checkpoint(self, job_id: str) -> dict[str, Any] | None:
        with self._mapped("load_checkpoint"):
            async with self._using() as conn:
                data = await conn.fetchval(
                    f"SELECT state::text FROM {self.checkpoints_table} WHERE job_id = $1", job_id
                )
        return None if data is None else decode_state(data)

    async def clear_checkpoint(self, job_id: str) -> None:
        with self._mapped("clear_checkpoint"):
            async with self._using() as conn:
                await conn.execute(f"DELETE FROM {self.checkpoints_table} WHERE job_id = $1", job_id)

    async def expire(self, older_than: timedelta) -> int:
        cutoff = self._cutoff(older_than)
        with self._mapped("expire"):
            async with self._atomic() as conn:
                status = await conn.execute(f"DELETE FROM {self.keys_table} WHERE finished_at < $1", cutoff)
                deleted = rows_affected(status)
                await conn.execute(f"DELETE FROM {self.checkpoints_table} WHERE updated_at < $1", cutoff)
        return deleted

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[StoreTransaction]:
        if self._pool is None:
            raise IdempotencyStoreUnavailable("the postgres store is not open")
        with self._mapped("acquire"):
            conn = await self._pool.acquire()
        try:
            transaction = conn.transaction()
            with self._mapped("begin"):
                await transaction.start()
            try:
                yield StoreTransaction(self, conn)
            except BaseException:
                with contextlib.suppress(Exception):
                    await transaction.rollback()
                raise
            with self._mapped("commit"):
                await transaction.commit()
        finally:
            await self._pool.release(conn)
