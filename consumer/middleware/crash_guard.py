"""Middleware: a job that keeps killing its worker is dead-lettered as ``crash_loop``, and the
jobs that merely ran beside it are not punished for it.

The crash journal (``conveyor.common.crash_journal``) tells, at start-up, which jobs were
running when a worker on this host died, and how often. Such a *suspect* runs **alone**: it
waits until the jobs running now have finished, and nothing else starts until it has. If it
kills the worker again, it was the only job running, so only its count grows; an innocent job
that shared the first crash runs alone once, succeeds and is cleared. A suspect that arrives
with ``limit`` crashes behind it is not run again: it is dead-lettered with the crashes it
caused in the error text. Journal writes are single ``write`` calls to a local file (page
cache, no fsync): microseconds, on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from conveyor.common.crash_journal import CrashJournal
from conveyor.common.errors import ConfigurationError, CrashLoop
from conveyor.common.jobs.context import JobContext
from conveyor.common.middleware import ConsumeNext, Middleware

__all__ = ["CrashGuardMiddleware", "ExclusiveGate"]

log = logging.getLogger(__name__)


class ExclusiveGate:
    """Shared for ordinary jobs, exclusive for suspects; a waiting suspect goes first."""

    def __init__(self) -> None:
        self._running = 0
        self._exclusive = False
        self._waiting_exclusive = 0
        self._waiting_shared = 0
        self._changed = asyncio.Condition()

    async def shared(self) -> None:
        if not self._exclusive and not self._waiting_exclusive:
            self._running += 1  # the common case: no suspect around, no await
            return
        async with self._changed:
            self._waiting_shared += 1
            try:
                await self._changed.wait_for(lambda: not self._exclusive and not self._waiting_exclusive)
            finally:
                self._waiting_shared -= 1
            self._running += 1

    async def exclusive(self) -> None:
        async with self._changed:
            self._waiting_exclusive += 1
            try:
                await self._changed.wait_for(lambda: not self._exclusive and self._running == 0)
            finally:
                self._waiting_exclusive -= 1
            self._exclusive = True
            self._running = 1

    async def release(self) -> None:
        self._running -= 1
        self._exclusive = False
        if self._waiting_exclusive or self._waiting_shared:  # someone may now go
            async with self._changed:
                self._changed.notify_all()


class CrashGuardMiddleware(Middleware):
    def __init__(self, journal: CrashJournal, *, limit: int = 3) -> None:
        if limit < 1:
            raise ConfigurationError("crash limit must be ≥ 1")
        self.journal = journal
        self.limit = limit
        self.gate = ExclusiveGate()

    async def startup(self) -> None:
        suspects = self.journal.open()
        if suspects:
            log.warning("jobs were running when a worker died here; each runs alone next time",
                        extra={"suspects": len(suspects)})

    async def shutdown(self) -> None:
        self.journal.close()

    async def consume(self, ctx: JobContext, call_next: ConsumeNext) -> Any:
        record = self.journal.suspects.get(ctx.job_id)
        if record is not None and record.crashes >= self.limit:
            self.journal.resolved(ctx.job_id)
            since = datetime.fromtimestamp(record.first_death, UTC).isoformat(timespec="seconds")
            killed = "; ".join(
                f"worker {who} (run started {datetime.fromtimestamp(when, UTC).isoformat(timespec='seconds')})"
                for who, when in record.kills[-self.limit :]
            )
            raise CrashLoop(
                f"the job was running each time its worker died, {record.crashes} times since {since} "
                f"(limit {self.limit}): not run again. Killed: {killed}"
            )
        if record is None:
            await self.gate.shared()
        else:
            log.warning("running a job alone: it was running when a worker died",
                        extra={"job_id": ctx.job_id, "crashes": record.crashes})
            await self.gate.exclusive()
        try:
            self.journal.started(ctx.job_id)
            return await call_next(ctx)
        finally:
            self.journal.finished(ctx.job_id)
            if record is not None:
                self.journal.resolved(ctx.job_id)
            await self.gate.release()
