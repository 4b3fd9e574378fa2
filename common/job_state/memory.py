"""An in-memory job-state store: the embedded default and the unit-test store.

It applies ``states.merge`` directly, the reference the SQL stores implement. ``fail_with``
makes every operation raise ``JobStateStoreUnavailable``, to stand in for an outage. Nothing
survives the process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from conveyor.common.clock import Clock
from conveyor.common.errors import JobStateStoreUnavailable, UnknownJob
from conveyor.common.job_state.base import CancelResult, JobStateStore
from conveyor.common.job_state.filters import JobFilter
from conveyor.common.job_state.states import (
    CANCEL_REQUESTED_RANK,
    FINAL_RANK,
    AttemptInfo,
    JobRecord,
    JobState,
    Transition,
    merge,
    merge_attempt,
)

__all__ = ["MemoryJobStateStore"]


class MemoryJobStateStore(JobStateStore):
    kind = "memory"

    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self._jobs: dict[str, JobRecord] = {}
        self._attempts: dict[str, dict[str, AttemptInfo]] = {}
        self.fail_with: BaseException | None = None
        self.applied_batches = 0  # how many apply() calls wrote something (batching is observable)

    def _check(self) -> None:
        if self.fail_with is not None:
            raise JobStateStoreUnavailable("memory job-state store failing on purpose") from self.fail_with

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def apply(self, transitions: Sequence[Transition]) -> None:
        self._check()
        for t in transitions:
            self._jobs[t.job_id] = merge(self._jobs.get(t.job_id), t)
            if t.attempt_id is not None:
                attempts = self._attempts.setdefault(t.job_id, {})
                attempts[t.attempt_id] = merge_attempt(attempts.get(t.attempt_id), t)
        if transitions:
            self.applied_batches += 1

    async def get(self, job_id: str) -> JobRecord | None:
        self._check()
        record = self._jobs.get(job_id)
        if record is None:
            return None
        attempts = sorted(self._attempts.get(job_id, {}).values(), key=_attempt_order)
        return replace(record, attempts=tuple(attempts))

    async def _list(self, selected: JobFilter, limit: int) -> list[JobRecord]:
        self._check()
        found = [r for r in self._jobs.values() if selected.matches(r)]
        found.sort(key=lambda r: (r.created_at or r.updated_at, r.job_id), reverse=True)
        return found[:limit]

    async def request_cancel(self, job_id: str) -> CancelResult:
        self._check()
        record = self._jobs.get(job_id)
        if record is None:
            raise UnknownJob(f"no job {job_id!r} in the job-state store")
        if record.final:
            return CancelResult(job_id, record.state, record.state, changed=False)
        now = self.clock.now()
        changed = record.cancel_requested_at is None
        requested = record.cancel_requested_at or now
        if record.state is JobState.RUNNING:
            self._jobs[job_id] = replace(record, cancel_requested_at=requested, updated_at=now)
        else:
            self._jobs[job_id] = replace(
                record, state=JobState.CANCELLED, rank=CANCEL_REQUESTED_RANK, finished_at=now, reason="cancelled",
                cancel_requested_at=requested, updated_at=now,
            )
            changed = True
        return CancelResult(job_id, record.state, self._jobs[job_id].state, changed=changed)

    async def pending_cancels(self) -> set[str]:
        self._check()
        return {j for j, r in self._jobs.items() if r.cancel_requested_at is not None and r.rank < FINAL_RANK}

    async def reconcile(self, stale_after: timedelta) -> int:
        self._check()
        cutoff = self._cutoff(stale_after)
        abandoned = 0
        for attempts in self._attempts.values():
            for key, a in list(attempts.items()):
                if a.finished_at is None and a.heartbeat_at is not None and a.heartbeat_at < cutoff:
                    attempts[key] = replace(a, outcome="abandoned", finished_at=a.heartbeat_at)
                    abandoned += 1
        now = self.clock.now()
        for job_id, record in list(self._jobs.items()):
            live = any(a.finished_at is None for a in self._attempts.get(job_id, {}).values())
            if record.state is JobState.RUNNING and not live:
                self._jobs[job_id] = replace(record, state=JobState.RETRYING, rank=0, updated_at=now)
        return abandoned

    async def expire(self, older_than: timedelta) -> int:
        self._check()
        cutoff = self._cutoff(older_than)
        old = [j for j, r in self._jobs.items() if r.final and r.updated_at < cutoff]
        for job_id in old:
            del self._jobs[job_id]
            self._attempts.pop(job_id, None)
        return len(old)


def _attempt_order(attempt: AttemptInfo) -> tuple[datetime, str]:
    return (attempt.started_at or attempt.finished_at or attempt.heartbeat_at or _EPOCH, attempt.attempt_id)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
