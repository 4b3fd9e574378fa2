"""Processed-key stores (idempotency) and job checkpoints: memory, SQLite, PostgreSQL.

``store_from_url`` picks one by URL: ``memory://``, ``sqlite:///absolute/path.db`` (or
``sqlite:relative/path.db``), ``postgresql://user:password@host:port/db`` (``postgres://``
too). The drivers (aiosqlite, asyncpg) are imported only when a store opens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict
from urllib.parse import urlsplit

from conveyor.common.clock import Clock
from conveyor.common.errors import ConfigurationError
from conveyor.common.extras import require
from conveyor.common.idempotency.base import (
    IdempotencyConflict,
    IdempotencyStoreUnavailable,
    ProcessedKeyStore,
    Record,
    StoreTransaction,
)
from conveyor.common.idempotency.memory import MemoryProcessedKeyStore
from conveyor.common.idempotency.postgres import PostgresProcessedKeyStore

if TYPE_CHECKING:
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
    scheme = urlsplit(url).scheme.lower()
    prefix: _TablePrefix = {} if table_prefix is None else {"table_prefix": table_prefix}
    if scheme == "memory":
        return MemoryProcessedKeyStore(clock=clock)
    if scheme == "sqlite":
        path = url[len("sqlite:") :]
        path = path[2:] if path.startswith("//") else path  # sqlite:///abs → /abs
        if not path:
            raise ConfigurationError("sqlite URL needs a file path: sqlite:///var/lib/conveyor/keys.db")
        from conveyor.common.idempotency.sqlite import SQLiteProcessedKeyStore

        return SQLiteProcessedKeyStore(path, clock=clock, **prefix)
    if scheme in ("postgresql", "postgres"):
        require("postgres", "a PostgreSQL idempotency store")
        return PostgresProcessedKeyStore(url, clock=clock, **prefix)
    # Never echo the URL: it may carry a password.
    raise ConfigurationError(f"unsupported idempotency store scheme {scheme!r}: use memory, sqlite or postgresql")


def __getattr__(name: str) -> object:
    # The SQLite store loads the sqlite3 module (~1 MiB resident): only when it is asked for.
    if name == "SQLiteProcessedKeyStore":
        from conveyor.common.idempotency.sqlite import SQLiteProcessedKeyStore

        return SQLiteProcessedKeyStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
