"""The outbox table: its migration (shipped as ``schema.sql``) and the check a relay runs at start.

``migration_sql(table)`` is the SQL to put in the application's own migrations (Django,
Alembic, Flyway); ``migrate(connection)`` runs it on an asyncpg connection, idempotent and
serialised by an advisory lock. ``check_schema(connection)`` raises a one-line
``ConfigurationError`` naming every missing part (table, column, index, trigger).
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from conveyor.common.errors import ConfigurationError

__all__ = ["COLUMNS", "DEFAULT_TABLE", "check_schema", "migrate", "migration_sql", "require_table", "table_name"]

DEFAULT_TABLE = "conveyor_outbox"
COLUMNS = frozenset({
    "id", "job_id", "job_type", "queue", "delay_seconds", "ordering_key", "envelope", "created_at",
    "attempts", "last_error", "sent_at", "failed_at",
})
# Index, function and trigger names add up to 8 characters to the table's: within PostgreSQL's 63.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,50}")


def table_name(table: str) -> str:
    """``table``, checked: a plain lower-case identifier (it is put into SQL text)."""
    if not _IDENTIFIER.fullmatch(table):
        raise ConfigurationError(
            f"outbox table name {table!r} is not a lower-case SQL identifier of at most 51 characters"
        )
    return table


def migration_sql(table: str = DEFAULT_TABLE) -> str:
    text = resources.files("conveyor.producer.outbox").joinpath("schema.sql").read_text(encoding="utf-8")
    return text.replace("{table}", table_name(table))


async def migrate(connection: Any, table: str = DEFAULT_TABLE) -> None:
    """Create or complete the outbox schema on an asyncpg connection (idempotent)."""
    sql = migration_sql(table)
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"conveyor-outbox-migrate:{table}")
        await connection.execute(sql)


async def require_table(connection: Any, table: str) -> str:
    """``table``, checked to exist: else the one-line ``ConfigurationError`` that says what to run."""
    table = table_name(table)
    if await connection.fetchval("SELECT to_regclass($1) IS NULL", table):
        raise ConfigurationError(f"outbox table {table!r} does not exist: run 'conveyor outbox migrate'")
    return table


async def check_schema(connection: Any, table: str = DEFAULT_TABLE) -> None:
    """Raise ``ConfigurationError`` naming what is missing; return if the schema is complete."""
    table = await require_table(connection, table)
    rows = await connection.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1 "
        "AND table_schema = (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = to_regclass($1))",
        table,
    )
    missing = [f"column {c}" for c in sorted(COLUMNS - {r["column_name"] for r in rows})]
    for index in (f"{table}_unsent", f"{table}_sent_at"):
        if await connection.fetchval("SELECT to_regclass($1) IS NULL", index):
            missing.append(f"index {index}")
    trigger = await connection.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgname = $1 AND tgrelid = to_regclass($2)", f"{table}_notify", table
    )
    if not trigger:
        missing.append(f"trigger {table}_notify")
    if missing:
        raise ConfigurationError(
            f"outbox table {table!r} is incomplete, missing {', '.join(missing)}: run 'conveyor outbox migrate'"
        )
