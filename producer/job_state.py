"""The producer's side of the job-state store: ``queued`` (or ``scheduled``) after each confirm.

A publish middleware, innermost, so it runs once the broker confirmed the message; the
transition goes to a batched ``JobStateWriter``: a publish never waits on the database, and a
store outage never fails a publish (see ``common.job_state.writer``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from prometheus_client import CollectorRegistry

from conveyor.common.clock import Clock
from conveyor.common.job_state.base import JobStateStore
from conveyor.common.job_state.states import JobState, Transition, generation_of_envelope
from conveyor.common.job_state.writer import JobStateWriter
from conveyor.common.jobs.command import PublishCommand
from conveyor.common.middleware import Middleware, PublishNext

__all__ = ["JobStateRecorder"]

log = logging.getLogger(__name__)


class JobStateRecorder(Middleware):
    def __init__(
        self,
        store: JobStateStore,
        *,
        clock: Clock,
        registry: CollectorRegistry | None = None,
        producer_version: str | None = None,
        flush_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.producer_version = producer_version
        self.writer = JobStateWriter(store, flush_interval=flush_interval, registry=registry, role="producer")

    async def startup(self) -> None:
        try:
            await self.store.open()
        except Exception as exc:
            # As in the worker: a store that is down must not stop publishing (the producer did not
            # start at all). The writer keeps the transitions and opens the store with its retries.
            log.warning("job-state store unavailable at start-up; states are kept and written later",
                        extra={"error_type": type(exc).__name__})
        self.writer.start()

    async def shutdown(self) -> None:
        await self.writer.close()  # the caller owns the store (and closes it)

    async def publish(self, cmd: PublishCommand, call_next: PublishNext) -> None:
        await call_next(cmd)
        envelope = cmd.envelope
        now = self.clock.now()
        self.writer.record(Transition(
            job_id=envelope.job_id,
            state=JobState.SCHEDULED if cmd.delay > 0 else JobState.QUEUED,
            at=now,
            generation=generation_of_envelope(envelope),
            attempt=envelope.attempt,
            job_type=envelope.job_type,
            queue=cmd.queue,
            created_at=envelope.created_at,
            scheduled_for=now + timedelta(seconds=cmd.delay) if cmd.delay > 0 else None,
            producer_version=self.producer_version,
            idempotency_key=envelope.idempotency_key,
        ))
