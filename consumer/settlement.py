"""Settlement: the only code that acks, releases, or publishes retry and dead-letter copies.

Order matters and is always the same: publish the copy, wait for the broker's confirm,
*then* ack the original. If anything fails in between, the original is released (or
left to the broker when the connection is gone), so the job is redelivered rather than
lost; a duplicate copy is possible, a lost job is not.

Claim checks: after a success is acked, the job's stored payload is deleted (best effort: a
failure is logged, and the sweep or a bucket lifecycle rule removes it later). Retry,
deferral and dead-letter copies carry the same reference, so the object stays until the job
succeeds or its dead letter is purged.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from conveyor.common import headers as h
from conveyor.common.backoff import RetryPolicy
from conveyor.common.clock import Clock
from conveyor.common.codec import encode_model
from conveyor.common.jobs.outcome import Outcome, OutcomeKind
from conveyor.common.metrics import WorkerMetrics
from conveyor.common.secrets import mask_secrets
from conveyor.common.transport.base import Delivery, OutgoingMessage, Transport
from conveyor.consumer.payloads import PayloadResolver
from conveyor.schemas.dead_letter import DeadLetterRecord
from conveyor.schemas.envelope import (
    AttemptRecord,
    Envelope,
    PayloadReference,
    new_job_id,
)

__all__ = ["DeferPolicy", "Settlement"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeferPolicy:
    """Messages from a newer producer wait for a newer worker, within a bound."""

    delay: float = 30.0
    max_deferrals: int = 120


class Settlement:
    def __init__(
        self,
        *,
        transport: Transport,
        clock: Clock,
        worker_id: str,
        metrics: WorkerMetrics,
        rng: random.Random | None = None,
        defer: DeferPolicy | None = None,
        payloads: PayloadResolver | None = None,
        redact: Callable[[str], str] = mask_secrets,
    ) -> None:
        self._transport = transport
        self._redact = redact  # tracebacks quote the raising line and its message
        self._payloads = payloads
        self._clock = clock
        self._worker_id = worker_id
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._defer = defer or DeferPolicy()

    async def settle(self, delivery: Delivery, outcome: Outcome, policy: RetryPolicy | None) -> str:
        """Carry out ``outcome``; returns what was done. Raises only if the broker failed us."""
        job_type = outcome.job_type if policy is not None else None
        match outcome.kind:
            case OutcomeKind.SUCCEEDED:
                await delivery.ack()
                await self._discard_payload(outcome.envelope)
                action = "succeeded"
            case OutcomeKind.RELEASE:
                await delivery.release()
                action = "released"
            case OutcomeKind.DEFER:
                action = await self._defer_or_dead(delivery, outcome)
            case OutcomeKind.RETRY:
                action = await self._retry_or_dead(delivery, outcome, policy or RetryPolicy())
            case OutcomeKind.DEAD:
                action = await self._dead_letter(delivery, outcome, outcome.reason or "rejected")
        self._metrics.settled(job_type, action, outcome)
        return action

    async def _retry_or_dead(self, delivery: Delivery, outcome: Outcome, policy: RetryPolicy) -> str:
        envelope = outcome.envelope
        assert envelope is not None  # RETRY only follows a decoded envelope
        if envelope.attempt >= policy.max_attempts:
            return await self._dead_letter(delivery, outcome, "exhausted")
        delay = policy.delay(envelope.attempt, self._rng)
        due = self._clock.now() + timedelta(seconds=delay)
        if due - envelope.created_at > timedelta(seconds=policy.max_age):
            return await self._dead_letter(delivery, outcome, "exhausted")
        if envelope.deadline is not None and due >= envelope.deadline:
            return await self._dead_letter(delivery, outcome, "expired")
        kind = "timeout" if outcome.timed_out else "retried"
        copy = envelope.next_attempt(self._attempt_record(envelope, outcome, kind))
        await self._publish_copy(delivery, copy, delay, "retry")
        await delivery.ack()
        return "retried"

    async def _defer_or_dead(self, delivery: Delivery, outcome: Outcome) -> str:
        envelope = outcome.envelope
        assert envelope is not None
        deferrals = sum(1 for h in envelope.history if h.outcome == "deferred")
        if deferrals >= self._defer.max_deferrals:
            return await self._dead_letter(delivery, outcome, "unknown_version")
        copy = envelope.with_history(self._attempt_record(envelope, outcome, "deferred"))
        await self._publish_copy(delivery, copy, self._defer.delay, "defer")
        await delivery.ack()
        return "deferred"

    async def _dead_letter(self, delivery: Delivery, outcome: Outcome, reason: str) -> str:
        envelope = outcome.envelope
        history: tuple[AttemptRecord, ...] = ()
        if envelope is not None:
            last = self._attempt_record(envelope, outcome, "failed" if outcome.error_type else "rejected")
            history = (*envelope.history, last)
        record = DeadLetterRecord(
            dead_letter_id=new_job_id(),
            queue=delivery.queue,
            reason=reason,
            error_type=outcome.error_type,
            error_message=outcome.error_message,
            traceback=_masked(outcome.traceback_text(), self._redact),
            dead_lettered_at=self._clock.now(),
            worker_id=self._worker_id,
            job_id=envelope.job_id if envelope else None,
            job_type=envelope.job_type if envelope else None,
            attempt=envelope.attempt if envelope else None,
            history=history,
            original_headers=delivery.headers,
            original_body_b64=DeadLetterRecord.encode_body(delivery.body),
        )
        message = OutgoingMessage(
            body=encode_model(record),
            message_id=record.dead_letter_id,
            headers={
                **h.carried_over(delivery.headers),  # trace context: the dead letter stays in the job's trace
                "x-conveyor-reason": reason,
                h.JOB_TYPE: record.job_type or "",
            },
            kind="dead_letter",
        )
        await self._confirmed(self._transport.dead_letter_queue(delivery.queue), message, "dead_letter")
        await delivery.ack()
        self._metrics.dead_letter(record.job_type, reason, record.attempt)
        log.warning(
            "job dead-lettered",
            extra={"job_id": record.job_id, "job_type": record.job_type, "reason": reason},
        )
        return "dead_lettered"

    async def _discard_payload(self, envelope: Envelope | None) -> None:
        if self._payloads is not None and envelope is not None and isinstance(envelope.payload, PayloadReference):
            await self._payloads.discard(envelope.payload)

    async def _publish_copy(self, delivery: Delivery, envelope: Envelope, delay: float, kind: str) -> None:
        message = OutgoingMessage(
            body=encode_model(envelope),
            message_id=envelope.job_id,
            headers={
                **h.carried_over(delivery.headers),
                h.JOB_TYPE: envelope.job_type,
                h.ATTEMPT: str(envelope.attempt),
                h.DUE_AT: h.format_due_at(self._clock.now() + timedelta(seconds=delay)),
            },
            delay=delay,
            kind="retry",  # deferrals too: a worker may send copies back, never new jobs
        )
        await self._confirmed(delivery.queue, message, kind)

    async def _confirmed(self, queue: str, message: OutgoingMessage, kind: str) -> None:
        begin = self._clock.monotonic()
        try:
            await self._transport.publish(queue, message)
        except Exception as exc:
            self._metrics.publish_failed(kind, exc)
            raise
        self._metrics.confirmed(kind, self._clock.monotonic() - begin)

    def _attempt_record(self, envelope: Envelope, outcome: Outcome, kind: str) -> AttemptRecord:
        now = self._clock.now()
        return AttemptRecord(
            attempt=envelope.attempt,
            worker_id=self._worker_id,
            started_at=outcome.started_at or now,
            finished_at=outcome.finished_at or now,
            outcome=kind,  # type: ignore[arg-type]  # str: callers pass only AttemptRecord's outcome literals
            error_type=outcome.error_type,
            error_message=(outcome.error_message or None) and outcome.error_message[:1000],
        )


def _masked(text: str | None, redact: Callable[[str], str]) -> str | None:
    return None if text is None else redact(text)
