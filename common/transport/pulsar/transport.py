"""The Apache Pulsar transport, on pulsar-client's native asyncio API (``pulsar.asyncio``).

Names, URL options, the admin REST calls and what the backlog counts: see
``common.transport.pulsar.admin``; deliveries and consumers: ``.consumer``; ``get()``'s
readers: ``.browsing``; what a failed send means: ``.results``.

* **A queue is a persistent topic with one durable subscription** (``conveyor`` unless
  configured), its DLQ the topic ``<queue>-DLQ``. A topic without a subscription keeps
  nothing, so ``declare`` creates the subscription on both (subscribe at Earliest, close):
  messages published before any worker ran wait for it. Publishing to, consuming or fetching
  from a queue that nobody declared is refused (``PublishNotConfirmed`` / ``QueueNotFound``)
  where Pulsar would auto-create the topic and drop the message: RabbitMQ's ``mandatory``.
* **Shared subscription** by default: deliveries spread over every consumer, what a consumer
  held when it went away goes to the others, and the broker honours ``deliver_after`` (it
  silently ignores it on Exclusive and Failover subscriptions, which are therefore not
  offered). ``subscription_type="key_shared"``: messages with the same ``ordering_key`` go to
  one consumer in publish order, and that consumer runs them one after the other.
* **Confirms.** ``publish`` returns once the broker acknowledged the send. A send timeout
  (``send_timeout``) or a lost connection is ``PublishOutcomeUnknown`` (the client may still
  have written it); a refusal (too big, topic terminated, quota, authorisation) is
  ``PublishNotConfirmed``. **No batching**: with it, one awaited send waits out the batching
  delay (10 ms by default, so sends in sequence run several times slower); batched entries
  would also be counted as one in the backlog, acked and redelivered as a whole. Every
  message carries its ``message_id``.
* **Delays** are ``deliver_after``: the broker keeps the message until it is due, never the
  worker's memory, and (``isDelayedDeliveryDeliverAtTimeStrict=true``) never early. No retry
  topic and no client nack backoff (the C++ client's redelivery delay is one fixed value).
* **Delayed copies are passed on once.** Pulsar 4.0's Shared dispatcher spends a round-robin
  turn on a delayed message when it first reads it (it picks a consumer, then finds the
  message delayed) and another when it is due: with an even number of consumers and only
  delayed traffic, every delayed message goes to the same half of them (measured with two
  consumers: 24 of 24 to the same one; undelayed ones alternate). A job deferred by a worker
  that cannot run it could then bounce between old workers forever. So a delayed copy that
  comes back to the transport that published it (``pass_on_own_delayed``, Shared only) is
  negatively acked once, unseen: the broker hands it to the next consumer, or back to this
  one after ``nack_delay`` if it is alone.
* **release** is a negative ack with a short redelivery delay (``nack_delay``, 0.5 s). Closing
  the transport (or a consumer with nothing left in flight) gives every unsettled delivery
  back at once. Acks are grouped by the client (≤ 100 ms; not configurable from Python) and
  flushed on close: after a crash, jobs settled in its last 100 ms are delivered again.
* **Prefetch.** ``consume`` hands out at most ``prefetch`` unsettled deliveries; the client
  buffers up to ``receiver_queue_size`` (default: ``prefetch``) more, which the broker gives to
  other consumers when this one closes. (A zero-size receive queue would be exact, but the
  client then strands the rest of a batched entry from a foreign, batching producer.)
* **get** keeps one browsing consumer per queue with a single pending ``receive`` that is
  never cancelled: a cancelled receive (``asyncio.wait_for`` timing out) silently swallows the
  next message. It returns None once nothing arrived within ``get_wait`` *and* the admin API
  shows nothing stored that no consumer holds (up to ``get_max_wait`` while it does). When a
  scan has come up empty or given back what it took, and all it fetched is settled, the
  browsing consumer is closed (what it released returns at once, not after the nack delay),
  and the next ``get`` waits for that close before it subscribes again. Browsing destroys
  nothing: no dead-letter policy on the browsing subscription, and Pulsar has no delivery
  limit of its own, so a release only raises the message's redelivery count.
* **Delivery fields.** ``headers`` are the message properties minus the reserved
  ``conveyor.message_id``; ``delivery_count`` is the broker's redelivery count + 1, which
  counts releases (nacks) but not a take-back from a consumer that closed or crashed.
* **Recovery.** The client reconnects producers and consumers by itself after a broker restart
  or a cut connection; ``ConsumerHandle.attached`` is False while a consumer is disconnected.
* **TLS** (``pulsar+ssl://``, see ``common.tls``): the client trusts ``tls.ca_file`` (else the
  system bundle), always validates the host name and never allows an insecure connection; the
  https admin API uses one verifying ``ssl.SSLContext`` with the same CA, built once at
  ``connect``. ``pulsar://`` never uses TLS. The client reports a failed handshake only as
  ``ConnectError``, so ``connect`` then completes one TLS handshake of its own with the first
  host (sending nothing) to name the cause: ``TlsError``, at once, not retried.
* **Completions in batches.** On the hot paths (send receipts, the worker's receives and
  acks) the transport calls the ``_pulsar`` objects under ``pulsar.asyncio`` the way
  ``pulsar.asyncio`` itself does, but their callbacks land in a ``LoopInbox``
  (``common.transport.pulsar.inbox``): one loop wake-up per batch instead of one self-pipe
  write per message and per ack. Same futures, same errors (``PulsarException``). An ack the
  client answers before ``acknowledge_async`` returns (ack grouping, the default) is read at
  once, with no future (``Completion``). Sends made during one loop turn are handed to the
  client back to back at its end (``common.transport.pulsar.sends``): one wake-up of its I/O
  thread per burst instead of one per publish. The admin API runs on h11 over asyncio streams
  (``pulsar.admin_http``): aiohttp was a large part of a worker's memory for one depth sample
  per metrics interval.
* The token or password never appears in a log line, an error or a repr.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import ssl
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import _pulsar
import pulsar
import pulsar.asyncio as pulsar_asyncio
from pulsar.asyncio import PulsarException

from conveyor.common import bounds
from conveyor.common.errors import (
    ConfigurationError,
    PublishNotConfirmed,
    QueueNotFound,
    TlsError,
    TransportError,
)
from conveyor.common.logging import PULSAR_NATIVE_LOGGER
from conveyor.common.secrets import mask_url, scrub_error
from conveyor.common.tasks import Slots, TaskSet
from conveyor.common.tls import TlsConfig, check_scheme, probe_handshake
from conveyor.common.transport.base import (
    ConsumerHandle,
    ControlHandler,
    Delivery,
    DeliveryHandler,
    OutgoingMessage,
    QueueStats,
    Transport,
)
from conveyor.common.transport.pulsar.admin import (
    DEFAULT_SUBSCRIPTION,
    SUBSCRIPTION_TYPES,
    AdminClient,
    SubscriptionStats,
    TopicNames,
    check_admin_url,
    check_name,
    parse_pulsar_url,
)
from conveyor.common.transport.pulsar.browsing import Browsing
from conveyor.common.transport.pulsar.consumer import MESSAGE_ID_PROPERTY, PulsarConsumer, mark_retrieved, result_of
from conveyor.common.transport.pulsar.control import PulsarSubscription, control_topic
from conveyor.common.transport.pulsar.inbox import LoopInbox
from conveyor.common.transport.pulsar.results import producer_error, send_error
from conveyor.common.transport.pulsar.sends import SendQueue

__all__ = ["PulsarTransport"]

log = logging.getLogger(__name__)

# The native client's own warnings and errors go straight to stderr through its file logger:
# its console logger writes to stdout, which the CLI's --json output owns, and a Python logger
# is unavailable while the interpreter exits, when the client falls back to that console logger.
# The client is only ever given the credential-free service URL, so its lines hold no secret.
# How much it writes follows this Python logger's level, read when a client is made: the CLI's
# --log-level, and a one-shot command mutes it as it mutes aiormq's (one failure, one line).
_CLIENT_LOG_FILE = "/dev/stderr"
_NATIVE_LEVELS = (
    (logging.DEBUG, pulsar.LoggerLevel.Debug),
    (logging.INFO, pulsar.LoggerLevel.Info),
    (logging.WARNING, pulsar.LoggerLevel.Warn),
    (logging.ERROR, pulsar.LoggerLevel.Error),
)
_CLOSE_GRACE = 0.05  # seconds; see PulsarTransport.close
_OWN_DELAYED_LIMIT = 10_000  # delayed copies remembered for passing on (oldest forgotten first)
_TOPIC_CACHE = 4096  # queues whose topic name is remembered (a worker has a handful)
_Result = pulsar.Result


def _native_logger() -> pulsar.FileLogger:
    python_log = logging.getLogger(PULSAR_NATIVE_LOGGER)
    for python_level, native_level in _NATIVE_LEVELS:
        if python_log.isEnabledFor(python_level):
            return pulsar.FileLogger(native_level, _CLIENT_LOG_FILE)
    return pulsar.FileLogger(pulsar.LoggerLevel.Error, os.devnull)


class PulsarTransport(Transport):
    """Transport over Apache Pulsar with a Shared (or Key_Shared) subscription (see module docs)."""

    scheme = "pulsar"

    def __init__(
        self,
        url: str,
        *,
        subscription: str | None = None,
        subscription_type: str | None = None,
        tenant: str | None = None,
        namespace: str | None = None,
        admin_url: str | None = None,
        token: str | None = None,
        send_timeout: float = 8.0,
        operation_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        nack_delay: float = 0.5,
        receiver_queue_size: int | None = None,
        get_wait: float = 0.5,
        get_max_wait: float = 10.0,
        max_pending_sends: int = 1000,
        pass_on_own_delayed: bool = True,
        tls: TlsConfig | None = None,
    ) -> None:
        parsed = parse_pulsar_url(url)
        options = parsed.options
        self._url = url
        self._service_url = parsed.service_url
        self._secure = parsed.service_url.startswith("pulsar+ssl://")
        check_scheme(tls, secure=self._secure, shown_url=mask_url(url))
        self._tls = tls or TlsConfig()
        self._ssl_context: ssl.SSLContext | None = None  # built once, at the first connect
        self._client_tls: dict[str, Any] = {}
        subscription = subscription or options.get("subscription", DEFAULT_SUBSCRIPTION)
        self.subscription = check_name("subscription", subscription)
        kind = (subscription_type or options.get("subscription_type", "shared")).lower()
        if kind not in SUBSCRIPTION_TYPES:
            raise ConfigurationError(
                f"subscription_type must be one of {', '.join(SUBSCRIPTION_TYPES)} (delays need a shared subscription)"
            )
        self.key_shared = kind == "key_shared"
        self.names = TopicNames(
            tenant or options.get("tenant", "public"), namespace or options.get("namespace", "default")
        )
        send_timeout = bounds.seconds("send_timeout", send_timeout)
        operation_timeout = bounds.seconds("operation_timeout", operation_timeout)
        connect_timeout = bounds.seconds("connect_timeout", connect_timeout)
        get_wait = bounds.seconds("get_wait", get_wait)
        get_max_wait = bounds.seconds("get_max_wait", get_max_wait)
        nack_delay = bounds.seconds("nack_delay", nack_delay, zero_ok=True)
        if receiver_queue_size is not None:
            receiver_queue_size = bounds.count("receiver_queue_size", receiver_queue_size)
        max_pending_sends = bounds.count("max_pending_sends", max_pending_sends)
        self._token = token or options.get("token") or None
        self._username, self._password = parsed.username, parsed.password
        if admin_url:  # the URL's own was checked by parse_pulsar_url
            check_admin_url(admin_url)
        self.admin_url = (admin_url or parsed.admin_url).rstrip("/")
        if self._secure and not self.admin_url.lower().startswith("https://"):
            # The admin API carries the token or password too: no plaintext side door.
            raise ConfigurationError("a pulsar+ssl:// URL needs an https:// admin_url")
        self.send_timeout = send_timeout
        self.operation_timeout = operation_timeout
        self.connect_timeout = connect_timeout
        self.nack_delay = nack_delay
        self.receiver_queue_size = receiver_queue_size
        self.get_wait = get_wait
        self.get_max_wait = max(get_max_wait, get_wait)
        self._max_pending = max_pending_sends
        self.pass_on_own_delayed = pass_on_own_delayed and not self.key_shared
        # Ids of delayed copies this transport published and has not seen come back (bounded).
        self._own_delayed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._client: pulsar_asyncio.Client | None = None
        self._admin: AdminClient | None = None
        self._producers: dict[str, asyncio.Future[tuple[pulsar_asyncio.Producer, Slots]]] = {}
        # Queue → (the client's native producer, its send window) once created: the publish fast
        # path, one dict lookup (the future checks and the topic lookup showed in the profile).
        self._senders: dict[str, tuple[Any, Slots]] = {}
        # Queue → topic, checked once: the name check's regex showed in a pipelined publish's profile.
        self._topics: dict[str, str] = {}
        self._consumers: list[PulsarConsumer] = []
        self._subscriptions: list[PulsarSubscription] = []  # control channels, closed with the client
        self._browsing = Browsing(self)  # get(): a reader per queue being scanned
        self._declared: set[str] = set()  # queues known to have our subscription
        self._tasks = TaskSet()
        self._housekeeping = TaskSet()  # what close() waits for
        self._lock = asyncio.Lock()
        self._completions: LoopInbox | None = None
        self._sends: SendQueue | None = None

    def __repr__(self) -> str:
        return f"PulsarTransport({mask_url(self._url)!r}, subscription={self.subscription!r})"

    def dead_letter_queue(self, queue: str) -> str:
        return f"{queue}-DLQ"

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        async with self._lock:
            if self._client is not None:
                return
            if self._ssl_context is None and (self._secure or self.admin_url.lower().startswith("https://")):
                # Reads certificate files: in a thread, once per transport.
                self._ssl_context, self._client_tls = await asyncio.to_thread(self._tls_setup)
            client = self._new_client()
            admin = AdminClient(
                self.admin_url,
                timeout=self.operation_timeout,
                headers=AdminClient.auth_headers(token=self._token, username=self._username, password=self._password),
                ssl_context=self._ssl_context,
            )
            try:
                # The client connects lazily: a topic lookup (it creates nothing) proves the broker
                # answers and the namespace exists.
                probe = self.names.topic("conveyor-connect-probe")
                await asyncio.wait_for(client.get_topic_partitions(probe), self.connect_timeout)
                await admin.start()
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), self.operation_timeout)
                await admin.close()
                if isinstance(exc, (PulsarException, asyncio.TimeoutError)):
                    failed = await self._tls_failure()
                    if failed is not None:
                        raise failed from exc
                    reason = result_of(exc).name if isinstance(exc, PulsarException) else "Timeout"
                    raise TransportError(f"cannot connect to {mask_url(self._url)}: {reason}") from exc
                raise
            self._client, self._admin = client, admin
            self._declared.clear()

    def _tls_setup(self) -> tuple[ssl.SSLContext, dict[str, Any]]:
        """The admin API's context and the client's TLS options (blocking: reads files)."""
        return self._tls.ssl_context(), self._tls.pulsar_client_options() if self._secure else {}

    async def _tls_failure(self) -> TlsError | None:
        """Why the first broker refused our TLS handshake, if it did (see module docs)."""
        if not self._secure or self._ssl_context is None:
            return None
        first = urlsplit("//" + self._service_url.partition("://")[2].split(",")[0])
        host, port = first.hostname or "localhost", first.port or 6651
        return await probe_handshake(host, port, self._ssl_context, timeout=self.connect_timeout)

    def _new_client(self) -> pulsar_asyncio.Client:
        authentication = None
        if self._token:
            authentication = pulsar.AuthenticationToken(self._token)
        elif self._username:
            authentication = pulsar.AuthenticationBasic(self._username, self._password or "")
        try:
            return pulsar_asyncio.Client(
                self._service_url,
                authentication=authentication,
                operation_timeout_seconds=max(1, round(self.operation_timeout)),
                connection_timeout_ms=max(1, round(self.connect_timeout * 1000)),
                logger=_native_logger(),
                **self._client_tls,
            )
        except (ValueError, pulsar.PulsarException) as exc:
            raise ConfigurationError(f"invalid Pulsar URL {mask_url(self._url)!r}: {self._scrub(exc)}") from exc

    async def close(self) -> None:
        async with self._lock:
            client, admin = self._client, self._admin
            self._client = self._admin = None
            consumers, self._consumers = self._consumers, []
            self._producers.clear()
            self._senders.clear()
            self._declared.clear()
            # Closing a consumer flushes its grouped acks, fails its pending receive, and makes the
            # broker take back every unsettled delivery (consumed or fetched), as the contract asks.
            # Each one explicitly, before the client, and waited for.
            for handle in consumers:
                await handle.close()
            await self._browsing.close()  # closes already under way are housekeeping, waited for below
            subscriptions, self._subscriptions = self._subscriptions, []
            for subscription in subscriptions:
                await subscription.cancel()
            await self._housekeeping.wait(self.operation_timeout)  # consumers being closed, releases being sent
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), self.operation_timeout)
                # The close callback fires while the client's I/O thread is still winding down;
                # destroying the client (or exiting the process) right then aborts or segfaults
                # in one run of ten to twenty (pulsar-client 3.13, measured). A short pause, with
                # the client still referenced, lets the thread finish first (0 crashes in 160
                # runs, half of them on a machine with both cores busy).
                await asyncio.sleep(_CLOSE_GRACE)
            if admin is not None:
                await admin.close()

    # -- topology --------------------------------------------------------------------
    async def declare(self, queue: str) -> None:
        for name in (queue, self.dead_letter_queue(queue)):
            if name in self._declared:
                continue
            # A consumer with no receive queue is sent nothing; subscribing creates the durable
            # subscription at the earliest message, closing leaves it in place.
            consumer = await self._subscribe(name, receiver_queue_size=0)
            await self._close_consumer(consumer)
            self._declared.add(name)

    async def delete(self, queue: str) -> None:
        admin = self._admin_client()
        for name in (queue, self.dead_letter_queue(queue)):
            topic = self.names.topic(name)
            # Close what we hold on the topic first, or the client would re-create it.
            self._senders.pop(name, None)
            producer = self._producers.pop(topic, None)
            if producer is not None and producer.done() and not producer.exception():
                with contextlib.suppress(PulsarException):
                    await producer.result()[0].close()
            await self._browsing.forget(name)
            await admin.delete_topic(self.names.rest_path(name))
            self._declared.discard(name)

    async def depth(self, queue: str) -> int:
        return (await self._stats(queue)).ready

    async def stats(self, queue: str) -> QueueStats:
        """Ready, delayed (while a consumer is attached) and consumers from the admin API;
        dead letters are the DLQ subscription's whole backlog."""
        work = await self._stats(queue)
        dlq = await self._stats(self.dead_letter_queue(queue))
        return QueueStats(
            queue=queue,
            ready=work.ready,
            delayed=work.delayed if work.consumers else None,
            dead_letters=dlq.backlog,
            consumers=work.consumers,
        )

    async def _stats(self, queue: str) -> SubscriptionStats:
        stats = await self._admin_client().subscription_stats(self.names.rest_path(queue), self.subscription)
        if stats is None:
            self._declared.discard(queue)
            raise QueueNotFound(f"no queue {queue!r} (topic or subscription {self.subscription!r} missing)")
        return stats

    async def _is_declared(self, queue: str) -> bool:
        if queue in self._declared:
            return True
        subscriptions = await self._admin_client().subscriptions(self.names.rest_path(queue))
        if subscriptions is None or self.subscription not in subscriptions:
            return False
        self._declared.add(queue)
        return True

    # -- publish ---------------------------------------------------------------------
    async def publish(self, queue: str, message: OutgoingMessage) -> None:
        sender = self._senders.get(queue)
        if sender is None:
            sender = await self._sender(queue)
        native, window = sender
        # What producer.send() builds, built here so the receipt can come back through the inbox.
        builder = _pulsar.MessageBuilder()
        body = message.body
        builder.content(body if type(body) is bytes else bytes(body))
        properties = dict(message.headers)  # one call into the client for all of them
        properties[MESSAGE_ID_PROPERTY] = message.message_id
        builder.properties(properties)
        key = message.ordering_key or (message.message_id if self.key_shared else None)
        if key:
            # Key_Shared routes on the ordering key; without one every message would go to one
            # consumer, so the message id spreads them.
            builder.ordering_key(key)
            builder.partition_key(key)
        if message.delay > 0:
            builder.deliver_after(timedelta(seconds=message.delay))
        # Never more in flight than the client queues: no ProducerQueueIsFull.
        if not window.try_take():
            await window.take()
        try:
            await self._send_queue().send(native, builder.build())
        except PulsarException as exc:
            raise send_error(queue, exc) from exc
        finally:
            window.give()
        if message.delay > 0 and self.pass_on_own_delayed:
            self._own_delayed[message.message_id] = None
            if len(self._own_delayed) > _OWN_DELAYED_LIMIT:
                self._own_delayed.popitem(last=False)

    def _inbox(self) -> LoopInbox:
        """Where pulsar-client's callbacks land on this loop (see ``pulsar.inbox``)."""
        inbox = self._completions
        if inbox is None or inbox.loop is not asyncio.get_running_loop():
            inbox = self._completions = LoopInbox.here()
        return inbox

    def _send_queue(self) -> SendQueue:
        """Where this loop's sends wait for the end of its turn (see ``pulsar.sends``)."""
        sends = self._sends
        # Asked of the queue's own loop: get_running_loop() is a getpid() system call per
        # publish on 3.11. No current task there (a loop that stopped: tests) takes the long way.
        if sends is None or asyncio.current_task(sends.loop) is None:
            loop = asyncio.get_running_loop()
            if sends is None or sends.loop is not loop:
                sends = self._sends = SendQueue(self._inbox())
        return sends

    def _came_back(self, message_id: str) -> bool:
        """True, once, for a delayed copy this transport published (see module docs)."""
        if message_id in self._own_delayed:
            del self._own_delayed[message_id]
            return True
        return False

    async def _sender(self, queue: str) -> tuple[Any, Slots]:
        """The queue's producer, created on first use, cached for the fast path once created."""
        producer, window = await self._producer(queue)
        sender = (producer._producer, window)
        # Only while it is still the current one (not dropped by delete or close meanwhile).
        future = self._producers.get(self._topics.get(queue, ""))
        if future is not None and future.done() and not future.cancelled() and future.exception() is None:
            if future.result()[0] is producer and len(self._senders) < _TOPIC_CACHE:
                self._senders[queue] = sender
        return sender

    async def _producer(self, queue: str) -> tuple[pulsar_asyncio.Producer, Slots]:
        topic = self._topics.get(queue)
        if topic is None:
            topic = self.names.topic(queue)  # raises for a bad name: never cached
            if len(self._topics) < _TOPIC_CACHE:
                self._topics[queue] = topic
        future = self._producers.get(topic)
        if future is not None and future.done() and not future.cancelled() and future.exception() is None:
            return future.result()  # created: no shield (an extra future and callbacks per publish)
        if future is None or (future.done() and (future.cancelled() or future.exception() is not None)):
            future = asyncio.ensure_future(self._create_producer(queue, topic))
            future.add_done_callback(mark_retrieved)
            self._producers[topic] = future
        # Shielded: one caller giving up must not cancel the creation others wait on. A failed
        # creation stays cached only until the next publish, which tries again.
        return await asyncio.shield(future)

    async def _create_producer(self, queue: str, topic: str) -> tuple[pulsar_asyncio.Producer, Slots]:
        if not await self._is_declared(queue):
            raise PublishNotConfirmed(f"no queue {queue!r}: message unroutable (declare {queue!r} first)")
        try:
            producer = await self._client_or_fail().create_producer(
                topic,
                batching_enabled=False,
                send_timeout_millis=max(1, round(self.send_timeout * 1000)),
                max_pending_messages=self._max_pending,
                block_if_queue_full=False,  # True would block the event loop's thread
            )
        except PulsarException as exc:
            raise producer_error(queue, exc) from exc
        return producer, Slots(self._max_pending)

    # -- consume / get ---------------------------------------------------------------
    async def consume(self, queue: str, handler: DeliveryHandler, *, prefetch: int) -> ConsumerHandle:
        if not await self._is_declared(queue):
            raise QueueNotFound(f"no queue {queue!r}")
        handle = PulsarConsumer(self, queue, handler, max(1, prefetch))
        await handle.start()
        self._consumers = [c for c in self._consumers if not c.closed]
        self._consumers.append(handle)
        return handle

    async def get(self, queue: str) -> Delivery | None:
        return await self._browsing.get(queue)

    async def end_browse(self, queue: str) -> None:
        await self._browsing.end(queue)

    # -- control channel -------------------------------------------------------------
    async def broadcast(self, channel: str, body: bytes) -> None:
        topic = control_topic(self.names.tenant, self.names.namespace, check_name("channel", channel))
        try:
            producer = await self._client_or_fail().create_producer(topic, batching_enabled=False)
            try:
                await producer.send(body)
            finally:
                with contextlib.suppress(PulsarException):
                    await producer.close()
        except PulsarException as exc:
            raise TransportError(f"broadcast on {channel!r} failed ({result_of(exc).name})") from exc

    async def subscribe(self, channel: str, handler: ControlHandler) -> ConsumerHandle:
        topic = control_topic(self.names.tenant, self.names.namespace, check_name("channel", channel))
        subscription = PulsarSubscription(self._client_or_fail(), topic, handler)
        try:
            await subscription.start()
        except PulsarException as exc:
            raise TransportError(f"cannot subscribe to {channel!r} ({result_of(exc).name})") from exc
        self._subscriptions.append(subscription)
        return subscription

    # -- helpers ---------------------------------------------------------------------
    async def _subscribe(self, queue: str, *, receiver_queue_size: int) -> pulsar_asyncio.Consumer:
        consumer_type = pulsar.ConsumerType.KeyShared if self.key_shared else pulsar.ConsumerType.Shared
        try:
            return await self._client_or_fail().subscribe(
                self.names.topic(queue),
                self.subscription,
                consumer_type=consumer_type,
                receiver_queue_size=receiver_queue_size,
                initial_position=pulsar.InitialPosition.Earliest,  # only used when it creates the subscription
                negative_ack_redelivery_delay_ms=round(self.nack_delay * 1000),
            )
        except PulsarException as exc:
            result = result_of(exc)
            if result in (_Result.ConsumerBusy, _Result.NotAllowedError):
                raise ConfigurationError(
                    f"cannot subscribe to {queue!r} as {self.subscription!r} ({result.name}): "
                    "is the subscription in use with another type (shared / key_shared)?"
                ) from exc
            raise TransportError(f"cannot subscribe to {queue!r} ({result.name})") from exc

    async def _close_consumer(self, consumer: pulsar_asyncio.Consumer) -> None:
        with contextlib.suppress(PulsarException, asyncio.TimeoutError, RuntimeError):
            await asyncio.wait_for(consumer.close(), self.operation_timeout)

    def _client_or_fail(self) -> pulsar_asyncio.Client:
        if self._client is None:
            raise TransportError("Pulsar transport is not connected")
        return self._client

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            raise TransportError("Pulsar transport is not connected")
        return self._admin

    def _spawn(self, coro: Coroutine[Any, Any, Any], *, housekeeping: bool = False) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; ``close()`` waits for housekeeping (closes, nacks)."""
        return (self._housekeeping if housekeeping else self._tasks).spawn(coro)

    def _scrub(self, exc: BaseException) -> str:
        return scrub_error(exc, self._url, self._token, self._password)
