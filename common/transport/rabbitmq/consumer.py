"""Consuming from RabbitMQ on plain aiormq channels that we re-attach ourselves.

Why not aio-pika's robust queue: for every delivery it builds an ``IncomingMessage`` (an
object that checks each attribute write against a lock) and runs the callback in one more
task on top of aiormq's own; in the worker's drain profile that was about a tenth of the
CPU a job costs. aiormq hands us the frames; the rest is here:

* **Re-attach.** A supervisor task waits for the channel to close (cut connection, broker
  restart, a broker-side cancel after the queue was deleted), then, once the robust
  connection is back, opens a new channel with the same prefetch and consumes again with the
  same consumer tag. ``attached`` is true only while the tag is registered on an open channel.
* **Our own task per delivery.** aiormq cancels the tasks it started for a channel when that
  channel closes; a connection blip must not cancel a job half-way, so the handler runs in a
  task of the transport's.
* **Settling.** ``ack``/``release`` go to the channel the message came on. After that channel
  closed the broker has already put the message back: ``TransportError``.
* **Long delays go round again.** A message that left the largest delay tier with time still
  to wait (``REMAINING_DELAY``, see ``rabbitmq.topology``) is never handed out: it is sent
  through the tiers again for the rest (``ConsumerLink.pass_on``), then acked. If that fails
  it is given back after ``reconnect_interval``, not at once: no hot loop, and the work
  queue's delivery limit ends a copy the broker keeps refusing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import aiormq
import aiormq.abc
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from conveyor.common.backoff import MAX_DELAY
from conveyor.common.errors import TransportError
from conveyor.common.headers import CONTENT_ENCODING, CONTENT_TYPE
from conveyor.common.transport.base import ConsumerHandle, Delivery, DeliveryHandler
from conveyor.common.transport.rabbitmq.topology import REMAINING_DELAY

__all__ = [
    "BROKER_ERRORS", "AmqpConsumer", "AmqpDelivery", "ChannelSettler", "ConsumerLink", "consumer_frame_buffer",
    "deliver_directly", "remaining_delay",
]

log = logging.getLogger(__name__)

# What goes wrong talking to a broker: aiormq/aio-pika errors (ChannelInvalidStateError is a
# RuntimeError, not an AMQPError: "the channel is closed"), socket errors, timeouts.
BROKER_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True)
class ConsumerLink:
    """What a consumer needs from its transport, handed over explicitly."""

    connection: Callable[[], Any]  # the consuming connection now (None while disconnected)
    open_channel: Callable[[], Awaitable[aiormq.abc.AbstractChannel]]
    scrub: Callable[[BaseException], str]  # an error's text without credentials
    spawn: Callable[[Coroutine[Any, Any, Any]], None]  # a background task the transport awaits at close
    connect_timeout: float
    reconnect_interval: float
    # Send a delivery through the delay tiers again for the seconds it must still wait, confirmed.
    pass_on: Callable[[Delivery, float], Awaitable[None]]


# Frames of one delivery: basic.deliver, the content header, the body (one frame up to the
# negotiated frame size, 128 KiB by default; a larger body takes more, which only makes the
# reader pause sooner, as before).
_FRAMES_PER_DELIVERY = 3


def consumer_frame_buffer(prefetch: int) -> int:
    """Frames a consuming channel may queue between aiormq's connection reader and the channel.

    aiormq's default is 10 frames: once a channel has 3⅓ deliveries queued, the connection
    reader waits for the channel's reader task, so a worker took at most 3 or 4 deliveries per
    event-loop turn however many the socket held (docs/benchmarks.md). Every per-turn cost (the
    settler's coalesced ``basic.ack(multiple)``, its write, the wake-ups) was then shared by 3
    jobs. Room for a whole
    prefetch window costs no memory the window does not already allow: the broker never has
    more than ``prefetch`` unacked deliveries out on the channel, so the queue never holds more
    than their frames (plus a few for the channel's own RPC replies).
    """
    return max(10, _FRAMES_PER_DELIVERY * prefetch + 10)


def remaining_delay(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds a delivery must still wait (``REMAINING_DELAY``), at most ``MAX_DELAY``; None
    when it need not (no header, or one that is not a positive whole number of milliseconds)."""
    raw = (headers or {}).get(REMAINING_DELAY)
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if isinstance(raw, str):  # ASCII digits only: "²" is a digit to str.isdigit too
        raw = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 16 else None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw <= 0:
        return None
    return min(raw / 1000, MAX_DELAY)


class ChannelSettler:
    """Acks and nacks for one channel, coalesced: one ``basic.ack(multiple)`` per loop turn.

    Settling one message per frame cost the worker a frame, a write and a wake-up of aiormq's
    writer per job (and the broker a frame to parse). Settlements made in the same loop turn
    go out together: the longest run of acks at the head of the channel's unsettled tags as
    one ``multiple`` ack, anything else one frame each, all in tag order from one task, so a
    ``multiple`` ack never covers a tag meant for a nack. ``settle`` returns a future that is
    done once the frames are on the wire (or failed: the channel is gone and the broker takes
    the messages back).
    """

    __slots__ = ("_channel", "_loop", "_unsettled", "_pending", "_batch", "_flusher")

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self._channel = channel
        # The channel's loop, remembered at the first settlement (a channel lives on one loop):
        # get_running_loop() is a getpid() system call on 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Tags delivered on this channel with no settlement sent yet, in tag order.
        self._unsettled: dict[int, None] = {}
        self._pending: dict[int, bool] = {}  # tag → ack (True) or requeue (False), not sent yet
        # One future for all the settlements the next flush sends (not one per message).
        self._batch: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None  # held: the loop keeps tasks weakly

    def delivered(self, tag: int) -> None:
        self._unsettled[tag] = None

    def settle(self, tag: int, *, ack: bool) -> asyncio.Future[None]:
        if self._channel.is_closed:
            raise ChannelInvalidStateError("the channel is closed")
        self._pending[tag] = ack
        batch = self._batch
        if batch is None:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            batch = self._batch = loop.create_future()
            if self._flusher is None:
                self._flusher = loop.create_task(self._flush())
        return batch

    async def _flush(self) -> None:
        try:
            while self._pending:
                pending, self._pending = self._pending, {}
                batch, self._batch = self._batch, None
                assert batch is not None  # set with the first pending settlement
                try:
                    await self._send(pending)
                except BaseException as exc:
                    if not batch.done():
                        batch.set_exception(exc)
                        batch.exception()  # retrieved: a waiter may have stopped waiting
                    if not isinstance(exc, Exception):
                        raise
                else:
                    if not batch.done():
                        batch.set_result(None)
        finally:
            self._flusher = None

    async def _send(self, pending: dict[int, bool]) -> None:
        # The acks at the head of the unsettled tags, which are also the lowest pending tags.
        run = list(itertools.takewhile(lambda tag: pending.get(tag, False), self._unsettled))
        frames = [(run[-1], True, len(run) > 1)] if run else []  # (tag, ack, multiple)
        frames += [(tag, ack, False) for tag, ack in sorted(pending.items())[len(run):]]
        for tag in pending:
            self._unsettled.pop(tag, None)
        channel = self._channel
        last = len(frames) - 1
        for index, (tag, ack, multiple) in enumerate(frames):
            # Only the last frame waits for the socket: the writer sends them in order.
            if ack:
                await channel.basic_ack(tag, multiple=multiple, wait=index == last)
            else:
                await channel.basic_nack(tag, requeue=True, wait=index == last)


class AmqpDelivery(Delivery):
    """A message from ``basic.deliver`` or ``basic.get``, settled on the channel it came on."""

    __slots__ = ("_settler", "_delivery_tag", "_on_settled")

    def __init__(
        self,
        message: aiormq.abc.DeliveredMessage,
        queue: str,
        settler: ChannelSettler,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        properties = message.header.properties
        raw = properties.headers or {}
        frame = message.delivery
        redelivered = bool(frame.redelivered)  # type: ignore[union-attr]  # always Deliver or GetOk here
        # Quorum queues: deliveries before this one. RabbitMQ 4.x sets it only once the message
        # came back (measured on 4.0.5: a first delivery has none of the broker's, and a
        # publisher's forged value passes through untouched), so only a redelivery's counts.
        count = raw.get("x-delivery-count") if redelivered else None
        if isinstance(count, int) and not isinstance(count, bool):
            delivery_count = count + 1
        else:
            delivery_count = 2 if redelivered else 1
        super().__init__(
            body=message.body,
            headers=delivered_headers(properties),
            message_id=properties.message_id or "",
            queue=queue,
            redelivered=redelivered,
            delivery_count=delivery_count,
        )
        self._settler = settler
        self._delivery_tag: int = frame.delivery_tag  # type: ignore[union-attr, assignment]  # set on Deliver/GetOk
        settler.delivered(self._delivery_tag)
        self._on_settled = on_settled

    # The settling coroutine itself, not one more around it (one per job).
    def _ack(self) -> Coroutine[Any, Any, None]:
        return self._settle(ack=True)

    def _release(self) -> Coroutine[Any, Any, None]:
        return self._settle(ack=False)

    async def _settle(self, *, ack: bool) -> None:
        try:
            await self._settler.settle(self._delivery_tag, ack=ack)
        except BROKER_ERRORS as exc:
            what = "ack" if ack else "release"
            raise TransportError(f"{what} failed: the channel is gone, the broker redelivers this message") from exc
        finally:
            if self._on_settled is not None:
                self._on_settled()


def deliver_directly(
    channel: aiormq.abc.AbstractChannel, on_message: Callable[[aiormq.abc.DeliveredMessage], None]
) -> None:
    """Hand this channel's deliveries to ``on_message`` from aiormq's frame reader, with no task.

    aiormq runs every consumer callback in a task of its own, tracked in the channel's and the
    connection's future stores, and our callback only starts the handler's task (which must be
    ours: aiormq cancels its tasks when the channel closes, and a connection blip must not cut
    a job short). That first task, its wrapper and its two store entries were a tenth of a
    drained job's CPU. So the channel's ``Basic.Deliver`` step is replaced, on this channel
    only, by the same two reads aiormq does (content header, body frames) and a plain call.
    Consumers are one per channel here, and a tag that is no longer registered (after
    ``basic.cancel``) is skipped exactly as aiormq skips it: the broker redelivers the message
    when the channel closes. aiormq is pinned (constraints.txt) and a unit test checks the two
    names this reads, ``_Channel__get_content_header`` and ``_read_content``.
    """
    read_header = channel._Channel__get_content_header  # type: ignore[attr-defined]  # see above
    read_content = channel._read_content  # type: ignore[attr-defined]
    consumers = channel.consumers  # type: ignore[attr-defined]

    async def on_deliver_frame(frame: aiormq.spec.Basic.Deliver) -> None:
        header = await read_header()
        message = await read_content(frame, header)
        if frame.consumer_tag in consumers:
            try:
                on_message(message)
            except Exception:  # never into aiormq's frame reader: it would stop reading the channel
                log.exception("could not take a delivery; it stays unsettled until the channel closes")

    channel._on_deliver_frame = on_deliver_frame  # type: ignore[attr-defined]  # this instance only


def string_headers(raw: Mapping[str, Any]) -> dict[str, str]:
    """String-valued headers only: broker-set ``x-death`` (a list) and counts are dropped."""
    headers = {}
    for key, value in raw.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str):
            headers[key] = value
    return headers


def delivered_headers(properties: aiormq.spec.Basic.Properties) -> dict[str, str]:
    """``string_headers``, plus the AMQP content labels under their header names (``content-type``,
    ``content-encoding``): the worker refuses bodies labelled as anything but JSON."""
    headers = string_headers(properties.headers or {})
    for name, value in ((CONTENT_TYPE, properties.content_type), (CONTENT_ENCODING, properties.content_encoding)):
        if value:
            headers[name] = value
    return headers


class AmqpConsumer(ConsumerHandle):
    """One ``consume()`` call: a channel of its own (own prefetch), one tag kept across reconnects."""

    def __init__(self, link: ConsumerLink, queue: str, handler: DeliveryHandler, prefetch: int) -> None:
        self._link = link
        self._queue = queue
        self._handler = handler
        self._prefetch = prefetch
        self._tag = f"conveyor.{uuid.uuid4().hex}"
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._cancelled = False
        self._outstanding = 0  # handed to the handler, not settled yet

    async def start(self) -> None:
        """Attach once (errors go to the caller), then keep attached in the background."""
        self._channel = await self._attach()
        self._supervisor = asyncio.get_running_loop().create_task(self._keep_attached())

    @property
    def attached(self) -> bool:
        channel = self._channel
        if self._cancelled or channel is None or channel.is_closed:
            return False
        connection = self._link.connection()
        if connection is None or connection.is_closed or not connection.connected.is_set():
            return False
        return self._tag in channel.consumers  # type: ignore[attr-defined]  # aiormq.Channel's, not in AbstractChannel

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        channel = self._channel
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*BROKER_ERRORS):
                # basic.cancel: no new deliveries; unacked ones stay with their handlers.
                await asyncio.wait_for(channel.basic_cancel(self._tag), self._link.connect_timeout)
        if self._outstanding == 0:
            await self._close_channel()

    def _detach(self) -> None:
        """The transport is closing its connections: stop re-attaching, nothing to send."""
        self._cancelled = True
        if self._supervisor is not None:
            self._supervisor.cancel()

    # -- attaching -------------------------------------------------------------------
    async def _attach(self) -> aiormq.abc.AbstractChannel:
        channel = await self._link.open_channel()
        try:
            await channel.basic_qos(prefetch_count=self._prefetch, timeout=self._link.connect_timeout)
            channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
            on_message = functools.partial(self._on_message, ChannelSettler(channel))
            deliver_directly(channel, on_message)

            async def via_aiormq(message: aiormq.abc.DeliveredMessage) -> None:
                on_message(message)  # only if deliver_directly's hook were bypassed

            await channel.basic_consume(
                self._queue, via_aiormq, no_ack=False, consumer_tag=self._tag,
                timeout=self._link.connect_timeout,
            )
        except BaseException:
            if not channel.is_closed:
                with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                    await channel.close()
            raise
        return channel

    async def _keep_attached(self) -> None:
        while not self._cancelled:
            channel = self._channel
            if channel is not None:
                closing = channel.closing
                try:
                    await asyncio.wait([closing])
                finally:
                    closing.cancel()  # only the observer: detaches it from the channel
                self._channel = None
                if self._cancelled:
                    return
                log.warning("consumer detached; re-attaching", extra={"queue": self._queue})
            try:
                self._channel = await self._attach()
            except (TransportError, *BROKER_ERRORS, RuntimeError) as exc:
                log.debug("re-attach failed (%s); retrying", self._link.scrub(exc), extra={"queue": self._queue})
                await asyncio.sleep(self._link.reconnect_interval)
                continue
            log.info("consumer re-attached", extra={"queue": self._queue})

    def _on_broker_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        # The broker dropped our consumer (its queue was deleted): close the channel so the
        # supervisor attaches again, or keeps trying until the queue is back.
        if frame.consumer_tag == self._tag and not self._cancelled:
            log.warning("the broker cancelled the consumer", extra={"queue": self._queue})
            self._link.spawn(self._close_channel())

    # -- deliveries ------------------------------------------------------------------
    def _on_message(self, settler: ChannelSettler, message: aiormq.abc.DeliveredMessage) -> None:
        if self._cancelled:
            # Sent before the broker processed our basic.cancel: never handed out, give it back.
            self._link.spawn(self._give_back(AmqpDelivery(message, self._queue, settler)))
            return
        self._outstanding += 1
        delivery = AmqpDelivery(message, self._queue, settler, self._on_settled)
        remaining = remaining_delay(message.header.properties.headers)
        if remaining is not None:
            self._link.spawn(self._pass_on(delivery, remaining))
        else:
            self._link.spawn(self._run(delivery))

    @staticmethod
    async def _give_back(delivery: AmqpDelivery) -> None:
        with contextlib.suppress(*BROKER_ERRORS, TransportError):
            await delivery.release()

    async def _pass_on(self, delivery: AmqpDelivery, remaining: float) -> None:
        """The rest of a long delay: through the tiers again, then ack (see module docs)."""
        try:
            await self._link.pass_on(delivery, remaining)
            await delivery.ack()
        except Exception as exc:
            pause = self._link.reconnect_interval
            log.warning("could not send a delayed message on for the rest of its delay (%s); giving it back in %gs",
                        self._link.scrub(exc), pause, extra={"queue": self._queue})
            if not delivery.settled:
                await asyncio.sleep(pause)
                with contextlib.suppress(TransportError):
                    await delivery.release()

    async def _run(self, delivery: AmqpDelivery) -> None:
        try:
            await self._handler(delivery)
        except Exception:  # the worker settles; a handler bug must not kill the consumer
            log.exception("delivery handler raised; message stays unsettled", extra={"queue": self._queue})
        except GeneratorExit:
            pass  # a job's, thrown into this task by asyncio: the worker settles it apart (_settle_closed)

    def _on_settled(self) -> None:
        self._outstanding -= 1
        if self._cancelled and self._outstanding == 0:
            self._link.spawn(self._close_channel())

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                await asyncio.wait_for(channel.close(), self._link.connect_timeout)

