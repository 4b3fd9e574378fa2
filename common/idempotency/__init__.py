"""Processed-key stores (idempotency) and job checkpoints: memory, SQLite, PostgreSQL.

``store_from_url`` picks one by URL: ``memory://``, ``sqlite:///absolute/path.db`` (or
``sqlite:relative/path.db``), ``postgresql://user:password@host:port/db`` (``postgres://``
too). The drivers (aiosqlite, asyncpg) are imported only when a store opens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from conveyor.common.lazy import lazy_exports
from conveyor.common.sql import parse_store_url

if TYPE_CHECKING:
    from conveyor.common.clock import Clock
    from conveyor.common.idempotency.base import (
        IdempotencyConflict,
        IdempotencyStoreUnavailable,
        ProcessedKeyStore,
        Record,
        StoreTransaction,
    )
    from conveyor.common.idempotency.memory import MemoryProcessedKeyStore
    from conveyor.common.idempotency.postgres import PostgresProcessedKeyStore
    from conveyor.common.idempotency.sqlite import SQLiteProcessedKeyStore

__all__ = [
    "IdempotencyConflict",
    "IdempotencyStoreUnavailable",
    "MemoryProcessedKeyStore",
    "PostgresProcessedKeyStore",
    "ProcessedKeyStore",
    "Record",
    "SQLiteProcessedKeyStore",
    "StoreTransaction",
    "store_from_url",
]


class _TablePrefix(TypedDict, total=False):
    table_prefix: str


def store_from_url(url: str, *, clock: Clock | None = None, table_prefix: str | None = None) -> ProcessedKeyStore:
    location = parse_store_url(url, what="idempotency store")
    prefix: _TablePrefix = {} if table_prefix is None else {"table_prefix": table_prefix}
    if location.kind == "memory":
        from conveyor.common.idempotency.memory import MemoryProcessedKeyStore

        return MemoryProcessedKeyStore(clock=clock)
    if location.kind == "sqlite":
        # The SQLite store loads the sqlite3 module (~1 MiB resident): only when it is asked for.
        from conveyor.common.idempotency.sqlite import SQLiteProcessedKeyStore

        return SQLiteProcessedKeyStore(location.target, clock=clock, **prefix)
    from conveyor.common.idempotency.postgres import PostgresProcessedKeyStore

    return PostgresProcessedKeyStore(location.target, clock=clock, **prefix)


# Each store's module (and the SQLite one's sqlite3, ~1 MiB resident) loads on first use: a
# worker that needs only the base class's types carries none of them (issue 18, worker RSS).
__getattr__ = lazy_exports(__name__, {
    ".base": ("IdempotencyConflict", "IdempotencyStoreUnavailable", "ProcessedKeyStore", "Record", "StoreTransaction"),
    ".memory": ("MemoryProcessedKeyStore",),
    ".postgres": ("PostgresProcessedKeyStore",),
    ".sqlite": ("SQLiteProcessedKeyStore",),
})
