"""Middleware: a job that keeps killing its worker is dead-lettered as ``crash_loop``, and the
jobs that merely ran beside it are not punished for it.

The crash journal (``conveyor.common.crash_journal``) tells, at start-up and whenever a
redelivered job arrives, which jobs were running when a worker on this host died, and how
often. Such a *suspect* runs **alone**: it waits until the jobs running now have finished, and
nothing else starts until it has. If it kills the worker again, it was the only job running, so
only its count grows; an innocent job that shared the first crash runs alone once, succeeds and
is cleared. A suspect that arrives with ``limit`` crashes behind it is not run again: it is
dead-lettered with the crashes it caused in the error text. Journal writes are stores into a
mapped file (page cache, no fsync): microseconds, on the loop. Claiming a dead sibling's
journal (a redelivery, rare) reads a small local file on the loop too.
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

    def try_shared(self) -> bool:
        """Enter shared at once if nobody runs or waits exclusively (the common case, no await)."""
        if self._exclusive or self._waiting_exclusive:
            return False
        self._running += 1
        return True

    async def shared(self) -> None:
        if self.try_shared():
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

    def leave(self) -> bool:
        """Leave without waking anyone; True when someone waits and ``wake`` must follow."""
        self._running -= 1
        self._exclusive = False
        return bool(self._waiting_exclusive or self._waiting_shared)

    async def wake(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def release(self) -> None:
        if self.leave():  # someone may now go
            await self.wake()


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
        if record is None and ctx.redelivered and self.journal.claim_dead():
            # A sibling process died since this one started (``--processes``, or workers that
            # share a state directory), maybe running this very job: its journal is ours now.
            log.warning("jobs were running when a worker died here; each runs alone next time",
                        extra={"suspects": len(self.journal.suspects)})
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
        gate, journal, job_id = self.gate, self.journal, ctx.job_id
        if record is not None:
            log.warning("running a job alone: it was running when a worker died",
                        extra={"job_id": job_id, "crashes": record.crashes})
            await gate.exclusive()
        elif not gate.try_shared():  # per job: no await unless a suspect runs or waits
            await gate.shared()
        try:
            journal.started(job_id)
            try:
                return await call_next(ctx)
            finally:
                journal.finished(job_id)
                if record is not None:
                    journal.resolved(job_id)
        finally:
            # Whatever the journal raised (a full disk): the gate is left, or a suspect waits forever.
            if gate.leave():
                await gate.wake()
