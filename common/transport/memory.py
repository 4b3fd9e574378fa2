"""The in-memory transport: a real broker in the process, not a mock.

``MemoryBroker`` is the server (queues, delays, redelivery); ``MemoryTransport`` is one
connection to it. Closing a connection returns its unsettled deliveries to their queue,
exactly as a broker does when a worker dies, so crash behaviour is testable without a
server. It is the embedded default for the quick start and the unit-test broker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from conveyor.common.clock import Clock, SystemClock
from conveyor.common.errors import PublishNotConfirmed, QueueNotFound, TransportError
from conveyor.common.queue_names import check_portable_queue_name
from conveyor.common.tasks import TaskSet
from conveyor.common.transport.base import (
    ConsumerHandle,
    ControlHandler,
    Delivery,
    DeliveryHandler,
    OutgoingMessage,
    QueueStats,
    Transport,
)

__all__ = ["MemoryBroker", "MemoryTransport"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Stored:
    body: bytes
    headers: dict[str, str]
    message_id: str
    delivery_count: int = 0
    ready_since: float = 0.0  # broker clock (monotonic) when it last became ready


@dataclass(eq=False)
class _Consumer(ConsumerHandle):
    queue: str
    handler: DeliveryHandler
    prefetch: int
    owner: MemoryTransport
    unacked: int = 0
    active: bool = True

    @property
    def attached(self) -> bool:
        return self.active and self.owner.connected

    async def cancel(self) -> None:
        self.active = False


@dataclass(eq=False)
class _Subscriber(ConsumerHandle):
    channel: str
    handler: ControlHandler
    owner: MemoryTransport
    active: bool = True

    @property
    def attached(self) -> bool:
        return self.active and self.owner.connected

    async def cancel(self) -> None:
        self.active = False


@dataclass
class _Queue:
    ready: collections.deque[_Stored] = field(default_factory=collections.deque)
    consumers: list[_Consumer] = field(default_factory=list)
    unacked: int = 0
    delayed: int = 0
    next_consumer: int = 0


class _MemoryDelivery(Delivery):
    __slots__ = ("_broker", "_stored", "_consumer", "_owner")

    def __init__(
        self, broker: MemoryBroker, queue: str, stored: _Stored, consumer: _Consumer | None, owner: MemoryTransport
    ) -> None:
        super().__init__(
            body=stored.body,
            headers=stored.headers,
            message_id=stored.message_id,
            queue=queue,
            redelivered=stored.delivery_count > 1,
            delivery_count=stored.delivery_count,
        )
        self._broker = broker
        self._stored = stored
        self._consumer = consumer
        self._owner = owner

    async def _ack(self) -> None:
        self._check_alive()
        self._broker._settle(self, requeue=False)

    async def _release(self) -> None:
        self._check_alive()
        self._broker._settle(self, requeue=True)

    def _check_alive(self) -> None:
        if not self._owner.connected:
            # A closed connection already gave the message back, as a real broker does.
            raise TransportError("connection closed; the broker redelivers this message")


async def _call(handler: ControlHandler, body: bytes) -> None:
    try:
        await handler(body)
    except Exception:  # one bad broadcast must not stop the others
        log.exception("control message handler failed")


class MemoryBroker:
    """In-process broker state, shared by any number of ``MemoryTransport`` connections."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self._queues: dict[str, _Queue] = {}
        self._tasks = TaskSet()
        self._joiners: list[tuple[str, asyncio.Future[None]]] = []
        self._subscribers: dict[str, list[_Subscriber]] = {}  # control channels (broadcast)

    def declare(self, queue: str) -> None:
        self._queues.setdefault(queue, _Queue())

    def queue_names(self) -> list[str]:
        return sorted(self._queues)

    def depth(self, queue: str) -> int:
        return len(self._require(queue).ready)

    def in_flight(self, queue: str) -> int:
        q = self._require(queue)
        return q.unacked + q.delayed

    def stats(self, queue: str, dead_letter_queue: str) -> QueueStats:
        q = self._require(queue)
        dlq = self._queues.get(dead_letter_queue)
        # Released messages go back to the front with their first ready time, so the head
        # is the oldest ready message.
        oldest = self.clock.monotonic() - q.ready[0].ready_since if q.ready else 0.0
        return QueueStats(
            queue=queue,
            ready=len(q.ready),
            delayed=q.delayed,
            dead_letters=len(dlq.ready) if dlq is not None else None,
            consumers=sum(1 for c in q.consumers if c.attached),
            oldest_age=max(0.0, oldest),
        )

    def publish(self, queue: str, message: OutgoingMessage) -> None:
        q = self._queues.get(queue)
        if q is None:
            raise PublishNotConfirmed(f"no queue {queue!r}: message unroutable")
        stored = _Stored(bytes(message.body), dict(message.headers), message.message_id)
        stored.ready_since = self.clock.monotonic()
        if message.delay > 0:
            q.delayed += 1
            self._spawn(self._deliver_later(queue, stored, message.delay))
        else:
            q.ready.append(stored)
            self._dispatch(queue)

    async def join(self, queue: str) -> None:
        """Wait until ``queue`` has nothing ready, delayed or unacked."""
        if self._idle(queue):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._joiners.append((queue, future))
        await future

    def _idle(self, queue: str) -> bool:
        q = self._require(queue)
        return not q.ready and q.unacked == 0 and q.delayed == 0

    async def _deliver_later(self, queue: str, stored: _Stored, delay: float) -> None:
        await self.clock.sleep(delay)
        q = self._require(queue)
        q.delayed -= 1
        stored.ready_since = self.clock.monotonic()
        q.ready.append(stored)
        self._dispatch(queue)

    def _add_consumer(self, consumer: _Consumer) -> None:
        self._require(consumer.queue).consumers.append(consumer)
        self._dispatch(consumer.queue)

    def _take(self, queue: str, owner: MemoryTransport) -> _MemoryDelivery | None:
        q = self._require(queue)
        if not q.ready:
            return None
        stored = q.ready.popleft()
        stored.delivery_count += 1
        q.unacked += 1
        delivery = _MemoryDelivery(self, queue, stored, None, owner)
        owner._outstanding[delivery] = None
        return delivery

    def _dispatch(self, queue: str) -> None:
        q = self._require(queue)
        q.consumers = [c for c in q.consumers if c.attached]
        while q.ready:
            consumer = self._next_consumer(q)
            if consumer is None:
                break
            stored = q.ready.popleft()
            stored.delivery_count += 1
            q.unacked += 1
            consumer.unacked += 1
            delivery = _MemoryDelivery(self, queue, stored, consumer, consumer.owner)
            consumer.owner._outstanding[delivery] = None
            self._spawn(self._run_handler(consumer, delivery))
        self._notify()

    def _next_consumer(self, q: _Queue) -> _Consumer | None:
        # Round robin over consumers with spare prefetch, like a broker spreads load.
        for offset in range(len(q.consumers)):
            index = (q.next_consumer + offset) % len(q.consumers)
            consumer = q.consumers[index]
            if consumer.unacked < consumer.prefetch:
                q.next_consumer = index + 1
                return consumer
        return None

    async def _run_handler(self, consumer: _Consumer, delivery: _MemoryDelivery) -> None:
        try:
            await consumer.handler(delivery)
        except Exception:  # the worker settles; a handler bug must not kill the broker
            log.exception("delivery handler raised; message stays unsettled")
        except GeneratorExit:
            pass  # a job's, thrown into this task by asyncio: the worker settles it apart (_settle_closed)

    def _settle(self, delivery: _MemoryDelivery, *, requeue: bool) -> None:
        q = self._require(delivery.queue)
        q.unacked -= 1
        if delivery._consumer is not None:
            delivery._consumer.unacked -= 1
        delivery._owner._outstanding.pop(delivery, None)
        if requeue:
            q.ready.appendleft(delivery._stored)
        self._dispatch(delivery.queue)

    def _disconnect(self, owner: MemoryTransport) -> None:
        """A connection went away: every delivery it held goes back, in order, at the front."""
        returned = list(owner._outstanding)
        owner._outstanding.clear()
        touched = set()
        for delivery in reversed(returned):
            if delivery._settled:
                continue
            delivery._settled = True
            q = self._require(delivery.queue)
            q.unacked -= 1
            if delivery._consumer is not None:
                delivery._consumer.unacked -= 1
            q.ready.appendleft(delivery._stored)
            touched.add(delivery.queue)
        for queue in touched | set(self._queues):
            self._dispatch(queue)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    def broadcast(self, channel: str, body: bytes) -> None:
        """Every attached subscriber of ``channel`` gets ``body``; the others never will."""
        subscribers = [s for s in self._subscribers.get(channel, []) if s.active]
        self._subscribers[channel] = subscribers
        for subscriber in subscribers:
            if subscriber.attached:
                self._spawn(_call(subscriber.handler, body))

    def _notify(self) -> None:
        waiting = []
        for queue, future in self._joiners:
            if future.done():
                continue
            if self._idle(queue):
                future.set_result(None)
            else:
                waiting.append((queue, future))
        self._joiners = waiting

    def _require(self, queue: str) -> _Queue:
        try:
            return self._queues[queue]
        except KeyError:
            raise QueueNotFound(f"no queue {queue!r}") from None

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class MemoryTransport(Transport):
    """One connection to a ``MemoryBroker``."""

    scheme = "memory"

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.broker = broker or MemoryBroker()
        self.connected = False
        self._outstanding: dict[_MemoryDelivery, None] = {}  # ordered: returned in order

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        if self.connected:
            self.connected = False
            self.broker._disconnect(self)

    async def declare(self, queue: str) -> None:
        self._check()
        check_portable_queue_name(queue)  # what a real broker would refuse, this one refuses too
        self.broker.declare(queue)
        self.broker.declare(self.dead_letter_queue(queue))

    async def delete(self, queue: str) -> None:
        self._check()
        for name in (queue, self.dead_letter_queue(queue)):
            self.broker._queues.pop(name, None)

    async def publish(self, queue: str, message: OutgoingMessage) -> None:
        self._check()
        self.broker.publish(queue, message)

    async def consume(self, queue: str, handler: DeliveryHandler, *, prefetch: int) -> ConsumerHandle:
        self._check()
        consumer = _Consumer(queue=queue, handler=handler, prefetch=max(1, prefetch), owner=self)
        self.broker._add_consumer(consumer)
        return consumer

    async def get(self, queue: str) -> Delivery | None:
        self._check()
        return self.broker._take(queue, self)

    async def depth(self, queue: str) -> int:
        self._check()
        return self.broker.depth(queue)

    async def stats(self, queue: str) -> QueueStats:
        self._check()
        return self.broker.stats(queue, self.dead_letter_queue(queue))

    async def broadcast(self, channel: str, body: bytes) -> None:
        self._check()
        self.broker.broadcast(channel, body)

    async def subscribe(self, channel: str, handler: ControlHandler) -> ConsumerHandle:
        self._check()
        subscriber = _Subscriber(channel=channel, handler=handler, owner=self)
        self.broker._subscribers.setdefault(channel, []).append(subscriber)
        return subscriber

    def _check(self) -> None:
        if not self.connected:
            raise TransportError("memory transport is not connected")
