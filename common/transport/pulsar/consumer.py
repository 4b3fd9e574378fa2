"""The receiving side of the Pulsar transport: deliveries and ``consume()`` handles (``get()``'s
readers are in ``browsing``).

The rules they follow (prefetch, the never-cancelled receive, what closing gives back) are
described in ``common.transport.pulsar``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import _pulsar
import pulsar
import pulsar.asyncio as pulsar_asyncio
from pulsar.asyncio import PulsarException

from conveyor.common.errors import TransportError
from conveyor.common.transport.base import ConsumerHandle, Delivery, DeliveryHandler
from conveyor.common.transport.pulsar.inbox import Completion, LoopInbox

__all__ = [
    "MESSAGE_ID_PROPERTY",
    "ConsumerOwner",
    "PulsarConsumer",
    "PulsarDelivery",
    "mark_retrieved",
    "result_of",
]

log = logging.getLogger(__name__)

MESSAGE_ID_PROPERTY = "conveyor.message_id"  # reserved property; not part of ``Delivery.headers``
_OK = _pulsar.Result.Ok


def result_of(exc: PulsarException) -> Any:
    """The ``pulsar.Result`` code of an exception from ``pulsar.asyncio``."""
    return exc.error()


def mark_retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a failed background receive as seen (it fails with AlreadyClosed on close)."""
    if not future.cancelled():
        future.exception()


class ConsumerOwner(Protocol):
    """What a consumer handle needs from its transport."""

    key_shared: bool
    receiver_queue_size: int | None

    async def _subscribe(self, queue: str, *, receiver_queue_size: int) -> pulsar_asyncio.Consumer: ...

    async def _close_consumer(self, consumer: pulsar_asyncio.Consumer) -> None: ...

    def _spawn(self, coro: Coroutine[Any, Any, Any], *, housekeeping: bool = False) -> asyncio.Task[Any]: ...

    def _came_back(self, message_id: str) -> bool: ...

    def _inbox(self) -> LoopInbox: ...


class PulsarDelivery(Delivery):
    """One message, held as the client's own ``_pulsar.Message`` (no ``pulsar.Message`` wrapper)."""

    __slots__ = ("_message", "_consumer", "_on_settled", "_inbox")

    def __init__(
        self,
        message: _pulsar.Message,
        queue: str,
        consumer: pulsar_asyncio.Consumer,
        on_settled: Callable[[bool], None],  # called with True for a release, False for an ack
        inbox: LoopInbox,
        properties: dict[str, str] | None = None,  # message.properties(), when the caller has read them
    ) -> None:
        if properties is None:
            properties = message.properties()  # a new dict on every call
        count = message.redelivery_count()  # earlier deliveries (the broker's redelivery tracker)
        super().__init__(
            body=message.data(),
            headers=properties,
            message_id=properties.pop(MESSAGE_ID_PROPERTY, "") or str(message.message_id()),
            queue=queue,
            redelivered=count > 0,
            delivery_count=count + 1,
        )
        self._message = message
        self._consumer = consumer
        self._on_settled = on_settled
        self._inbox = inbox

    async def _ack(self) -> None:
        try:
            # consumer.acknowledge() without its future: with ack grouping the client answers
            # before acknowledge_async returns, and then nothing waits for a loop turn.
            done = Completion(self._inbox)
            self._consumer._consumer.acknowledge_async(self._message, done)
            if done.result != _OK:  # pybind11 hands out a new enum object each time: compare by value
                await done.wait()
        except PulsarException as exc:
            raise TransportError(f"ack failed ({result_of(exc).name}): the broker redelivers this message") from exc
        finally:
            self._on_settled(False)

    async def _release(self) -> None:
        try:
            await self._consumer.negative_acknowledge(self._message)
        except (PulsarException, RuntimeError) as exc:
            raise TransportError("release failed: the broker redelivers this message") from exc
        finally:
            self._on_settled(True)


