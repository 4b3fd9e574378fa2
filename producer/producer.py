"""The producer: validate, build the envelope, publish, and return only once confirmed.

A publish that times out has an *unknown* outcome: the broker may have stored it. It is
retried with the same job id (bounded, with backoff), never under a new id, so consumers
can recognise the duplicate by its job id and idempotency key.

With a ``payload_store``, a payload over ``payload_threshold`` bytes is uploaded first and the
message carries a claim check (``producer.claim_check``). The upload happens once, before the
publish retries, so every try sends the same reference. If the broker definitely refused the
message, the object is deleted again (best effort); after an *unknown* outcome it is kept,
since the message may exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from conveyor.common import bounds
from conveyor.common.backoff import check_delay
from conveyor.common.clock import Clock, SystemClock
from conveyor.common.codec import DEFAULT_MAX_MESSAGE_BYTES, MAX_DEPTH, check_json_data, encode_envelope
from conveyor.common.deadlines import TimeLimit
from conveyor.common.errors import (
    ConfigurationError,
    InvalidPayload,
    MalformedMessage,
    MessageTooLarge,
    PublishNacked,
    PublishNotConfirmed,
    PublishOutcomeUnknown,
    TransportError,
    UnknownJobType,
)
from conveyor.common.headers import PRODUCER_VERSION
from conveyor.common.job_state.base import JobStateStore
from conveyor.common.job_state.handle import JobHandle
from conveyor.common.jobs.command import PublishCommand, PublishReceipt
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.messages import job_message
from conveyor.common.metrics import UNKNOWN, WorkerMetrics
from conveyor.common.middleware import Middleware, build_publish_chain
from conveyor.common.payload_store.base import DEFAULT_PAYLOAD_THRESHOLD, PayloadStore
from conveyor.common.transport.base import Transport
from conveyor.producer.claim_check import ClaimCheck
from conveyor.producer.job_state import JobStateRecorder
from conveyor.schemas.envelope import (
    Envelope,
    PayloadReference,
    new_envelope,
)
from conveyor.schemas.registry import SchemaRegistry, describe_validation_error

__all__ = ["Producer"]

MAX_ENVELOPE_HEADERS = 64  # the envelope schema's limit: a full set of the caller's own is left alone

log = logging.getLogger(__name__)


def _worth_retrying(exc: BaseException) -> bool:
    # A refusal or an unroutable message will not change by retrying; a lost confirm, a
    # dropped connection or a nack (a full queue, a backlog quota) may.
    return isinstance(exc, TransportError) and (
        not isinstance(exc, PublishNotConfirmed) or isinstance(exc, PublishNacked)
    )


def _closed_error() -> ConfigurationError:
    # Said at once: its transport's "not connected" was retried as an outage (1.7 s, 4 tries).
    return ConfigurationError("this Producer is closed: publish inside 'async with producer:'")


class Producer:
    def __init__(
        self,
        transport: Transport,
        *,
        schemas: SchemaRegistry | None = None,
        routes: Mapping[str, str] | None = None,
        default_queue: str = DEFAULT_QUEUE,
        middlewares: Sequence[Middleware] = (),
        clock: Clock | None = None,
        metrics: WorkerMetrics | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        confirm_timeout: float = 10.0,
        publish_tries: int = 4,
        allow_unregistered: bool = False,
        declare_queues: bool = True,
        manage_transport: bool = True,
        payload_store: PayloadStore | None = None,
        payload_threshold: int = DEFAULT_PAYLOAD_THRESHOLD,
        job_state: JobStateStore | None = None,
        code_version: str | None = None,
    ) -> None:
        """``code_version``: put in each envelope's headers (``conveyor.producer-version``) and the
        job-state records. ``job_state``: record each job ``queued``/``scheduled`` there and return a ``JobHandle``
        (``status()``, ``result()``); the caller owns the store, as it owns a payload store."""
        confirm_timeout = bounds.seconds("confirm_timeout", confirm_timeout)
        publish_tries = bounds.count("publish_tries", publish_tries)
        max_message_bytes = bounds.count("max_message_bytes", max_message_bytes)
        payload_threshold = bounds.count("payload_threshold", payload_threshold)
        self.transport = transport
        self.schemas = schemas or SchemaRegistry()
        self._routes = dict(routes or {})
        self._default_queue = default_queue
        self._clock = clock or SystemClock()
        self._wall = time.time if type(self._clock) is SystemClock else None  # its now(), as Unix seconds
        self.metrics = metrics or WorkerMetrics()
        self._max_bytes = max_message_bytes
        self._confirm_timeout = confirm_timeout
        self._confirm_limit = TimeLimit(confirm_timeout)
        self._tries = publish_tries
        self._allow_unregistered = allow_unregistered
        self._declare = declare_queues
        self._manage_transport = manage_transport
        self._closed = False  # by its own __aexit__: a publish then is a mistake, not an outage to retry
        self._declared: set[str] = set()
        self._declare_lock = asyncio.Lock()
        self._middlewares = list(middlewares)
        self._job_state = job_state
        self._code_version = code_version
        if job_state is not None:  # innermost: it records only what the broker confirmed
            self._middlewares.append(JobStateRecorder(
                job_state, clock=self._clock, registry=self.metrics.registry, producer_version=code_version
            ))
        self._send = build_publish_chain(self._middlewares, self._confirmed_send)
        # Metric children looked up once, not per publish (see common.metrics).
        self._observe_confirm = self.metrics.observer(self.metrics.publish_confirm, "job")
        self._count_published: dict[str, Callable[[float], None]] = {}
        # The caller owns (and closes) the store, as it owns the transport unless told otherwise.
        self.claim_check = (
            ClaimCheck(payload_store, self._clock, threshold=payload_threshold) if payload_store else None
        )

    @classmethod
    def for_registry(cls, transport: Transport, jobs: JobRegistry, **kwargs: Any) -> Producer:
        """A producer that knows the schemas and queues of a worker's job registry."""
        routes = {spec.job_type: spec.queue for spec in jobs.specs()}
        return cls(transport, schemas=jobs.schemas, routes=routes, **kwargs)

    async def __aenter__(self) -> Producer:
        if self._manage_transport:
            await self.transport.connect()
            self._closed = False
        for middleware in self._middlewares:
            await middleware.startup()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for middleware in reversed(self._middlewares):
            await middleware.shutdown()
        if self._manage_transport:
            self._closed = True
            await self.transport.close()

    async def publish(
        self,
        job_type: str,
        payload: BaseModel | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        delay: float = 0.0,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        deadline: datetime | timedelta | None = None,
        version: int | None = None,
        queue: str | None = None,
        job_id: str | None = None,
    ) -> PublishReceipt:
        if self._closed:
            raise _closed_error()
        envelope = self.build_envelope(
            job_type,
            payload,
            idempotency_key=idempotency_key,
            headers=headers,
            correlation_id=correlation_id,
            causation_id=causation_id,
            deadline=deadline,
            version=version,
            job_id=job_id,
        )
        if self.claim_check is None:  # publish_envelope's steps, one coroutine fewer per publish
            check_delay(delay)
            return await self._publish(envelope, queue or self._routes.get(job_type, self._default_queue), delay)
        return await self.publish_envelope(envelope, queue=queue, delay=delay)

    def build_envelope(
        self,
        job_type: str,
        payload: BaseModel | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        deadline: datetime | timedelta | None = None,
        version: int | None = None,
        job_id: str | None = None,
    ) -> Envelope:
        """Validate the payload against its schema (before anything is sent) and wrap it.

        Raises ``MalformedMessage`` (reason ``malformed``) for data no worker would accept:
        NaN or infinity, integers beyond ±(2**53-1), lone surrogates, nesting past the limit,
        and for envelope fields the wire contract refuses (a job type not ``[a-z][a-z0-9_.-]*``,
        an over-long idempotency key, a header name with spaces).
        """
        if isinstance(payload, BaseModel):
            data = payload.model_dump(mode="json")
        elif isinstance(payload, Mapping):
            data = dict(payload)
        else:  # a list or a string would reach dict() and fail with its TypeError
            kind = type(payload).__name__
            raise InvalidPayload(f"a payload is a mapping (a JSON object) or a pydantic model, not {kind}")
        check_json_data(data, levels=MAX_DEPTH - 2)  # the envelope and its payload are two levels
        version = self._validate(job_type, data, version)
        now = self._clock.now()
        if isinstance(deadline, timedelta):
            try:
                deadline = now + deadline
            except OverflowError:  # past year 9999 (or before year 1): the builtin's error was all one got
                raise MalformedMessage("not a valid job: deadline: out of range") from None
        headers = dict(headers) if headers else {}
        if self._code_version and len(headers) < MAX_ENVELOPE_HEADERS:
            headers.setdefault(PRODUCER_VERSION, self._code_version)
        # Validated as Envelope(...) would, without a pass through pydantic for the fields the
        # producer made itself (schemas.envelope.new_envelope).
        try:
            return new_envelope(
                job_id=job_id or None,  # None: a fresh id
                job_type=job_type,
                schema_version=version,
                created_at=now,
                data=data,
                headers=headers,
                idempotency_key=idempotency_key or None,
                correlation_id=correlation_id or None,
                causation_id=causation_id,
                deadline=deadline,
            )
        except ValidationError as exc:  # a job type, key or header no worker would accept: ours, typed
            raise MalformedMessage(f"not a valid job: {describe_validation_error(exc)}") from None

    async def publish_envelope(
        self, envelope: Envelope, *, queue: str | None = None, delay: float = 0.0
    ) -> PublishReceipt:
        """Publish ``envelope``; a ``delay`` (seconds) over ``MAX_DELAY`` (30 days) is refused
        before anything is sent (``ConfigurationError``): every broker honours any delay up to it."""
        if self._closed:
            raise _closed_error()
        check_delay(delay)
        target = queue or self._routes.get(envelope.job_type, self._default_queue)
        if self.claim_check is not None:
            offloaded = await self.claim_check.offload(envelope)
            if offloaded is not envelope:
                try:
                    return await self._publish(offloaded, target, delay)
                except Exception as exc:
                    # Refused or never sent: nothing references the object. After a lost
                    # confirm or connection the message may exist, so its payload stays.
                    if isinstance(exc, PublishNotConfirmed) or not isinstance(exc, TransportError):
                        await self._discard(offloaded.payload)
                    raise
        return await self._publish(envelope, target, delay)

    async def _discard(self, reference: object) -> None:
        if self.claim_check is not None and isinstance(reference, PayloadReference):
            with contextlib.suppress(Exception):
                await self.claim_check.discard(reference)
                return
            log.warning("could not delete the payload of a refused publish; the sweep removes it")

    async def _publish(self, envelope: Envelope, target: str, delay: float) -> PublishReceipt:
        command = PublishCommand(queue=target, envelope=envelope, delay=max(0.0, delay))
        try:
            # Fast path: almost every publish is confirmed on the first try, and building a
            # tenacity controller per call costs more CPU than the rest of the publish.
            await self._send(command)
            tries = 1
        except Exception as exc:
            if self._tries == 1 or not _worth_retrying(exc):
                raise
            tries = await self._send_with_retries(command, exc)
        count = self._count_published.get(envelope.job_type)
        if count is None:
            known = self.schemas.knows(envelope.job_type)  # a bounded label: registered types only
            count = self.metrics.adder(self.metrics.published, envelope.job_type if known else UNKNOWN)
            if known:  # an unregistered type may be registered later: not cached under UNKNOWN
                self._count_published[envelope.job_type] = count
        count(1)
        if self._job_state is not None:
            return JobHandle(job_id=envelope.job_id, queue=target, confirmed_at=self._clock.now(), tries=tries,
                             store=self._job_state, scheduled=delay > 0)
        return PublishReceipt(job_id=envelope.job_id, queue=target, confirmed_at=self._clock.now(), tries=tries)

    async def _send_with_retries(self, command: PublishCommand, first_error: Exception) -> int:
        """Attempts 2…``publish_tries`` after attempt 1 failed with ``first_error``.

        Tenacity replays attempt 1's failure, so the stop, wait and retry rules (and the
        backoff before attempt 2) are exactly those of a loop that ran from attempt 1.
        """
        tries = 0
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._tries),
            wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
            retry=retry_if_exception(_worth_retrying),
            reraise=True,
        ):
            with attempt:
                tries += 1
                if tries == 1:
                    raise first_error
                await self._send(command)
        return tries

    async def _confirmed_send(self, command: PublishCommand) -> None:
        try:
            body = encode_envelope(command.envelope)
        except ValueError as exc:  # an envelope built past build_envelope's checks (PydanticSerializationError)
            raise MalformedMessage(f"the job cannot be encoded as JSON ({type(exc).__name__})") from None
        if len(body) > self._max_bytes:
            raise MessageTooLarge(f"encoded job is {len(body)} bytes, limit is {self._max_bytes}")
        if self._declare and command.queue not in self._declared:
            async with self._declare_lock:  # concurrent first publishes declare once, not N times
                if command.queue not in self._declared:
                    await self.transport.declare(command.queue)
                    self._declared.add(command.queue)
        # Undelayed: due when publish() was called, the envelope's created_at (no header to decode).
        due_at: datetime | float | None = None
        if command.delay:
            if self._wall is not None:  # the system clock: Unix seconds straight, no datetime per publish
                due_at = self._wall() + command.delay
            else:
                due_at = self._clock.now() + timedelta(seconds=command.delay)
        message = job_message(command.envelope, body, due_at=due_at, delay=command.delay, extra=command.headers)
        begin = self._clock.monotonic()
        try:
            # Not wait_for (a task per publish), nor asyncio.timeout (a timer per publish): one
            # timer for every publish in flight, see common.deadlines.
            with self._confirm_limit():
                await self.transport.publish(command.queue, message)
        except TimeoutError:
            error = PublishOutcomeUnknown(
                f"no confirm within {self._confirm_timeout:g}s for job {command.envelope.job_id}"
            )
            self.metrics.publish_failed("job", error)
            raise error from None
        except Exception as exc:
            self.metrics.publish_failed("job", exc)
            raise
        self._observe_confirm(max(0.0, self._clock.monotonic() - begin))  # metrics.confirmed("job", …)

    def _validate(self, job_type: str, data: dict[str, Any], version: int | None) -> int:
        latest = self.schemas.latest(job_type)
        # Nearly every publish; a version of another type (True, 1.0) takes the long way as ever.
        if latest is not None and (not version or (type(version) is int and version == latest[0])):
            self.schemas.validate_as(latest[1], job_type, latest[0], data)
            return latest[0]
        if not self.schemas.knows(job_type):
            if not self._allow_unregistered:
                raise UnknownJobType(f"job type {job_type!r} is not registered with this producer")
            return version or 1
        version = version or self.schemas.latest_version(job_type)
        self.schemas.validate(job_type, version, data)
        return version
