"""What an operator does with rows the relay refused: list them, and give them back to the relay.

A row is marked failed (``failed_at``) when the broker refused it or its envelope does not
decode; the relay never retries it on its own, because a refusal usually repeats. Some do not
(a queue that was missing and is declared now, a nack from a full queue), so ``requeue``
clears ``failed_at`` and the relays publish the row again with the job id it always had: a
worker's idempotency store keeps its effect single even if an earlier try did reach the broker.
``requeue`` touches only failed, unsent rows, so running it again changes nothing. Both say
"run 'conveyor outbox migrate'" for a table that does not exist (PostgreSQL's own error read
"relation … does not exist").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conveyor.producer.outbox.schema import DEFAULT_TABLE, require_table

__all__ = ["FailedRow", "failed_rows", "requeue_failed"]


@dataclass(frozen=True, slots=True)
class FailedRow:
    id: int
    job_id: str
    job_type: str
    queue: str
    attempts: int
    failed_at: datetime
    last_error: str


async def failed_rows(connection: Any, table: str = DEFAULT_TABLE, *, limit: int = 100) -> list[FailedRow]:
    """The failed, unsent rows, oldest first (an asyncpg connection)."""
    table = await require_table(connection, table)
    rows = await connection.fetch(
        f"SELECT id, job_id, job_type, queue, attempts, failed_at, coalesce(last_error, '') AS last_error"
        f" FROM {table} WHERE failed_at IS NOT NULL AND sent_at IS NULL ORDER BY id LIMIT $1",
        limit,
    )
    return [FailedRow(**dict(row)) for row in rows]


async def requeue_failed(connection: Any, table: str = DEFAULT_TABLE, *, ids: Sequence[int] | None = None) -> int:
    """Give failed rows (all, or those of ``ids``) back to the relays; how many. Wakes them at commit."""
    table = await require_table(connection, table)
    async with connection.transaction():
        status = await connection.execute(
            f"UPDATE {table} SET failed_at = NULL WHERE failed_at IS NOT NULL AND sent_at IS NULL"
            + ("" if ids is None else " AND id = ANY($1::bigint[])"),
            *(() if ids is None else (list(ids),)),
        )
        count = int(status.rsplit(" ", 1)[-1])
        if count:
            await connection.execute("SELECT pg_notify($1, '')", table)
    return count
