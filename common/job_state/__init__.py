"""Job-state stores: every job's state, attempts and result (memory, SQLite, PostgreSQL).

``job_state_store_from_url`` picks one by URL (``CONVEYOR_JOB_STATE_URL``): ``memory://``,
``sqlite:///absolute/path.db``, ``postgresql://user:password@host:port/db``. The drivers are
imported only when a store opens. The state machine is ``common.job_state.states``; the
batched writer that keeps database round trips off the hot path is ``common.job_state.writer``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.common.lazy import lazy_exports
from conveyor.common.sql import parse_store_url

if TYPE_CHECKING:
    from conveyor.common.clock import Clock
    from conveyor.common.job_state.base import MAX_RESULT_BYTES, CancelResult, JobStateStore
    from conveyor.common.job_state.memory import MemoryJobStateStore
    from conveyor.common.job_state.postgres import PostgresJobStateStore
    from conveyor.common.job_state.sqlite import SQLiteJobStateStore
    from conveyor.common.job_state.states import AttemptInfo, JobRecord, JobState, Transition

__all__ = [
    "MAX_RESULT_BYTES",
    "AttemptInfo",
    "CancelResult",
    "JobRecord",
    "JobState",
    "JobStateStore",
    "MemoryJobStateStore",
    "PostgresJobStateStore",
    "SQLiteJobStateStore",
    "Transition",
    "job_state_store_from_url",
]


def job_state_store_from_url(url: str, *, clock: Clock | None = None, table_prefix: str | None = None) -> JobStateStore:
    location = parse_store_url(url, what="job-state store")
    if location.kind == "memory":
        from conveyor.common.job_state.memory import MemoryJobStateStore

        return MemoryJobStateStore(clock=clock)
    if location.kind == "sqlite":
        # The SQLite store loads the sqlite3 module (~1 MiB resident): only when it is asked for.
        from conveyor.common.job_state.sqlite import SQLiteJobStateStore

        if table_prefix is None:
            return SQLiteJobStateStore(location.target, clock=clock)
        return SQLiteJobStateStore(location.target, clock=clock, table_prefix=table_prefix)
    from conveyor.common.job_state.postgres import PostgresJobStateStore

    if table_prefix is None:
        return PostgresJobStateStore(location.target, clock=clock)
    return PostgresJobStateStore(location.target, clock=clock, table_prefix=table_prefix)


# Each store's module (and the SQLite one's sqlite3, ~1 MiB resident) loads on first use: a
# worker without a job-state store carries none of them (issue 18, worker RSS).
__getattr__ = lazy_exports(__name__, {
    ".base": ("MAX_RESULT_BYTES", "CancelResult", "JobStateStore"),
    ".memory": ("MemoryJobStateStore",),
    ".postgres": ("PostgresJobStateStore",),
    ".sqlite": ("SQLiteJobStateStore",),
    ".states": ("AttemptInfo", "JobRecord", "JobState", "Transition"),
})
