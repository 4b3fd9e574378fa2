"""``get()`` on Pulsar: one reader per queue for a scan (a dead-letter listing, a replay, a
purge), kept across the scan's ``get()`` calls and closed when the scan is over.

A Pulsar consumer cannot peek: a scan subscribes a reader with a receive queue of one, takes
messages through it and settles each (an ack removes it, a nack gives it back). Closing the
reader gives back at once what it still holds; that is why a scan's reader is closed as soon as
nothing it took is unsettled (see ``Browsing.settled``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

import pulsar
import pulsar.asyncio as pulsar_asyncio
from pulsar.asyncio import PulsarException

from conveyor.common.errors import QueueNotFound, TransportError
from conveyor.common.transport.base import Delivery
from conveyor.common.transport.pulsar.admin import SubscriptionStats
from conveyor.common.transport.pulsar.consumer import PulsarDelivery, mark_retrieved, result_of
from conveyor.common.transport.pulsar.inbox import LoopInbox

__all__ = ["Browser", "Browsing", "BrowsingOwner"]


class BrowsingOwner(Protocol):
    """What the scans need from their transport."""

    operation_timeout: float
    get_wait: float
    get_max_wait: float

    async def _is_declared(self, queue: str) -> bool: ...

    async def _stats(self, queue: str) -> SubscriptionStats: ...

    async def _subscribe(self, queue: str, *, receiver_queue_size: int) -> pulsar_asyncio.Consumer: ...

    async def _close_consumer(self, consumer: pulsar_asyncio.Consumer) -> None: ...

    def _spawn(self, coro: Coroutine[Any, Any, Any], *, housekeeping: bool = False) -> asyncio.Task[Any]: ...

    def _inbox(self) -> LoopInbox: ...


class Browser:
    """The consumer behind ``get()`` for one queue, with its one pending receive."""

    def __init__(self, consumer: pulsar_asyncio.Consumer) -> None:
        self.consumer = consumer
        self.pending: asyncio.Future[pulsar.Message] | None = None
        self.outstanding = 0  # fetched, not yet settled
        self.exhausted = False  # the last get() came up empty
        self.released = False  # gave a message back (it returns only after the nack delay, or on close)

    def receive(self) -> asyncio.Future[pulsar.Message]:
        """The pending receive, started if there is none. Never cancel it: it would swallow
        the next message."""
        if self.pending is None:
            self.pending = asyncio.ensure_future(self.consumer.receive())
            self.pending.add_done_callback(mark_retrieved)
        return self.pending

    async def wait(self, timeout: float) -> pulsar.Message | None:
        """The next message if one arrives within ``timeout``, else None (still pending)."""
        pending = self.receive()
        await asyncio.wait({pending}, timeout=timeout)
        if not pending.done():
            return None
        self.pending = None
        return pending.result()  # PulsarException if the consumer failed


class Browsing:
    """The open scans of one transport, by queue."""

    def __init__(self, owner: BrowsingOwner) -> None:
        self._owner = owner
        self._browsers: dict[str, Browser] = {}
        self._retired: dict[str, asyncio.Task[Any]] = {}  # closing: what they gave back returns
        self._lock = asyncio.Lock()

    async def get(self, queue: str) -> Delivery | None:
        owner = self._owner
        async with self._lock:
            browser = self._browsers.get(queue)
            if browser is None:
                if not await owner._is_declared(queue):
                    raise QueueNotFound(f"no queue {queue!r}")
                retired = self._retired.pop(queue, None)
                if retired is not None:  # what the last scan gave back is on its way back
                    await asyncio.wait({retired}, timeout=owner.operation_timeout)
                browser = Browser(await owner._subscribe(queue, receiver_queue_size=1))
                self._browsers[queue] = browser
            message = await self._next_message(queue, browser)
            if message is None:
                browser.exhausted = True
                if browser.outstanding == 0:
                    await self._drop(queue, browser)
                return None
            browser.exhausted = False
            browser.outstanding += 1
            return PulsarDelivery(
                message._message, queue, browser.consumer,
                lambda released: self.settled(queue, browser, released), owner._inbox(),
            )

    async def _next_message(self, queue: str, browser: Browser) -> pulsar.Message | None:
        owner = self._owner
        loop = asyncio.get_running_loop()
        give_up = loop.time() + owner.get_max_wait
        while True:
            remaining = give_up - loop.time()
            try:
                message = await browser.wait(min(owner.get_wait, max(0.0, remaining)))
                # Nothing came: is anything stored that no consumer holds (e.g. still on its way)?
                if message is None and remaining > 0 and (await owner._stats(queue)).ready > 0:
                    continue
                if message is None:
                    message = await browser.wait(0)  # unless it arrived meanwhile
            except PulsarException as exc:
                await self._drop(queue, browser)
                raise TransportError(f"receive from {queue!r} failed ({result_of(exc).name})") from exc
            return message

    def settled(self, queue: str, browser: Browser, released: bool) -> None:
        browser.outstanding -= 1
        browser.released |= released
        done = browser.exhausted or browser.released
        if browser.outstanding == 0 and done and self._browsers.get(queue) is browser:
            # The scan is over (it came up empty, or gave back what it took) and everything it
            # took is settled: closing gives back at once what was released (instead of after
            # the nack delay) and what the pending receive got. Kept open, a scan that ended
            # early (``dlq show``) would hide what it released from the next scan for that
            # long: the admin API counts it as held, so get() would end without it.
            self._retire(queue, browser)

    async def end(self, queue: str) -> None:
        """Close the scan's reader even when it ended early with nothing given back (a replay or
        purge that acked all it took): kept open, its prefetch took the next dead letter to
        arrive and held it, unseen by other readers and not counted as ready, for as long as
        the process lived (the console's does)."""
        async with self._lock:
            browser = self._browsers.get(queue)
            if browser is not None and browser.outstanding == 0:
                self._retire(queue, browser)

    async def forget(self, queue: str) -> None:
        """Close the queue's reader now (its topic is being deleted)."""
        browser = self._browsers.pop(queue, None)
        if browser is not None:
            await self._owner._close_consumer(browser.consumer)

    async def close(self) -> None:
        """Close every reader (the transport is closing); closes already under way are the
        owner's housekeeping, which it waits for."""
        browsers, self._browsers = list(self._browsers.values()), {}
        self._retired.clear()
        for browser in browsers:
            await self._owner._close_consumer(browser.consumer)

    def _retire(self, queue: str, browser: Browser) -> None:
        del self._browsers[queue]
        self._retired[queue] = self._owner._spawn(self._owner._close_consumer(browser.consumer), housekeeping=True)

    async def _drop(self, queue: str, browser: Browser) -> None:
        if self._browsers.get(queue) is browser:
            del self._browsers[queue]
        await self._owner._close_consumer(browser.consumer)
