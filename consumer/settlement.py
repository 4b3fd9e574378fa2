"""Settlement: the only code that acks, releases, or publishes retry and dead-letter copies.

Order matters and is always the same: publish the copy, wait for the broker's confirm,
*then* ack the original. If anything fails in between, the original is released (or
left to the broker when the connection is gone), so the job is redelivered rather than
lost; a duplicate copy is possible, a lost job is not.

A settlement that fails never loops hot:

* A copy that cannot be *built* (it will not encode) is no broker trouble, and another delivery
  would fail the same way: the original is dead-lettered at once, reason ``settlement_failed``.
  A dead letter never re-encodes the message: it carries the original bytes and headers. (The
  decoder refuses what could not be written back, so this is a safety net, not a path.)
* A dead-letter record that cannot be encoded is replaced by a bare one (reason, error type,
  original bytes and headers), never by nothing.
* A broker failure (a copy or dead letter not confirmed, an ack lost) leaves the message to the
  broker, as it must, but only after holding it for a pause that doubles with each failure of
  that message (``SETTLE_BACKOFF_FIRST`` up to ``SETTLE_BACKOFF_CAP``): it comes back every few
  seconds, not thousands of times a second. A copy the broker *refused* outright
  ``REFUSALS_BEFORE_DEAD_LETTER`` times (it will not take it: too large, not permitted) gives way
  to a dead letter of the original, so even that ends.

Claim checks: after a success is acked, the job's stored payload is deleted (best effort: a
failure is logged, and the sweep or a bucket lifecycle rule removes it later). Retry,
deferral and dead-letter copies carry the same reference, so the object stays until the job
succeeds or its dead letter is purged.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from conveyor.common import headers as h
from conveyor.common.backoff import MAX_DELAY, RetryPolicy
from conveyor.common.clock import Clock
from conveyor.common.codec import encode_envelope, encode_model, json_safe_text
from conveyor.common.errors import ConfigurationError, PublishNotConfirmed
from conveyor.common.jobs.outcome import Outcome, OutcomeKind, SettleAction
from conveyor.common.messages import dead_letter_message, job_message
from conveyor.common.metrics import WorkerMetrics
from conveyor.common.secrets import mask_secrets
from conveyor.common.transport.base import Delivery, OutgoingMessage, Transport
from conveyor.consumer.payloads import PayloadResolver
from conveyor.schemas.dead_letter import DeadLetterRecord
from conveyor.schemas.envelope import (
    MAX_HISTORY,
    AttemptRecord,
    Envelope,
    PayloadReference,
    new_attempt_record,
    new_job_id,
)

__all__ = [
    "REFUSALS_BEFORE_DEAD_LETTER",
    "SETTLE_BACKOFF_CAP",
    "SETTLE_BACKOFF_FIRST",
    "DeferPolicy",
    "Settlement",
]

log = logging.getLogger(__name__)

# A failed settlement holds its message this long before the worker gives it back: doubled with
# each failure of the same message, capped below the 15 s the worker's drain waits for settling.
SETTLE_BACKOFF_FIRST = 0.5
SETTLE_BACKOFF_CAP = 5.0
REFUSALS_BEFORE_DEAD_LETTER = 3
_REMEMBERED_FAILURES = 4096  # messages whose failures are counted; the oldest are forgotten


@dataclass(frozen=True)
class DeferPolicy:
    """Messages from a newer producer wait for a newer worker, within a bound.

    Deferrals are counted in the envelope's attempt history, which keeps the last
    ``MAX_HISTORY`` entries: a bound at or above it could never be reached (the message would
    be deferred forever), so it is refused. The default waits 40 × 30 s = 20 minutes for a
    rolling deploy, then dead-letters as ``unknown_version`` (replay it once the new workers run).
    """

    delay: float = 30.0
    max_deferrals: int = 40

    def __post_init__(self) -> None:
        if not 0 < self.delay <= MAX_DELAY:
            raise ConfigurationError(f"DeferPolicy: delay must be > 0 and at most {MAX_DELAY:g} s, not {self.delay}")
        if not 1 <= self.max_deferrals < MAX_HISTORY:
            raise ConfigurationError(
                f"DeferPolicy: max_deferrals must be between 1 and {MAX_HISTORY - 1} (the attempt history "
                f"keeps {MAX_HISTORY} entries), not {self.max_deferrals}"
            )


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
        run_headers: Mapping[str, str] | None = None,
        on_dead_lettered: Callable[[Outcome], None] | None = None,
    ) -> None:
        """``run_headers``: put on every dead letter (the worker's code version, config hash).
        ``on_dead_lettered``: called once the dead letter is confirmed and before the original is
        acked, so an observer that records it (the job-state store) is never left behind by a
        worker killed between that ack and the settled hooks; it must not raise."""
        self._run_headers = dict(run_headers or {})
        self._on_dead_lettered = on_dead_lettered
        self._transport = transport
        self._redact = redact  # tracebacks quote the raising line and its message
        self._payloads = payloads
        self._clock = clock
        self._worker_id = worker_id
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._defer = defer or DeferPolicy()
        self._failures: collections.OrderedDict[str, int] = collections.OrderedDict()  # by message id

    async def settle(self, delivery: Delivery, outcome: Outcome, policy: RetryPolicy | None) -> SettleAction:
        """Carry out ``outcome``; returns what was done. Raises only if the broker failed us,
        after a pause that grows with each failure of this message (see the module docstring)."""
        job_type = outcome.job_type if policy is not None else None
        try:
            if outcome.kind is OutcomeKind.SUCCEEDED and not self._holds_claim_check(outcome.envelope):
                # Nearly every job: _carry_out's first case, without a coroutine of its own.
                await delivery.ack()
                action = SettleAction.SUCCEEDED
            else:
                action = await self._carry_out(delivery, outcome, policy)
        except Exception as exc:
            action = await self._after_failure(delivery, outcome, exc)
        else:
            if self._failures:
                self._failures.pop(delivery.message_id, None)
        self._metrics.settled(job_type, action, outcome)
        return action

    async def _carry_out(self, delivery: Delivery, outcome: Outcome, policy: RetryPolicy | None) -> SettleAction:
        match outcome.kind:
            case OutcomeKind.SUCCEEDED:
                await delivery.ack()
                if self._holds_claim_check(outcome.envelope):
                    await self._discard_payload(outcome.envelope)
                action = SettleAction.SUCCEEDED
            case OutcomeKind.RELEASE:
                await delivery.release()
                action = SettleAction.RELEASED
            case OutcomeKind.CANCELLED:  # never retried, never dead-lettered
                await delivery.ack()
                if self._holds_claim_check(outcome.envelope):
                    await self._discard_payload(outcome.envelope)
                action = SettleAction.CANCELLED
            case OutcomeKind.DEFER:
                action = await self._defer_or_dead(delivery, outcome)
            case OutcomeKind.RETRY:
                action = await self._retry_or_dead(delivery, outcome, policy or RetryPolicy())
            case OutcomeKind.DEAD:
                action = await self._dead_letter(delivery, outcome, outcome.reason or "rejected")
        return action

    async def _after_failure(self, delivery: Delivery, outcome: Outcome, exc: Exception) -> SettleAction:
        """Dead-letter a copy the broker keeps refusing; otherwise pause, then re-raise ``exc``."""
        if delivery.settled:  # acked or released already: nothing is held, nothing comes back
            raise exc
        failures = self._failures.pop(delivery.message_id, 0) + 1
        self._failures[delivery.message_id] = failures
        if len(self._failures) > _REMEMBERED_FAILURES:
            self._failures.popitem(last=False)
        copying = outcome.kind in (OutcomeKind.RETRY, OutcomeKind.DEFER)
        if copying and isinstance(exc, PublishNotConfirmed) and failures >= REFUSALS_BEFORE_DEAD_LETTER:
            try:
                action = await self._dead_letter(delivery, outcome, "settlement_failed", failure=exc)
            except Exception:
                log.debug("dead-lettering a refused copy failed too", exc_info=True)
            else:
                self._failures.pop(delivery.message_id, None)
                return action
        await self._clock.sleep(min(SETTLE_BACKOFF_CAP, SETTLE_BACKOFF_FIRST * 2 ** (failures - 1)))
        raise exc

    async def _retry_or_dead(self, delivery: Delivery, outcome: Outcome, policy: RetryPolicy) -> SettleAction:
        envelope = outcome.envelope
        assert envelope is not None  # RETRY only follows a decoded envelope
        if envelope.attempt >= policy.max_attempts:
            return await self._dead_letter(delivery, outcome, "exhausted")
        delay = policy.delay(envelope.attempt, self._rng)
        now = self._clock.now()
        due = now + timedelta(seconds=delay)
        if due - envelope.created_at > timedelta(seconds=policy.max_age):
            return await self._dead_letter(delivery, outcome, "exhausted")
        if envelope.deadline is not None and due >= envelope.deadline:
            return await self._dead_letter(delivery, outcome, "expired")
        kind = "timeout" if outcome.timed_out else "retried"
        try:
            # One clock reading for the budget check, the record and the copy's due time.
            record = self._attempt_record(envelope, outcome, kind, now)
            copy = self._copy_message(delivery, envelope.next_attempt(record), delay, due)
        except Exception as exc:  # not the broker's doing: another delivery would fail the same way
            return await self._dead_letter(delivery, outcome, "settlement_failed", failure=exc)
        await self._confirmed(delivery.queue, copy, "retry")
        await delivery.ack()
        return SettleAction.RETRIED

    async def _defer_or_dead(self, delivery: Delivery, outcome: Outcome) -> SettleAction:
        envelope = outcome.envelope
        assert envelope is not None
        deferrals = sum(1 for h in envelope.history if h.outcome == "deferred")
        if deferrals >= self._defer.max_deferrals:
            return await self._dead_letter(delivery, outcome, "unknown_version")
        try:
            copy = self._copy_message(
                delivery, envelope.with_history(self._attempt_record(envelope, outcome, "deferred")), self._defer.delay
            )
        except Exception as exc:
            return await self._dead_letter(delivery, outcome, "settlement_failed", failure=exc)
        await self._confirmed(delivery.queue, copy, "defer")
        await delivery.ack()
        return SettleAction.DEFERRED

    async def _dead_letter(
        self, delivery: Delivery, outcome: Outcome, reason: str, *, failure: Exception | None = None
    ) -> SettleAction:
        """Publish the dead letter, confirmed, then ack. ``failure``: the settlement's own error
        (the record's error; the job's own stays in its history)."""
        try:
            record = self._record(delivery, outcome, reason, failure)
            body = encode_model(record)
        except Exception as exc:  # the record must be written whatever it holds
            log.exception("dead-letter record could not be encoded; writing a bare one", extra={"reason": reason})
            record = self._bare_record(delivery, outcome, reason, exc)
            body = encode_model(record)
        # Trace context carried over: the dead letter stays in the job's trace.
        message = dead_letter_message(record, body, carried=h.carried_over(delivery.headers), run=self._run_headers)
        await self._confirmed(self._transport.dead_letter_queue(delivery.queue), message, "dead_letter")
        outcome.dead_letter_id, outcome.dead_letter_reason = record.dead_letter_id, reason
        if self._on_dead_lettered is not None:
            self._on_dead_lettered(outcome)
        await delivery.ack()
        self._metrics.dead_letter(record.job_type, reason, record.attempt)
        log.warning(
            "job dead-lettered",
            extra={"job_id": record.job_id, "job_type": record.job_type, "reason": reason},
        )
        return SettleAction.DEAD_LETTERED

    def _record(
        self, delivery: Delivery, outcome: Outcome, reason: str, failure: Exception | None
    ) -> DeadLetterRecord:
        envelope = outcome.envelope
        history: tuple[AttemptRecord, ...] = ()
        if envelope is not None:
            kind = "timeout" if outcome.timed_out else "failed" if outcome.error_type else "rejected"
            last = self._attempt_record(envelope, outcome, kind)
            history = (*envelope.history, last)
        if failure is None:
            error_type, error_message = outcome.error_type, outcome.error_message
            traceback = outcome.traceback_text()
        else:
            error_type, error_message = type(failure).__name__, self._text(str(failure))[:1000]
            traceback = Outcome(OutcomeKind.DEAD, error=failure).traceback_text()
        return DeadLetterRecord(
            dead_letter_id=new_job_id(),
            queue=delivery.queue,
            reason=reason,
            error_type=error_type,
            error_message=error_message,
            traceback=None if traceback is None else self._text(traceback),
            dead_lettered_at=self._clock.now(),
            worker_id=self._worker_id,
            job_id=envelope.job_id if envelope else None,
            job_type=envelope.job_type if envelope else None,
            attempt=envelope.attempt if envelope else None,
            history=history,
            original_headers=delivery.headers,
            original_body_b64=DeadLetterRecord.encode_body(delivery.body),
        )

    def _bare_record(self, delivery: Delivery, outcome: Outcome, reason: str, exc: Exception) -> DeadLetterRecord:
        """Only what cannot fail to encode: no history, no texts but fixed ones."""
        envelope = outcome.envelope
        return DeadLetterRecord(
            dead_letter_id=new_job_id(),
            queue=delivery.queue,
            reason=reason,
            error_type=outcome.error_type and json_safe_text(outcome.error_type),
            error_message=f"the full dead-letter record could not be encoded ({type(exc).__name__}); "
            "the original bytes and headers are kept",
            dead_lettered_at=self._clock.now(),
            worker_id=json_safe_text(self._worker_id)[:128],
            job_id=envelope.job_id if envelope else None,
            job_type=envelope.job_type if envelope else None,
            attempt=envelope.attempt if envelope else None,
            original_headers={json_safe_text(k): json_safe_text(v) for k, v in delivery.headers.items()},
            original_body_b64=DeadLetterRecord.encode_body(delivery.body),
        )

    def _text(self, text: str) -> str:
        """Masked (tracebacks quote the raising line and its message) and encodable."""
        return json_safe_text(self._redact(text))

    def _holds_claim_check(self, envelope: Envelope | None) -> bool:
        # Asked first so that an inline job (nearly all) awaits no coroutine for nothing.
        return self._payloads is not None and envelope is not None and isinstance(envelope.payload, PayloadReference)

    async def _discard_payload(self, envelope: Envelope | None) -> None:
        if self._holds_claim_check(envelope):
            assert self._payloads is not None and envelope is not None
            assert isinstance(envelope.payload, PayloadReference)
            await self._payloads.discard(envelope.payload)

    def _copy_message(
        self, delivery: Delivery, envelope: Envelope, delay: float, due_at: datetime | None = None
    ) -> OutgoingMessage:
        """The retry or deferral copy, encoded (which is where a copy can fail, before any I/O)."""
        if due_at is None:
            due_at = self._clock.now() + timedelta(seconds=delay)
        return job_message(envelope, encode_envelope(envelope), due_at=due_at, delay=delay,
                           carried=h.carried_over(delivery.headers), kind="retry")

    async def _confirmed(self, queue: str, message: OutgoingMessage, kind: str) -> None:
        begin = self._clock.monotonic()
        try:
            await self._transport.publish(queue, message)
        except Exception as exc:
            self._metrics.publish_failed(kind, exc)
            raise
        self._metrics.confirmed(kind, self._clock.monotonic() - begin)

    def _attempt_record(
        self, envelope: Envelope, outcome: Outcome, kind: str, now: datetime | None = None
    ) -> AttemptRecord:
        if now is None:
            now = self._clock.now()
        return new_attempt_record(
            attempt=envelope.attempt,
            worker_id=self._worker_id[:128],  # a long host name must not make the copy unwritable
            started_at=outcome.started_at or now,
            finished_at=outcome.finished_at or now,
            outcome=kind,
            error_type=outcome.error_type and outcome.error_type[:200],
            error_message=(outcome.error_message or None) and outcome.error_message[:1000],
        )
