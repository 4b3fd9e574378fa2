"""The transport contract every broker implements, and nothing more.

A transport connects, declares a queue's topology idempotently, publishes a message and
returns only once the broker confirmed it (honouring an optional delay of any length up to
``common.backoff.MAX_DELAY``: the message never arrives early), consumes into
``Delivery`` objects that can be settled exactly once, fetches single messages for DLQ
browsing, and closes. Retry policy, dead-lettering, breakers and replay live above this
line, so every backend gets them for free and stays at parity.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from conveyor.common.backoff import check_delay
from conveyor.common.errors import AlreadySettled, ConfigurationError

__all__ = [
    "CONTROL_CHANNEL",
    "ConsumerHandle",
    "ControlHandler",
    "Delivery",
    "DeliveryHandler",
    "MessageKind",
    "OutgoingMessage",
    "QueueStats",
    "Transport",
]


# Who sends a message: ``job`` a new job or a replay (producers, operators), ``retry`` a
# worker's retry or deferral copy, ``dead_letter`` a worker's dead letter (sent to the DLQ).
# A broker that can scope permissions by sender routes each kind its own way (RabbitMQ: one
# exchange each, see ``rabbitmq_topology``); the others ignore it. Delivery is the same.
MessageKind = Literal["job", "retry", "dead_letter"]


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    body: bytes
    message_id: str
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds, at most MAX_DELAY; the broker holds it, never the worker's memory
    # Messages with the same key keep their order where the backend supports it.
    ordering_key: str | None = None
    kind: MessageKind = "job"

    def __post_init__(self) -> None:
        check_delay(self.delay)


class Delivery(abc.ABC):
    """One received message. Settle it exactly once: ``ack`` or ``release``."""

    __slots__ = ("body", "headers", "message_id", "queue", "redelivered", "delivery_count", "_settled")

    def __init__(
        self,
        *,
        body: bytes,
        headers: Mapping[str, str],
        message_id: str,
        queue: str,
        redelivered: bool,
        delivery_count: int,
    ) -> None:
        self.body = body
        self.headers = dict(headers)
        self.message_id = message_id
        self.queue = queue
        self.redelivered = redelivered
        self.delivery_count = delivery_count
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        """Remove the message from the broker: it succeeded or a copy now stands in for it."""
        self._claim()
        await self._ack()

    async def release(self) -> None:
        """Give the message back untouched (drain, open breaker); no attempt is spent."""
        self._claim()
        await self._release()

    def _claim(self) -> None:
        if self._settled:
            raise AlreadySettled(f"delivery {self.message_id} is already settled")
        self._settled = True

    @abc.abstractmethod
    async def _ack(self) -> None: ...

    @abc.abstractmethod
    async def _release(self) -> None: ...


DeliveryHandler = Callable[[Delivery], Awaitable[None]]
# A broadcast's body, for every subscriber of a control channel (see ``Transport.broadcast``).
ControlHandler = Callable[[bytes], Awaitable[None]]
CONTROL_CHANNEL = "conveyor.control"  # operators' commands to every worker (job cancels)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What a broker can tell about one work queue; ``None`` means "this transport can't tell"."""

    queue: str
    ready: int
    delayed: int | None = None  # waiting out a retry delay (delay tiers, scheduled messages)
    dead_letters: int | None = None
    consumers: int | None = None  # consumers attached, from every worker
    oldest_age: float | None = None  # seconds the oldest ready message has waited


class ConsumerHandle(abc.ABC):
    """A running consumer; ``attached`` is what readiness probes report."""

    @property
    @abc.abstractmethod
    def attached(self) -> bool: ...

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop receiving new deliveries; ones already handed out stay with their owner."""


class Transport(abc.ABC):
    """Connection to one broker. Use as ``async with transport:``."""

    scheme: str = ""

    async def __aenter__(self) -> Transport:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def declare(self, queue: str) -> None:
        """Create ``queue``, its delayed-delivery path and its DLQ; safe to call repeatedly."""

    @abc.abstractmethod
    async def publish(self, queue: str, message: OutgoingMessage) -> None:
        """Send and wait for the broker's confirm; raise ``PublishNotConfirmed`` if refused."""

    @abc.abstractmethod
    async def consume(self, queue: str, handler: DeliveryHandler, *, prefetch: int) -> ConsumerHandle:
        """Call ``handler`` for each delivery, with at most ``prefetch`` unsettled at once."""

    @abc.abstractmethod
    async def get(self, queue: str) -> Delivery | None:
        """Fetch one message without a consumer (DLQ tooling); None when the queue is empty."""

    async def end_browse(self, queue: str) -> None:
        """A scan of ``queue`` with ``get`` is over and what it took is settled. A transport that
        keeps a reader between ``get`` calls (Pulsar) closes it here, so it takes nothing that
        arrives later; the default has nothing to close."""
        return None

    @abc.abstractmethod
    async def delete(self, queue: str) -> None:
        """Remove ``queue``, its delayed-delivery path and its DLQ, with their messages."""

    @abc.abstractmethod
    async def depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (not counting delayed or unacked ones)."""

    def dead_letter_queue(self, queue: str) -> str:
        return f"{queue}.dlq"

    def check_consumer_timeout(self, queue: str, hold: float, holder: str) -> None:
        """Raise ``ConfigurationError`` if the broker would take a delivery of ``queue`` back from
        a consumer that keeps it unsettled for ``hold`` seconds (RabbitMQ's consumer timeout closes
        the whole channel, and every job in flight on it is redelivered). ``holder`` begins the
        message (which job, how long). Call after ``declare``. The default: no such limit (the
        in-memory broker has none; Pulsar's ack timeout is left off by its transport)."""
        return None

    async def broadcast(self, channel: str, body: bytes) -> None:
        """Optional capability: hand ``body`` to every subscriber of ``channel`` connected now,
        in any process (RabbitMQ: a fanout exchange; Pulsar: a non-persistent topic; memory: the
        broker's subscribers). Not stored: a process subscribing later never sees it, so what
        must not be missed is also written somewhere durable (cancels: the job-state store)."""
        raise ConfigurationError(f"the {self.scheme or type(self).__name__} transport has no broadcast channel")

    async def subscribe(self, channel: str, handler: ControlHandler) -> ConsumerHandle:
        """Optional capability: call ``handler`` with each broadcast on ``channel`` from now on,
        until the handle is cancelled (it re-attaches after a reconnect where the broker allows)."""
        raise ConfigurationError(f"the {self.scheme or type(self).__name__} transport has no broadcast channel")

    async def stats(self, queue: str) -> QueueStats:
        """Optional capability: depth by state, consumers, oldest age, as far as known.

        The default asks only ``depth`` (ready messages in the queue and its DLQ); transports
        that can tell more override it. Monitoring (``conveyor status``, the worker's
        ``conveyor_queue_depth`` gauge) uses this, so it must stay cheap.
        """
        return QueueStats(queue=queue, ready=await self.depth(queue),
                          dead_letters=await self.depth(self.dead_letter_queue(queue)))