class PulsarConsumer(ConsumerHandle):
    """One ``consume()`` call: one Pulsar consumer, asking for one message at a time.

    Driven by completions, not by a receiving task: while fewer than ``prefetch`` deliveries
    are out, one ``receive_async`` is pending; its completion (through the transport's
    ``LoopInbox``) hands the message out and asks for the next, so a burst the client has
    buffered is handed out in one loop turn. A receive is never cancelled (that would swallow
    a message): one that completes after ``cancel()`` is given back.
    """

    def __init__(self, owner: ConsumerOwner, queue: str, handler: DeliveryHandler, prefetch: int) -> None:
        self._owner = owner
        self._queue = queue
        self._handler = handler
        self._prefetch = prefetch
        self._consumer: pulsar_asyncio.Consumer | None = None
        self._inbox: LoopInbox | None = None  # the transport's, for the loop this consumer runs on
        self._received: Callable[..., None] | None = None  # the receive callback, through the inbox
        self._asking = False  # a receive_async is pending
        self._retry: asyncio.TimerHandle | None = None
        self._outstanding = 0  # handed out, not settled yet
        self.cancelled = False
        self.closed = False
        # key_shared: per ordering key, the completion of the last delivery handed out.
        self._key_tails: dict[str, asyncio.Future[None]] = {}

    async def start(self) -> None:
        size = self._owner.receiver_queue_size or self._prefetch
        self._inbox = self._owner._inbox()
        self._received = self._inbox.call(self._on_received)  # made once: one per receive showed in profiles
        self._consumer = await self._owner._subscribe(self._queue, receiver_queue_size=size)
        self._ask()

    @property
    def attached(self) -> bool:
        consumer = self._consumer
        if self.cancelled or self.closed or consumer is None:
            return False
        # pulsar.asyncio.Consumer has no is_connected(); the native consumer it wraps has.
        return bool(consumer._consumer.is_connected())

    async def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True  # a pending receive gives its message back when it completes
        if self._retry is not None:
            self._retry.cancel()
        if self._outstanding == 0:
            await self.close()

    async def close(self) -> None:
        """Close the Pulsar consumer: the broker takes back whatever it still holds."""
        self.cancelled = True
        if self._retry is not None:
            self._retry.cancel()
        if self.closed:
            return
        self.closed = True
        if self._consumer is not None:
            await self._owner._close_consumer(self._consumer)

    def _ask(self) -> None:
        inbox, received = self._inbox, self._received
        if self._asking or self.cancelled or self._outstanding >= self._prefetch or self._consumer is None:
            return
        assert inbox is not None and received is not None  # set before the consumer
        self._asking = True
        self._retry = None
        try:
            # consumer.receive() without its future and task: the completion comes through the inbox.
            self._consumer._consumer.receive_async(received)
        except Exception:  # refused outright rather than through the callback: ask again later
            self._asking = False
            log.warning("receive refused; retrying", exc_info=True, extra={"queue": self._queue})
            self._retry = inbox.loop.call_later(1.0, self._ask)

    def _on_received(self, result: Any, raw: Any) -> None:
        self._asking = False
        consumer = self._consumer
        assert consumer is not None
        if result != pulsar.Result.Ok:
            if result == pulsar.Result.AlreadyClosed or self.closed or self.cancelled:
                return
            log.warning("receive failed (%s); retrying", result.name, extra={"queue": self._queue})
            self._retry = asyncio.get_running_loop().call_later(1.0, self._ask)  # on the loop: the inbox's run
            return
        message: _pulsar.Message = raw
        if self.cancelled:
            # Asked for before cancel(), arrived after: never handed out, give it back.
            if not self.closed:
                self._owner._spawn(_nack_quietly(consumer, message), housekeeping=True)
            return
        self._dispatch(message)
        self._ask()

    def _dispatch(self, message: _pulsar.Message) -> None:
        consumer, inbox = self._consumer, self._inbox
        assert consumer is not None and inbox is not None
        properties = message.properties()  # read once: each call converts the whole map
        if self._owner._came_back(properties.get(MESSAGE_ID_PROPERTY, "")):
            # A delayed copy this transport published came back to it: pass it on once (see
            # PulsarTransport's notes on delayed dispatch). Never handed out: its slot is free.
            self._owner._spawn(_nack_quietly(consumer, message), housekeeping=True)
            return
        self._outstanding += 1
        delivery = PulsarDelivery(message, self._queue, consumer, self._on_settled, inbox, properties)
        previous = done = None
        key = self._owner.key_shared and (message.ordering_key() or message.partition_key())
        if key:
            previous = self._key_tails.get(key)
            done = asyncio.get_running_loop().create_future()
            self._key_tails[key] = done
        self._owner._spawn(self._run_handler(delivery, key or "", previous, done))

    async def _run_handler(
        self, delivery: Delivery, key: str, previous: asyncio.Future[None] | None, done: asyncio.Future[None] | None
    ) -> None:
        try:
            if previous is not None:
                await previous  # same ordering key: strictly one after the other
            await self._handler(delivery)
        except Exception:  # the worker settles; a handler bug must not kill the consumer
            log.exception("delivery handler raised; message stays unsettled", extra={"queue": self._queue})
        except GeneratorExit:
            pass  # a job's, thrown into this task by asyncio: the worker settles it apart (_settle_closed)
        finally:
            if done is not None:
                done.set_result(None)
                if self._key_tails.get(key) is done:
                    del self._key_tails[key]

    def _on_settled(self, released: bool) -> None:
        self._outstanding -= 1
        if self.cancelled:
            if self._outstanding == 0:
                self._owner._spawn(self.close(), housekeeping=True)
        else:
            self._ask()


async def _nack_quietly(consumer: pulsar_asyncio.Consumer, message: _pulsar.Message) -> None:
    with contextlib.suppress(PulsarException, RuntimeError):
        await consumer.negative_acknowledge(message)
