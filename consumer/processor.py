"""Decode → resolve → middleware → handler → ``Outcome``. Never settles, never raises.

Every way a delivery can go wrong maps to exactly one outcome here, so settlement has one
decision table to carry out and bad input can never escape as a traceback loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import types
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from conveyor.common.clock import Clock
from conveyor.common.codec import decode_envelope, json_safe_text
from conveyor.common.deadlines import TimeLimit
from conveyor.common.errors import (
    CircuitOpen,
    JobCancelled,
    JobTimeout,
    PermanentError,
    RejectedMessage,
)
from conveyor.common.headers import check_content_labels
from conveyor.common.jobs.context import JobContext, envelope_log_fields
from conveyor.common.jobs.outcome import Outcome, OutcomeKind
from conveyor.common.jobs.registry import JobRegistry, JobSpec
from conveyor.common.logging import job_log_fields
from conveyor.common.middleware import Middleware, build_consume_chain
from conveyor.common.secrets import mask_secrets
from conveyor.common.transport.base import Delivery
from conveyor.consumer.breaker import BreakerBoard
from conveyor.consumer.payloads import PayloadResolver
from conveyor.consumer.threads import HandlerThreads, Overrun
from conveyor.schemas.envelope import Envelope, InlinePayload
from conveyor.schemas.registry import SchemaTooNew

__all__ = ["Processor"]

log = logging.getLogger(__name__)
_jobs_log = logging.getLogger("conveyor.jobs")  # the logger of every "job attempt failed" line


class _SucceededBefore(Exception):
    """A middleware recognised a redelivery of a job that already succeeded."""

_MAX_ERROR_TEXT = 1000

# What an exception means, first match wins (subclasses before their bases). A reason of None:
# the exception's own ``reason`` (rejections), else the caller's reason for a plain failure
# (``payload_unavailable`` while resolving the payload, ``error`` from the handler).
_CLASSIFICATION: tuple[tuple[type[BaseException], OutcomeKind, str | None], ...] = (
    (CircuitOpen, OutcomeKind.RELEASE, "circuit_open"),  # the breaker refused: no attempt spent
    (JobCancelled, OutcomeKind.CANCELLED, "cancelled"),  # an operator's cancel: acked, never retried
    (SchemaTooNew, OutcomeKind.DEFER, None),  # a newer worker will take it
    (RejectedMessage, OutcomeKind.DEAD, None),  # bad input, or a middleware's verdict (idempotency conflict)
    (PermanentError, OutcomeKind.DEAD, "permanent"),
    (JobTimeout, OutcomeKind.RETRY, "timeout"),
    (BaseException, OutcomeKind.RETRY, None),  # any other failure, the handler's BaseException too
)
DEFAULT_HANDLER_THREADS = 4  # a Processor used without a worker's pool
_REMEMBERED_CLASSES = 256  # exception types whose classification is remembered


def _attempt_failed_before_the_chain(envelope: Envelope, exc: Exception) -> None:
    """LogContextMiddleware's warning (the same logger, line and job fields) for an attempt
    that failed before the middlewares ran; type only, as there (messages may hold secrets)."""
    token = job_log_fields.set(envelope_log_fields(envelope))
    try:
        _jobs_log.warning("job attempt failed", extra={"error_type": type(exc).__name__})
    finally:
        job_log_fields.reset(token)


def _cancelled_from_outside(exc: BaseException) -> bool:
    """A ``CancelledError`` that cancels this task (a drain, the worker stopping), not one a
    handler raised of its own accord: only then has someone asked to cancel the task."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Processor:
    def __init__(
        self,
        *,
        registry: JobRegistry,
        middlewares: Sequence[Middleware],
        payloads: PayloadResolver,
        clock: Clock,
        worker_id: str,
        max_message_bytes: int,
        breakers: BreakerBoard | None = None,
        redact: Callable[[str], str] = mask_secrets,
        threads: HandlerThreads | None = None,
    ) -> None:
        """``threads``: where sync handlers run (the worker's, sized to its concurrency)."""
        self._threads = threads or HandlerThreads(DEFAULT_HANDLER_THREADS)
        self._registry = registry
        self._redact = redact
        self._breakers = breakers
        self._payloads = payloads
        self._clock = clock
        self._worker_id = worker_id
        self._max_bytes = max_message_bytes
        self._middlewares = tuple(middlewares)
        self._chain = build_consume_chain(middlewares, self._invoke)
        self._limits: dict[float, TimeLimit] = {}  # by a job's timeout: few distinct values
        self._classes: dict[type[BaseException], tuple[OutcomeKind, str | None]] = {}  # see _classification

    async def process(self, delivery: Delivery) -> Outcome:
        started = self._clock.now()
        try:
            check_content_labels(delivery.headers)  # a pickle that parses as JSON must not run
            envelope = decode_envelope(delivery.body, max_bytes=self._max_bytes)
        except RejectedMessage as exc:
            return self._failed(OutcomeKind.DEAD, None, exc, started, reason=exc.reason)
        # A publisher's attempt=999 is not believed past what the history records: handler,
        # retry budget, backoff and records all see the attempt the worker can account for.
        envelope = envelope.bounded_by_history()
        if envelope.expired(started):
            return Outcome(OutcomeKind.DEAD, envelope, reason="expired", started_at=started, finished_at=started)
        try:
            ctx = await self._context(envelope, delivery.queue)
        except _SucceededBefore:
            log.info("redelivered job already succeeded; acked without fetching its payload",
                     extra={"job_id": envelope.job_id})
            return Outcome(OutcomeKind.SUCCEEDED, envelope, started_at=started, finished_at=self._clock.now())
        except Exception as exc:  # e.g. the payload store is down: worth another try
            outcome = self._classified(envelope, exc, started, otherwise="payload_unavailable")
            if outcome.kind is OutcomeKind.RETRY:
                # The chain's LogContextMiddleware never saw it: a store outage or wrong S3
                # credentials spent every job's attempts without a line until its dead letter.
                _attempt_failed_before_the_chain(envelope, exc)
            return outcome
        ctx.headers = dict(delivery.headers)
        ctx.redelivered = delivery.redelivered or delivery.delivery_count > 1
        # The chain runs here rather than in a coroutine of its own: one less per job.
        begin = self._clock.monotonic()
        try:
            await self._chain(ctx)
        except Exception as exc:
            return self._classified(ctx.envelope, exc, started, otherwise="error", begin=begin)
        except BaseException as exc:
            if _cancelled_from_outside(exc):
                raise  # a drain or shutdown: the delivery goes back unspent (Worker._on_delivery)
            # The handler's own KeyboardInterrupt, SystemExit, GeneratorExit or CancelledError
            # (a sync handler's comes from its thread): a failed attempt like any other. Let
            # through, it took the worker down (KeyboardInterrupt, SystemExit), left the message
            # unsettled for good (the others) or gave it back unspent, at once, for ever.
            return self._classified(ctx.envelope, exc, started, otherwise="error", begin=begin)
        return Outcome(
            OutcomeKind.SUCCEEDED,
            ctx.envelope,
            started_at=started,
            finished_at=self._clock.now(),
            duration=self._clock.monotonic() - begin,
        )

    async def _context(self, envelope: Envelope, queue: str) -> JobContext:
        spec = self._registry.get(envelope.job_type)
        if envelope.schema_version > spec.version:
            # Say so before fetching a claim check that this worker could not use anyway.
            raise SchemaTooNew(
                f"{envelope.job_type} v{envelope.schema_version} is newer than v{spec.version} known here"
            )
        if not isinstance(envelope.payload, InlinePayload):
            for middleware in self._middlewares:
                if await middleware.succeeded_before(envelope, spec):
                    raise _SucceededBefore
        # An inline payload is its data (PayloadResolver.load's first line), without a coroutine.
        payload_in = envelope.payload
        data = payload_in.data if type(payload_in) is InlinePayload else await self._load(envelope, spec)
        payload = self._registry.schemas.resolve(
            envelope.job_type, envelope.schema_version, data, target=spec.version
        )
        return JobContext(envelope=envelope, spec=spec, payload=payload, worker_id=self._worker_id, queue=queue)

    async def _load(self, envelope: Envelope, spec: JobSpec) -> dict[str, object]:
        """Resolve the payload; a claim-check fetch answers to the job's breaker.

        An open breaker means no fetch at all (the delivery is released, no attempt spent).
        A store outage counts as the job's failure, exactly as if the handler had failed
        against its dependency; a successful fetch casts no vote, the handler's outcome does.
        """
        if isinstance(envelope.payload, InlinePayload) or self._breakers is None:
            return await self._payloads.load(envelope.payload)
        self._payloads.check(envelope.payload)  # a bad reference is the message's fault: no vote
        breaker = self._breakers.for_job(spec)
        if not breaker.admits():
            raise CircuitOpen(f"breaker {breaker.name!r} is {breaker.state.name.lower()}")
        try:
            return await self._payloads.load(envelope.payload)
        except RejectedMessage:
            raise
        except Exception:
            breaker.record_failure()
            raise

    async def _invoke(self, ctx: JobContext) -> object:
        """The innermost call: the handler itself, under its time limit."""
        spec = ctx.spec
        # Not wait_for (a task per job), nor asyncio.timeout (a timer per job): one timer per
        # distinct limit, see common.deadlines.
        limit = self._limits.get(spec.timeout)
        if limit is None:
            limit = self._limits[spec.timeout] = TimeLimit(spec.timeout)
        try:
            if spec.is_async:
                limited = limit(ctx)
                with limited:
                    result = await spec.handler(ctx.payload, ctx)
                if limited.expired:
                    # Cancelled at its limit, the handler swallowed the cancel and returned: its
                    # work was cut short, so a timeout, as a sync handler's late return is. It was
                    # acked as a success, a job whose effect may never have happened.
                    raise TimeoutError
            else:
                # Sync handlers run in the worker's threads so the loop (and AMQP heartbeats) never
                # starve; an overrun keeps its slot until its thread returns (consumer.threads).
                call = functools.partial(spec.handler, ctx.payload, ctx)
                result = await self._threads.run(call, limit=limit, job_id=ctx.job_id, job_type=spec.job_type)
        except TimeoutError:
            raise JobTimeout(f"{spec.job_type} exceeded its {spec.timeout:g}s timeout") from None
        if type(result) is types.CoroutineType:
            # A def or lambda around an async def (``lambda p, ctx: send(p)``) returns the work
            # unrun: it was acked as a success, the coroutine never awaited. One type check per job.
            result.close()  # no "never awaited" warning: the error says it
            raise PermanentError(f"{spec.job_type}: its handler returned a coroutine it never awaited, so the "
                                 "job's work never happened (a def or lambda around an async def?)")
        return result

    def closed(self, delivery: Delivery, exc: BaseException) -> Outcome:
        """The outcome of a delivery whose processing asyncio closed by throwing ``exc`` (a
        ``GeneratorExit`` the handler awaited) into its task: a failed attempt, decided again
        from the delivery alone, as nothing in that task could finish (``Worker._settle_closed``)."""
        started = self._clock.now()
        try:
            envelope = decode_envelope(delivery.body, max_bytes=self._max_bytes)
        except RejectedMessage as rejected:  # it decoded once; decided as process() would
            return self._failed(OutcomeKind.DEAD, None, rejected, started, reason=rejected.reason)
        return self._classified(envelope.bounded_by_history(), exc, started, otherwise="error")

    def overdue(self) -> list[Overrun]:
        """Async handlers cancelled at their time limit that go on: they swallowed the cancel
        (``except BaseException``, a retry loop around ``CancelledError``). Read by the
        watchdog's thread, like the sync handlers' overruns."""
        found = []
        for limit in list(self._limits.values()):
            for call, since in list(limit.overdue.items()):
                ctx: JobContext = call.label
                found.append(Overrun(key=id(call), job_id=ctx.job_id, job_type=ctx.job_type, thread_id=0,
                                     limit=limit.seconds, since=since, kind="async"))
        return found

    def _classified(
        self, envelope: Envelope, exc: BaseException, started: datetime, *, otherwise: str, begin: float | None = None
    ) -> Outcome:
        """The outcome ``_CLASSIFICATION`` gives ``exc``; ``otherwise``: the reason of a plain failure."""
        kind, reason = self._classification(type(exc))
        if kind is OutcomeKind.RELEASE:  # no attempt spent, nothing to report but the type
            return Outcome(kind, envelope, reason=reason, error_type=type(exc).__name__)
        if reason is None:
            reason = exc.reason if isinstance(exc, RejectedMessage) else otherwise
        outcome = self._failed(kind, envelope, exc, started, reason=reason, begin=begin)
        return replace(outcome, timed_out=True) if isinstance(exc, JobTimeout) else outcome

    def _classification(self, error: type[BaseException]) -> tuple[OutcomeKind, str | None]:
        """``_CLASSIFICATION``'s first match for ``error``, remembered per exception type: every
        failed attempt asks, and a handler raises few distinct types (a bounded number is kept,
        so classes made on the fly cannot grow it)."""
        found = self._classes.get(error)
        if found is None:
            found = next((k, r) for base, k, r in _CLASSIFICATION if issubclass(error, base))
            if len(self._classes) < _REMEMBERED_CLASSES:
                self._classes[error] = found
        return found

    def _failed(
        self,
        kind: OutcomeKind,
        envelope: Envelope | None,
        exc: BaseException,
        started: datetime,
        *,
        reason: str,
        begin: float | None = None,
    ) -> Outcome:
        return Outcome(
            kind,
            envelope,
            reason=reason,
            error_type=type(exc).__name__,
            error_message=self._error_text(exc),
            error=exc,  # its traceback is formatted only if a dead letter needs it
            started_at=started,
            finished_at=self._clock.now(),
            duration=0.0 if begin is None else self._clock.monotonic() - begin,
        )

    def _error_text(self, exc: BaseException) -> str:
        """Masked before it goes anywhere (a handler may well put a URL or a key into its
        exception; cut first, so a huge message is not scanned whole), and encodable: it goes
        into retry copies and dead letters, which must never fail to be written."""
        try:
            text = str(exc)
        except Exception:  # a broken __str__ must not break settling
            text = f"<{type(exc).__name__}: str() failed>"
        return json_safe_text(self._redact(text[: _MAX_ERROR_TEXT * 4]))[:_MAX_ERROR_TEXT]
