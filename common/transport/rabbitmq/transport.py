"""The RabbitMQ transport (aio-pika), for RabbitMQ 4.0 and later (tested on 4.0.5).

The exchanges and queues it declares, the delay tiers and why they are quorum queues behind
one exchange per sender (least-privilege users): see ``common.transport.rabbitmq_topology``.

* **Two connections.** RabbitMQ blocks a *publishing* connection under a memory or disk
  alarm; consuming, acking, ``get``, ``declare`` and ``depth`` use the other connection, so
  workers keep draining queues while publishes wait.
* **Robust.** Both are ``connect_robust``: after a broker restart or a cut connection the
  connections come back by themselves, and each consumer re-attaches with the same prefetch
  and tag (``common.transport.rabbitmq_consumer``); ``ConsumerHandle.attached`` is False
  until it has (readiness). Deliveries from before the cut cannot be settled any more
  (``TransportError``): the broker has already put them back.
* **Confirms.** ``publish`` returns after the broker's confirm; a nack, a return
  (unroutable, ``mandatory``), a missing exchange or a missing write permission is
  ``PublishNotConfirmed``; a connection lost after sending is ``PublishOutcomeUnknown``.
  Messages are persistent and carry ``message_id`` and headers. A 404/403 closes an AMQP
  channel, so the first publish to each exchange probes it on a channel of its own
  (``common.transport.rabbitmq_publisher``).
* **Declaring needs ``configure``.** A user without it (a least-privilege producer or
  operator) gets ``declare`` as a check instead: passive declares, which need no permission,
  confirm that a worker or an operator already created the topology (``AccessRefused`` if not).
* **Delivery fields.** ``delivery_count`` comes from the quorum queue's ``x-delivery-count``
  (+1) on a redelivery, and is 1 on a first delivery: RabbitMQ 4.x sets the header only once
  a message came back (a nack, a reject or a closed channel all count), so on a first
  delivery it can only be a publisher's. ``headers`` keep string values only: broker-set ``x-death`` (a list) and
  ``x-delivery-count`` are dropped, ``x-first-death-reason`` & co. are kept, so a message
  dead-lettered by the delivery limit is recognisable in the DLQ.
* **TLS** (``amqps://``, see ``common.tls``): one verifying ``ssl.SSLContext`` (CA from
  ``tls``, else the system store; host name always checked), built once at ``connect`` and
  used by both connections and every reconnect. ``amqp://`` never uses TLS and ``amqps://``
  never falls back to plaintext. aiormq's URL options that would pick or skip certificates
  (``no_verify_ssl``, ``cafile``, …) are refused. A failed handshake on connect is a
  ``TlsError`` at once, not a retry loop; after a successful connect, reconnects keep
  insisting on TLS (a certificate that stopped verifying is logged and retried).
* The URL's password never appears in a log line, an error or a repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import aio_pika
import aiormq
import aiormq.abc
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import (
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
)
from aiormq.exceptions import ChannelAccessRefused

from conveyor.common import bounds
from conveyor.common.errors import AccessRefused, ConfigurationError, QueueNotFound, TransportError
from conveyor.common.secrets import mask_url, scrub_error
from conveyor.common.tasks import TaskSet
from conveyor.common.tls import TlsConfig, check_scheme, tls_error
from conveyor.common.transport.base import (
    ConsumerHandle,
    ControlHandler,
    Delivery,
    DeliveryHandler,
    OutgoingMessage,
    QueueStats,
    Transport,
)
from conveyor.common.transport.rabbitmq.addresses import parse_amqp_url
from conveyor.common.transport.rabbitmq.consumer import BROKER_ERRORS as _BROKER_ERRORS
from conveyor.common.transport.rabbitmq.consumer import (
    AmqpConsumer,
    AmqpDelivery,
    ChannelSettler,
    ConsumerLink,
    consumer_frame_buffer,
)
from conveyor.common.transport.rabbitmq.control import AmqpSubscription, declare_control_exchange
from conveyor.common.transport.rabbitmq.failover import open_failover
from conveyor.common.transport.rabbitmq.properties import JobProperties
from conveyor.common.transport.rabbitmq.publisher import ExchangePublisher
from conveyor.common.transport.rabbitmq.topology import (
    CONSUMER_TIMEOUT,
    DEFAULT_CONSUMER_TIMEOUT,
    DEFAULT_DELAY_TIERS,
    DIRECT,
    LEGACY_DLQ_ARGUMENTS,
    REMAINING_DELAY,
    Target,
    Topology,
    check_queue_name,
    consumer_timeout_advice,
    legacy_dlq_advice,
    tier_queue,
)

__all__ = ["RabbitMQTransport"]

log = logging.getLogger(__name__)

_PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)
# aiormq's URL options for certificates: our context would silently override them, and
# no_verify_ssl must never even look like an option. TLS comes from ``tls`` (CONVEYOR_TLS_*).
_TLS_URL_OPTIONS = frozenset({"cafile", "capath", "cadata", "keyfile", "certfile", "no_verify_ssl"})
# What the broker writes when it dead-letters (a tier's TTL expiring): x-death (not a string,
# already dropped from Delivery.headers), x-first-death-* and x-last-death-*.
_DEATH_HEADERS = ("x-first-death-", "x-last-death-")


class RabbitMQTransport(Transport):
    """Transport over RabbitMQ ≥ 4.0 with quorum queues and delay tiers (see module docs)."""

    scheme = "amqp"

    def __init__(
        self,
        url: str,
        *,
        delay_tiers: Sequence[float] = DEFAULT_DELAY_TIERS,
        delivery_limit: int = 20,
        connect_timeout: float = 10.0,
        reconnect_interval: float = 1.0,
        connection_name: str = "conveyor",
        tls: TlsConfig | None = None,
        consumer_timeout: float = DEFAULT_CONSUMER_TIMEOUT,
    ) -> None:
        """``consumer_timeout``: seconds RabbitMQ lets a consumer keep a delivery of a queue that
        an earlier Conveyor declared (without ``x-consumer-timeout``): the node's
        ``consumer_timeout``, or a ``consumer-timeout`` policy on those queues. The ones this
        version declares carry ``CONSUMER_TIMEOUT`` (see ``rabbitmq.topology``)."""
        if not url.lower().startswith(("amqp://", "amqps://")):
            raise ConfigurationError(f"not an AMQP URL: {mask_url(url)!r}")
        secure = url.lower().startswith("amqps://")
        check_scheme(tls, secure=secure, shown_url=mask_url(url))
        # First: it refuses a malformed host (an unclosed IPv6 bracket) that urlsplit would
        # raise a bare ValueError for.
        self._addresses = parse_amqp_url(url)  # one host, or a cluster's (rabbitmq.addresses)
        refused = sorted(_TLS_URL_OPTIONS.intersection(name.lower() for name, _ in parse_qsl(urlsplit(url).query)))
        if refused:
            raise ConfigurationError(
                f"AMQP URL option(s) {', '.join(refused)} not accepted: TLS is always verified; "
                "set the CA and client certificate with CONVEYOR_TLS_CA_FILE / _CERT_FILE / _KEY_FILE"
            )
        # amqps only; None keeps a plain amqp:// connection plain.
        self._tls = (tls or TlsConfig()) if secure else None
        self._ssl_context: ssl.SSLContext | None = None
        self._vhost = unquote(urlsplit(url).path[1:]) or "/"  # AMQP URI: an empty path is the default vhost
        connect_timeout = bounds.seconds("connect_timeout", connect_timeout)
        reconnect_interval = bounds.seconds("reconnect_interval", reconnect_interval)
        # A node's consumer_timeout may be set past a day (it is milliseconds in a 32-bit-safe range).
        consumer_timeout = bounds.seconds("consumer_timeout", consumer_timeout, at_most=30 * bounds.DAY)
        self._consumer_timeout = consumer_timeout
        self._timed_queues: set[str] = set()  # work queues declared with CONSUMER_TIMEOUT
        self.topology = Topology.create(delay_tiers, delivery_limit)
        self._url = url
        self.connect_timeout = connect_timeout
        self._reconnect_interval = reconnect_interval
        self._connection_name = connection_name
        self._publisher: AbstractRobustConnection | None = None
        self._consumer: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._get_channel: tuple[aiormq.abc.AbstractChannel, ChannelSettler] | None = None
        self._consumers: list[AmqpConsumer] = []
        self._tasks = TaskSet()
        self._lock = asyncio.Lock()
        self._known_queues: set[str] = set()  # seen to exist, so basic.get cannot hit a 404
        self._targets: dict[tuple[str, str], Target] = {}  # (queue, kind) → where an undelayed publish goes
        self._delayed_targets: dict[tuple[str, str], Callable[[float], Target]] = {}  # (queue, kind) → by delay
        self._underlay: aiormq.abc.AbstractChannel | None = None  # the publish channel's, while open
        self._exchanges = ExchangePublisher(
            shared_channel=self._ready_publish_channel,
            probe_channel=lambda: self._raw_channel(self._publisher, confirms=True),
            scrub=self._scrub,
        )

    def __repr__(self) -> str:
        return f"RabbitMQTransport({mask_url(self._url)!r})"

    @property
    def max_delay(self) -> float:
        """The largest delay tier; longer delays go round the tiers again (up to ``MAX_DELAY``)."""
        return self.topology.max_delay

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        async with self._lock:
            if self._publisher is not None:
                return
            if self._tls is not None and self._ssl_context is None:
                # Once per transport (it reads files, hence the thread); both connections and
                # every reconnect share it.
                self._ssl_context = await asyncio.to_thread(self._tls.ssl_context)
            publisher = await self._open_connection("publisher")
            consumer: AbstractRobustConnection | None = None
            try:
                consumer = await self._open_connection("consumer")
                channel = await publisher.channel(publisher_confirms=True, on_return_raises=True)
            except BaseException as exc:
                for connection in (consumer, publisher):
                    if connection is not None:
                        with contextlib.suppress(Exception):
                            await connection.close()
                if isinstance(exc, _BROKER_ERRORS):
                    raise TransportError(f"cannot open the publisher channel: {self._scrub(exc)}") from exc
                raise
            self._publisher, self._consumer, self._publish_channel = publisher, consumer, channel
            self._known_queues.clear()

    async def _open_connection(self, role: str) -> AbstractRobustConnection:
        # Every host of a cluster URL in turn; after a lost connection, the next one (failover).
        try:
            connection, _ = await open_failover(
                self._addresses.urls,
                timeout=self.connect_timeout,
                reconnect_interval=self._reconnect_interval,
                client_properties={"connection_name": f"{self._connection_name}:{role}"},
                ssl_context=self._ssl_context,  # None for amqp://, which aiormq never wraps in TLS
            )
            return connection
        except _BROKER_ERRORS as exc:
            # connect_robust gives up on a failed *first* attempt; a TLS failure says why.
            failed = tls_error(exc, host=self._addresses.hosts[-1][0])
            if failed is not None:
                raise failed from exc
            raise TransportError(
                f"cannot connect to {mask_url(self._url)} ({role}): {self._scrub(exc)}"
            ) from exc

    async def close(self) -> None:
        async with self._lock:
            publisher, consumer = self._publisher, self._consumer
            self._publisher = self._consumer = self._publish_channel = self._get_channel = None
            self._underlay = None
            consumers, self._consumers = self._consumers, []
            for handle in consumers:
                handle._detach()
            # Closing the connections returns every unsettled delivery (consumed or fetched)
            # to its queue, as the contract asks.
            for connection in (consumer, publisher):
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close()

    # -- topology --------------------------------------------------------------------
    async def declare(self, queue: str) -> None:
        """Exchanges, then queues, then bindings; all idempotent. Without ``configure``: a check."""
        try:
            await self._declare(queue)
        except AccessRefused as refused:
            await self._check_declared(queue, refused)

    async def _declare(self, queue: str) -> None:
        dlq = self.dead_letter_queue(queue)
        # The DLQ first, then the work queue, then the tiers.
        [(_, dlq_arguments), (_, work_arguments), *tiers] = self.topology.declarations(queue, dlq)
        await self._declare_dead_letter_queue(dlq, dlq_arguments)
        async with self._control_channel() as channel:
            for exchange in self.topology.exchanges(queue):
                with self._settings_conflict(f"exchange {exchange!r}", "delete it"):
                    await channel.exchange_declare(exchange, exchange_type=DIRECT, durable=True)
        await self._declare_work_queue(queue, dlq, work_arguments)
        async with self._control_channel() as channel:
            for name, arguments in tiers:
                with self._settings_conflict(f"queue {name!r}", "delete it or match them"):
                    await channel.queue_declare(name, durable=True, arguments=arguments)
                self._known_queues.add(name)
            for binding in self.topology.bindings(queue, dlq):
                await channel.queue_bind(binding.queue, binding.exchange, routing_key=binding.routing_key)

    async def _declare_dead_letter_queue(self, dlq: str, arguments: dict[str, Any]) -> None:
        """The DLQ without a delivery limit; one an earlier version declared (with RabbitMQ's
        default limit) is kept, with an error in the log naming the policy that lifts it."""
        try:
            async with self._control_channel() as channel:  # its own: a 406 closes the channel
                await channel.queue_declare(dlq, durable=True, arguments=arguments)
        except ChannelPreconditionFailed:
            with self._settings_conflict(f"queue {dlq!r}", "delete it or match them"):
                async with self._control_channel() as channel:
                    await channel.queue_declare(dlq, durable=True, arguments=LEGACY_DLQ_ARGUMENTS)
            log.error(legacy_dlq_advice(dlq, self._vhost), extra={"queue": dlq})
        self._known_queues.add(dlq)

    async def _declare_work_queue(self, queue: str, dlq: str, arguments: dict[str, Any]) -> None:
        """With our consumer timeout; a queue an earlier version declared without it is kept as
        it is, and the node's timeout (``consumer_timeout``) is taken to apply to it."""
        try:
            async with self._control_channel() as channel:  # its own: a 406 closes the channel
                await channel.queue_declare(queue, durable=True, arguments=arguments)
        except ChannelPreconditionFailed as first:
            # Both refusals in the text: RabbitMQ names one inequivalent argument each time.
            with self._settings_conflict(f"queue {queue!r}", f"delete it or match them: {self._scrub(first)};"):
                async with self._control_channel() as channel:
                    legacy = self.topology.legacy_work_queue_arguments(queue, dlq)
                    await channel.queue_declare(queue, durable=True, arguments=legacy)
            self._timed_queues.discard(queue)
            log.info("queue %r has no x-consumer-timeout of its own (an earlier Conveyor declared it): the "
                     "broker's consumer timeout applies, taken to be %gs", queue, self._consumer_timeout,
                     extra={"queue": queue})
        else:
            self._timed_queues.add(queue)
        self._known_queues.add(queue)

    def check_consumer_timeout(self, queue: str, hold: float, holder: str) -> None:
        """``CONSUMER_TIMEOUT`` on a queue this transport declared, else ``consumer_timeout``
        (the node's setting, or a policy, which AMQP cannot read; see ``rabbitmq.topology``)."""
        legacy = queue not in self._timed_queues
        limit = self._consumer_timeout if legacy else CONSUMER_TIMEOUT
        if hold > limit:
            raise ConfigurationError(
                f"{holder}, longer than RabbitMQ's consumer timeout for it ({limit:g}s), after which the broker "
                f"closes the channel and redelivers every job in flight on it; "
                f"{consumer_timeout_advice(queue, self._vhost, legacy=legacy)}"
            )

    @contextlib.contextmanager
    def _settings_conflict(self, what: str, advice: str) -> Iterator[None]:
        """A declare that finds ``what`` with other arguments (PRECONDITION_FAILED)."""
        try:
            yield
        except ChannelPreconditionFailed as exc:
            raise ConfigurationError(f"{what} exists with other settings; {advice}: {self._scrub(exc)}") from exc

    async def _check_declared(self, queue: str, refused: AccessRefused) -> None:
        # Passive declares need no permission. Bindings cannot be checked this way (a missing
        # one shows as an unroutable, returned publish), nor tiers: the declaring worker may
        # have other delay tiers than this process, and only its tiers matter.
        names = [queue, self.dead_letter_queue(queue)]
        checks = [("exchange", x) for x in self.topology.exchanges(queue)] + [("queue", q) for q in names]
        async with self._control_channel() as channel:
            for kind, name in checks:
                try:
                    if kind == "exchange":
                        await channel.exchange_declare(name, passive=True)
                    else:
                        await channel.queue_declare(name, passive=True)
                except ChannelNotFoundEntity:
                    raise AccessRefused(
                        f"{kind} {name!r} does not exist and this user may not declare it ({refused}); "
                        f"a worker or an operator with configure permission must declare {queue!r} first"
                    ) from None
        self._known_queues.update(names)
        log.debug("no configure permission; %r is declared already", queue, extra={"queue": queue})

    async def delete(self, queue: str) -> None:
        dlq = self.dead_letter_queue(queue)
        plan = self.topology.declarations(queue, dlq)
        exchanges = self.topology.exchanges(queue)
        self._exchanges.forget(exchanges)
        async with self._control_channel() as channel:
            for name, _ in reversed(plan):  # tiers and the work queue before their DLQ
                await channel.queue_delete(name)
                self._known_queues.discard(name)
            for exchange in exchanges:
                await channel.exchange_delete(exchange)

    async def depth(self, queue: str) -> int:
        check_queue_name(queue)
        async with self._control_channel() as channel:
            try:
                declared = await channel.queue_declare(queue, passive=True)
            except ChannelNotFoundEntity:
                self._known_queues.discard(queue)
                raise QueueNotFound(f"no queue {queue!r}") from None
        self._known_queues.add(queue)
        return int(declared.message_count or 0)

    async def stats(self, queue: str) -> QueueStats:
        """Ready messages and consumers of ``queue``, its delay tiers summed, its DLQ.

        Passive declares (no management plugin needed), on one channel unless a tier is
        missing (a worker with other delay tiers declared the queue). AMQP cannot tell a
        message's age without taking it, so ``oldest_age`` stays unknown.
        """
        check_queue_name(queue)
        dlq = self.dead_letter_queue(queue)
        pending = [queue, dlq, *(tier_queue(queue, tier) for tier in self.topology.delay_tiers)]
        counts: dict[str, tuple[int, int]] = {}
        while pending:
            async with self._control_channel() as channel:
                while pending:
                    name = pending.pop(0)
                    try:
                        declared = await channel.queue_declare(name, passive=True)
                    except ChannelNotFoundEntity:
                        if name in (queue, dlq):
                            raise QueueNotFound(f"no queue {name!r}") from None
                        # A tier this process's topology has and the declarer's had not: skip
                        # it; the 404 closed the channel, go on with a new one.
                        break
                    counts[name] = (int(declared.message_count or 0), int(declared.consumer_count or 0))
        self._known_queues.update(counts)
        ready, consumers = counts.pop(queue)
        dead_letters, _ = counts.pop(dlq)
        return QueueStats(
            queue=queue,
            ready=ready,
            delayed=sum(count for count, _ in counts.values()),
            dead_letters=dead_letters,
            consumers=consumers,
        )

    async def _require_queue(self, queue: str) -> None:
        if queue not in self._known_queues:
            await self.depth(queue)

    # -- publish ---------------------------------------------------------------------
    async def publish(self, queue: str, message: OutgoingMessage) -> None:
        if message.delay > 0:  # every retry copy: the tier and TTL from names worked out once
            targets = self._delayed_targets.get((queue, message.kind))
            if targets is None:
                targets = self._delayed_targets[(queue, message.kind)] = self.topology.targets(queue, message.kind)
            target = targets(message.delay)
        else:
            known = self._targets.get((queue, message.kind))
            if known is None:  # the same for every undelayed publish of a kind to a queue
                known = self._targets[(queue, message.kind)] = self.topology.target(queue, 0, message.kind)
            target = known
        headers: dict[str, Any] = dict(message.headers)
        headers.pop(REMAINING_DELAY, None)  # only a delay sets it, never a sender
        if target.remaining_ms:
            headers[REMAINING_DELAY] = str(target.remaining_ms)
        properties = JobProperties(
            headers=headers or None,  # no table at all: the consumer's client then decodes none
            message_id=message.message_id,
            delivery_mode=_PERSISTENT,
            # Milliseconds as AMQP wants them: exact, no float seconds in between.
            expiration=None if target.ttl_ms is None else str(target.ttl_ms),
        )
        await self._exchanges.publish(target, bytes(message.body), properties, queue=queue, kind=message.kind)

    async def _pass_on(self, delivery: Delivery, remaining: float) -> None:
        """Send a message that left the largest delay tier with ``remaining`` seconds still to
        wait through the tiers again (as a worker's copy, confirmed); the caller then acks it.
        The broker's dead-lettering headers stay behind: the copy starts a new wait."""
        headers = {k: v for k, v in delivery.headers.items() if not k.lower().startswith(_DEATH_HEADERS)}
        await self.publish(delivery.queue, OutgoingMessage(
            body=delivery.body, message_id=delivery.message_id, headers=headers, delay=remaining, kind="retry",
        ))

    async def _ready_publish_channel(self) -> aiormq.abc.AbstractChannel:
        underlay = self._underlay
        if underlay is not None and not underlay.is_closed and self._publish_channel is not None:
            # The robust channel reopens as a *new* aiormq channel: while this one is open it is
            # the current one, and asking aio-pika again would only cost CPU per publish.
            return underlay
        channel, connection = self._publish_channel, self._publisher
        if channel is None or connection is None:
            raise TransportError("RabbitMQ transport is not connected")
        if channel.is_closed or not connection.connected.is_set():
            try:
                # During a reconnect, wait (bounded) for the robust channel to be reopened. Only
                # then: a timer per publish costs CPU, and an open channel needs no wait.
                async with asyncio.timeout(self.connect_timeout):
                    await channel.ready()
            except TimeoutError:
                raise TransportError(
                    f"publisher connection not re-established within {self.connect_timeout:g}s"
                ) from None
        try:
            self._underlay = await channel.get_underlay_channel()
        except ChannelInvalidStateError as exc:
            raise TransportError("publisher channel is closed; message not sent") from exc
        return self._underlay

    # -- consume / get ---------------------------------------------------------------
    async def consume(self, queue: str, handler: DeliveryHandler, *, prefetch: int) -> ConsumerHandle:
        # Checked on a throwaway channel: a 404 on the robust consumer channel would make it
        # race to reopen itself while we close it.
        await self._require_queue(queue)
        link = ConsumerLink(
            connection=lambda: self._consumer, scrub=self._scrub, spawn=self._spawn,
            open_channel=functools.partial(self._raw_channel, frame_buffer=consumer_frame_buffer(prefetch)),
            connect_timeout=self.connect_timeout, reconnect_interval=self._reconnect_interval,
            pass_on=self._pass_on,
        )
        handle = AmqpConsumer(link, queue, handler, max(1, prefetch))
        try:
            await handle.start()  # closes its channel if it fails
        except ChannelNotFoundEntity:
            raise QueueNotFound(f"no queue {queue!r}") from None
        except ChannelAccessRefused as exc:
            raise AccessRefused(f"this user may not consume from {queue!r}: {self._scrub(exc)}") from exc
        except (*_BROKER_ERRORS, RuntimeError) as exc:  # RuntimeError: the connection is closed
            raise TransportError(f"cannot consume from {queue!r}: {self._scrub(exc)}") from exc
        self._consumers = [c for c in self._consumers if not c._cancelled]
        self._consumers.append(handle)
        return handle

    async def get(self, queue: str) -> Delivery | None:
        # A 404 would close the get channel and with it hand back everything fetched on it
        # and not yet settled: check an unknown queue on a throwaway channel first.
        await self._require_queue(queue)
        channel, settler = await self._getter()
        try:
            message = await channel.basic_get(queue, no_ack=False, timeout=self.connect_timeout)
        except ChannelNotFoundEntity:
            self._known_queues.discard(queue)
            raise QueueNotFound(f"no queue {queue!r}") from None
        except ChannelAccessRefused as exc:  # the channel is gone, and with it what it held
            raise AccessRefused(f"this user may not read {queue!r}: {self._scrub(exc)}") from exc
        except _BROKER_ERRORS as exc:
            raise TransportError(f"basic.get from {queue!r} failed: {self._scrub(exc)}") from exc
        if isinstance(message.delivery, aiormq.spec.Basic.GetEmpty):
            return None
        return AmqpDelivery(message, queue, settler)

    async def _getter(self) -> tuple[aiormq.abc.AbstractChannel, ChannelSettler]:
        # One long-lived channel for basic.get: what it fetched stays unacked on it until
        # settled, or until the transport closes and the broker takes it back.
        if self._get_channel is None or self._get_channel[0].is_closed:
            channel = await self._raw_channel()
            self._get_channel = (channel, ChannelSettler(channel))
        return self._get_channel

    # -- control channel -------------------------------------------------------------
    async def broadcast(self, channel: str, body: bytes) -> None:
        async with self._control_channel() as raw:
            await declare_control_exchange(raw, channel)
            await raw.basic_publish(body, exchange=channel, routing_key="")

    async def subscribe(self, channel: str, handler: ControlHandler) -> ConsumerHandle:
        subscription = AmqpSubscription(self._consumer_connection(), channel, handler)
        try:
            await subscription.start()
        except ChannelAccessRefused as exc:
            raise AccessRefused(f"this user may not subscribe to {channel!r}: {self._scrub(exc)}") from exc
        except _BROKER_ERRORS as exc:
            raise TransportError(f"cannot subscribe to {channel!r}: {self._scrub(exc)}") from exc
        return subscription

    # -- helpers ---------------------------------------------------------------------
    def _consumer_connection(self) -> AbstractRobustConnection:
        if self._consumer is None:
            raise TransportError("RabbitMQ transport is not connected")
        return self._consumer

    async def _raw_channel(
        self, connection: AbstractRobustConnection | None = None, *, confirms: bool = False,
        frame_buffer: int = aiormq.Connection.FRAME_BUFFER_SIZE,
    ) -> aiormq.abc.AbstractChannel:
        """A plain (non-robust) channel for one-off RPCs (default: on the consumer connection).

        Plain because a failed passive declare closes the channel with 404, and a robust
        channel would then race to reopen itself under us. With ``confirms``: a publisher
        channel whose returns raise, for probing an exchange (``rabbitmq_publisher``).
        """
        if connection is None:
            connection = self._consumer_connection()
        try:
            await asyncio.wait_for(connection.ready(), self.connect_timeout)
            transport = connection.transport
            if transport is None:
                raise TransportError("RabbitMQ connection is reconnecting")
            return await transport.connection.channel(
                publisher_confirms=confirms, on_return_raises=confirms, frame_buffer_size=frame_buffer,
                timeout=self.connect_timeout,
            )
        except TimeoutError:
            raise TransportError(f"RabbitMQ connection not available within {self.connect_timeout:g}s") from None
        except _BROKER_ERRORS as exc:
            raise TransportError(f"cannot open a channel: {self._scrub(exc)}") from exc

    @contextlib.asynccontextmanager
    async def _control_channel(self) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        channel = await self._raw_channel()
        try:
            yield channel
        except (ChannelNotFoundEntity, ChannelPreconditionFailed):
            raise
        except ChannelAccessRefused as exc:
            raise AccessRefused(self._scrub(exc)) from exc
        except _BROKER_ERRORS as exc:
            raise TransportError(f"RabbitMQ request failed: {self._scrub(exc)}") from exc
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*_BROKER_ERRORS):
                    await channel.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.spawn(coro)

    def _scrub(self, exc: BaseException) -> str:
        return scrub_error(exc, self._url)

