"""The transactional outbox on PostgreSQL: jobs written in the application's transaction, relayed later.

``Outbox.add`` / ``add_async`` write a job in the caller's transaction; ``OutboxRelay``
(``conveyor outbox relay``) publishes committed rows with confirms; ``migrate`` /
``migration_sql`` create the table, ``check_schema`` says what is missing; ``failed_rows`` / ``requeue_failed`` are the
operator's view of refused rows.
"""

from conveyor.producer.outbox.admin import FailedRow, failed_rows, requeue_failed
from conveyor.producer.outbox.metrics import OutboxMetrics
from conveyor.producer.outbox.outbox import Outbox, OutboxRow
from conveyor.producer.outbox.relay import OutboxRelay, RelayConfig
from conveyor.producer.outbox.schema import DEFAULT_TABLE, check_schema, migrate, migration_sql

__all__ = [
    "DEFAULT_TABLE",
    "FailedRow",
    "Outbox",
    "OutboxMetrics",
    "OutboxRelay",
    "OutboxRow",
    "RelayConfig",
    "check_schema",
    "failed_rows",
    "migrate",
    "migration_sql",
    "requeue_failed",
]
