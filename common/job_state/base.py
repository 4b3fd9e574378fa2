"""The job-state store contract: what every job is doing, did, and returned.

- ``apply(transitions)`` — write a batch of ``Transition``\\ s, each forward-only (see
  ``common.job_state.states``): any order of batches gives the same records;
- ``get(job_id)`` — the ``JobRecord`` with its attempts, or ``None``;
- ``list_jobs(state=, job_type=, since=, idempotency_key=, limit=)`` — newest first (by
  ``created_at``); several jobs may share an idempotency key over time: all of them come back;
- ``request_cancel(job_id)`` — a waiting job becomes ``cancelled`` at once; a running one is
  marked ``cancel_requested_at`` (its worker is told over the control channel and records the
  end); a finished one is left alone. ``UnknownJob`` (reason ``unknown_job``) for an unknown id;
- ``pending_cancels()`` — ids whose cancel was requested and no worker has recorded an end yet
  (each worker keeps them in memory: the check on a job's arrival costs no round trip);
- ``reconcile(stale_after)`` — attempts not heart-beaten for ``stale_after`` become
  ``abandoned``; a ``running`` job with no live attempt left goes back to waiting (``retrying``)
  until its redelivery's ``running`` replaces it;
- ``expire(older_than)`` — delete finished jobs (and their attempts) last updated before
  ``now - older_than``; returns how many.

Failures of the database itself are raised as ``JobStateStoreUnavailable``. Schemas are created
idempotently at ``open()`` and carry a version row; a newer schema than this code is refused.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from conveyor.common.clock import Clock
from conveyor.common.errors import ConfigurationError
from conveyor.common.job_state.filters import JobFilter
from conveyor.common.job_state.states import JobRecord, JobState, Transition
from conveyor.common.stores import DEFAULT_TABLE_PREFIX, Store

__all__ = [
    "DEFAULT_TABLE_PREFIX",
    "MAX_RESULT_BYTES",
    "SCHEMA_VERSION",
    "CancelResult",
    "JobStateStore",
]

SCHEMA_VERSION = 2  # v2: jobs.idempotency_key (a v1 table gets the column at open())
MAX_RESULT_BYTES = 64 * 1024  # a result is a summary; a larger one goes to the payload store
DEFAULT_LIST_LIMIT = 50


@dataclass(frozen=True, slots=True)
class CancelResult:
    job_id: str
    previous: JobState  # the state when the cancel came
    state: JobState  # the state now
    changed: bool  # False: cancelled before, or already finished (cancel is idempotent)

    @property
    def running(self) -> bool:
        """Its handler may be running somewhere: the control channel must tell the workers."""
        return self.state is JobState.RUNNING


class JobStateStore(Store):
    """Per-job states, attempts and results. ``async with store:``."""

    schema_version = SCHEMA_VERSION
    version_table_name = "job_state_schema"

    def __init__(self, *, table_prefix: str = DEFAULT_TABLE_PREFIX, clock: Clock | None = None) -> None:
        super().__init__(table_prefix=table_prefix, clock=clock)
        self.jobs_table = f"{table_prefix}jobs"
        self.attempts_table = f"{table_prefix}job_attempts"

    @abc.abstractmethod
    async def apply(self, transitions: Sequence[Transition]) -> None: ...

    @abc.abstractmethod
    async def get(self, job_id: str) -> JobRecord | None: ...

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        job_type: str | None = None,
        since: datetime | None = None,
        idempotency_key: str | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
    ) -> list[JobRecord]:
        return await self._list(JobFilter(state, job_type, _utc(since), idempotency_key), self._check_limit(limit))

    @abc.abstractmethod
    async def _list(self, selected: JobFilter, limit: int) -> list[JobRecord]:
        """The records ``selected`` matches, newest first, at most ``limit``."""

    @abc.abstractmethod
    async def request_cancel(self, job_id: str) -> CancelResult: ...

    @abc.abstractmethod
    async def pending_cancels(self) -> set[str]: ...

    @abc.abstractmethod
    async def reconcile(self, stale_after: timedelta) -> int:
        """Mark attempts without a heartbeat for ``stale_after`` abandoned; returns how many."""

    @abc.abstractmethod
    async def expire(self, older_than: timedelta) -> int: ...

    @staticmethod
    def _check_limit(limit: int) -> int:
        if not 1 <= limit <= 10_000:
            raise ConfigurationError(f"limit must be between 1 and 10000, not {limit}")
        return limit


def _utc(since: datetime | None) -> datetime | None:
    """``since`` in UTC (naive: taken as UTC, as the CLI reads a time without a zone), so every
    store compares the same instant. One UTC cannot hold (0001-01-01 at +14:00, 9999-12-31 at
    -14:00) is clamped to the first or last: PostgreSQL refused it as "date value out of range",
    which ``jobs list --since`` reported as the store being unavailable."""
    if since is None:
        return None
    if since.tzinfo is None:
        return since.replace(tzinfo=UTC)
    try:
        return since.astimezone(UTC)
    except OverflowError:
        return (datetime.min if since.year == datetime.min.year else datetime.max).replace(tzinfo=UTC)
