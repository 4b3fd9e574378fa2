"""What the SQL-backed stores share: their URLs, table prefixes and driver plumbing.

The processed-key store (``common.idempotency``) and the job-state store (``common.job_state``)
both open ``memory://``, ``sqlite:///absolute/path.db`` (or ``sqlite:relative/path.db``) and
``postgresql://user:password@host:port/db`` (``postgres://`` too) the same way; the drivers
(aiosqlite, asyncpg) are imported only when a store opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from conveyor.common.errors import ConfigurationError
from conveyor.common.extras import require

if TYPE_CHECKING:
    import aiosqlite

__all__ = [
    "StoreUrl",
    "check_schema_version",
    "check_table_prefix",
    "connect_sqlite",
    "create_pg_pool",
    "parse_store_url",
    "postgres_errors",
    "postgres_errors_as",
    "rows_affected",
    "sqlite_errors_as",
]

_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,30}$")


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """``kind`` memory, sqlite or postgres; ``target`` the file path or the DSN (secret)."""

    kind: Literal["memory", "sqlite", "postgres"]
    target: str = ""


def parse_store_url(url: str, *, what: str) -> StoreUrl:
    """Which store a URL names; ``what`` ("an idempotency store") words the errors.

    Errors never echo the URL: it may carry a password."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return StoreUrl("memory")
    if scheme == "sqlite":
        path = url[len("sqlite:") :]
        path = path[2:] if path.startswith("//") else path  # sqlite:///abs → /abs
        if not path:
            raise ConfigurationError(f"sqlite URL of {what} needs a file path: sqlite:///var/lib/conveyor/state.db")
        return StoreUrl("sqlite", path)
    if scheme in ("postgresql", "postgres"):
        require("postgres", f"a PostgreSQL {what}")
        try:  # asyncpg failed on it with an AttributeError and an 80-line traceback, mid-connect
            url.encode()
        except UnicodeEncodeError:
            raise ConfigurationError(f"the PostgreSQL URL of {what} is not UTF-8 text (a stray byte?)") from None
        return StoreUrl("postgres", url)
    raise ConfigurationError(f"unsupported {what} scheme {scheme!r}: use memory, sqlite or postgresql")


def check_table_prefix(prefix: str) -> str:
    """Table names are built from it, so only ``[a-z_][a-z0-9_]*`` (≤ 31 characters)."""
    if not _PREFIX.match(prefix):
        raise ConfigurationError(f"invalid table prefix {prefix!r}: use a-z 0-9 _ (≤ 31 characters)")
    return prefix


def rows_affected(status: str) -> int:
    """Row count from a PostgreSQL command tag such as ``INSERT 0 1`` or ``DELETE 12``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except (ValueError, AttributeError):
        return 0


def postgres_errors() -> tuple[type[BaseException], ...]:
    """What asyncpg raises when the database (not our SQL) fails us."""
    import asyncpg

    return (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


async def create_pg_pool(
    dsn: str, *, min_size: int, max_size: int, command_timeout: float, connect_timeout: float
) -> Any:
    """An ``asyncpg.Pool`` (untyped: asyncpg ships no type information)."""
    import asyncpg

    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=command_timeout, timeout=connect_timeout
    )


async def connect_sqlite(path: Path, *, busy_timeout: float, synchronous: str = "FULL") -> aiosqlite.Connection:
    """One autocommit connection (callers issue BEGIN/COMMIT) in WAL mode.

    ``synchronous``: FULL where a write must be on disk before a message is acked, NORMAL
    where losing the last writes on a power cut is acceptable (WAL keeps the file intact)."""
    import aiosqlite

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = aiosqlite.connect(path, isolation_level=None)
    try:
        await conn
    except BaseException:
        await _reap(conn)
        raise
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute(f"PRAGMA synchronous = {synchronous}")
    except BaseException:
        await conn.close()
        raise
    return conn


async def _reap(conn: aiosqlite.Connection) -> None:
    """Wait for the worker thread of a connection that failed to open.

    aiosqlite stops that thread without awaiting it; if the loop closed first, the thread
    would fail handing back its result ("Event loop is closed").
    """
    thread = getattr(conn, "_thread", None)
    if thread is not None and thread.is_alive():
        await asyncio.to_thread(thread.join, 5.0)


@contextlib.contextmanager
def sqlite_errors_as(error: type[Exception], what: str) -> Iterator[None]:
    """sqlite3's errors, raised as the store's own ``error`` saying what failed."""
    import sqlite3  # here, not at the top: a worker without a SQLite store never loads it

    try:
        yield
    except (sqlite3.Error, OSError) as exc:  # OSError: the database's directory cannot be made
        raise error(f"sqlite {what} failed: {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def postgres_errors_as(error: type[Exception], what: str) -> Iterator[None]:
    """asyncpg's (and the socket's) errors as the store's ``error``; never the DSN (its password)."""
    try:
        yield
    except postgres_errors() as exc:
        raise error(f"postgres {what} failed: {type(exc).__name__}: {exc}") from exc


def check_schema_version(table: str, found: int | None, known: int) -> None:
    """Refuse a database whose schema a newer release wrote."""
    if found is not None and found > known:
        raise ConfigurationError(f"{table} is at schema v{found}, newer than v{known} known here: upgrade this worker")
