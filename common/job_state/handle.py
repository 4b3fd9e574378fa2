"""What ``await producer.publish(...)`` returns when the producer has a job-state store.

A ``JobHandle`` is a ``PublishReceipt`` (same fields, so callers of the receipt keep working)
whose ``status()`` reads the job's record and whose ``result(timeout=)`` waits for its end.

Reads follow the writers by up to their flush interval (and longer while the store is down):
a job the store does not know yet is reported as its publish left it, ``queued`` or
``scheduled``, since its publish was confirmed.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from conveyor.common import bounds
from conveyor.common.errors import JobNotSucceeded
from conveyor.common.job_state.base import JobStateStore
from conveyor.common.job_state.states import JobRecord, JobState
from conveyor.common.jobs.command import PublishReceipt

__all__ = ["JobHandle"]

_FIRST_POLL = 0.02
_MAX_POLL = 0.5
_FIRST_READ = 1.0  # seconds the first read may take, however short the timeout


@dataclass(frozen=True)
class JobHandle(PublishReceipt):
    store: JobStateStore | None = field(default=None, compare=False, repr=False)
    scheduled: bool = False  # published with a delay

    async def status(self) -> JobRecord:
        assert self.store is not None
        record = await self.store.get(self.job_id)
        if record is not None:
            return record
        state = JobState.SCHEDULED if self.scheduled else JobState.QUEUED
        return JobRecord(job_id=self.job_id, state=state, generation=0, rank=0, attempt=1,
                         updated_at=self.confirmed_at, queue=self.queue, queued_at=self.confirmed_at)

    async def result(self, timeout: float | None = None) -> Any:
        """The handler's return value (JSON) once the job succeeded; ``None`` if it returned
        none or its result was too large to keep inline (then ``status().result_ref`` names it).

        ``JobNotSucceeded`` (with ``.state``) if it ended dead-lettered or cancelled;
        ``TimeoutError`` after ``timeout`` seconds (``None``: wait as long as it takes). The
        record is read at least once (given up to a second), so ``timeout=0`` answers a finished
        job and times out a running one."""
        if timeout is not None:  # NaN timed out at the first wait, whatever the job's state
            bounds.seconds("timeout", timeout, zero_ok=True, at_most=math.inf)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # The first read may outlast a deadline shorter than _FIRST_READ: under asyncio.timeout(0) it
        # never finished on a SQL store (its I/O yields), and a job that had long succeeded raised
        # TimeoutError. It is still bounded: a store that hangs must not hold the caller for long.
        async with asyncio.timeout(None if timeout is None else max(timeout, _FIRST_READ)):
            record = await self.status()
        pause = _FIRST_POLL
        async with asyncio.timeout_at(deadline):
            while True:
                if record.final and record.state is not JobState.SUCCEEDED:
                    raise JobNotSucceeded(
                        f"job {self.job_id} ended {record.state}"
                        + (f" ({record.reason})" if record.reason and record.reason != str(record.state) else ""),
                        state=str(record.state),
                    )
                if record.state is JobState.SUCCEEDED:
                    return None if record.result is None else orjson.loads(record.result)
                await asyncio.sleep(pause)
                pause = min(_MAX_POLL, pause * 2)
                record = await self.status()
