"""One queue's consumer, kept in the mode the worker wants: running, probing, paused, stopped.

    RUNNING   a consumer with the worker's prefetch
    PROBING   a consumer with prefetch 1: a half-open breaker's probe takes exactly one message
    PAUSED    no consumer (a breaker is open): messages stay in the broker, nothing is spent
    STOPPED   no consumer, for good (drain)

Breakers change state from inside jobs (a failure opens one), from timers (half-open) and
from probes, often several times while one consumer is still being attached. Each change
only *records* the wanted mode (``want``, synchronous); one lock per runner applies the latest
wish, one step at a time (detach, attach), and re-reads the wish after every step. So
transitions never interleave, and an attach that went stale while it waited for the broker
(the probe it let through failed before ``consume()`` returned) is undone at once: a paused
queue never keeps a consumer, which would hand every delivery straight back to the broker
(on RabbitMQ 4 each hand-back raises ``x-delivery-count``; 20 of them dead-letter the
message).

``settled()`` waits until the consumer matches the wanted mode. The worker settles a delivery
of a paused queue only after that: the broker then has our ``basic.cancel`` before the ack, so
the freed prefetch slot is never filled with a message we would have to hand back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from conveyor.common.clock import Clock
from conveyor.common.transport.base import ConsumerHandle, Delivery, Transport

__all__ = ["ModeHandler", "QueueMode", "QueueRunner"]

log = logging.getLogger(__name__)

ATTACH_RETRY = 1.0  # seconds between attempts when the broker refuses a (re-)attach


class QueueMode(enum.Enum):
    RUNNING = "running"
    PROBING = "probing"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class _Consumer:
    prefetch: int
    mode: QueueMode  # handed to the handler with each delivery


class ModeHandler(Protocol):
    """Called for each delivery with the mode of the consumer that received it (a probing
    consumer's delivery is a probe, whatever the mode is by the time it runs)."""

    def __call__(self, delivery: Delivery, mode: QueueMode) -> Awaitable[None]: ...


class QueueRunner:
    def __init__(
        self,
        queue: str,
        *,
        transport: Transport,
        handler: ModeHandler,
        prefetch: int,
        clock: Clock,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self.queue = queue
        self._transport = transport
        self._handler = handler
        self._prefetch = prefetch
        self._clock = clock
        self._spawn = spawn
        self.mode = QueueMode.STOPPED
        self.handle: ConsumerHandle | None = None
        self.attached_as: _Consumer | None = None  # what ``handle`` was attached for
        self._closed = False
        self._lock = asyncio.Lock()
        self._in_sync = asyncio.Event()
        self._in_sync.set()
        self._mode_changed = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None
        # What the worker's monitor saw last: a handle that was detached by the transport and
        # is attached again (same handle) is a reconnect.
        self.seen_handle: ConsumerHandle | None = None
        self.seen_attached = False

    # -- what the worker reads ------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self.handle is not None and self.handle.attached

    @property
    def paused(self) -> bool:
        """A breaker holds the queue: no consumer until it half-opens."""
        return self.mode is QueueMode.PAUSED

    @property
    def accepting(self) -> bool:
        """Deliveries that arrive now may run (running or probing)."""
        return self.mode in (QueueMode.RUNNING, QueueMode.PROBING)

    @property
    def wanted(self) -> _Consumer | None:
        """The consumer the mode calls for (None: none)."""
        if self.mode is QueueMode.RUNNING:
            return _Consumer(self._prefetch, QueueMode.RUNNING)
        if self.mode is QueueMode.PROBING:
            return _Consumer(1, QueueMode.PROBING)
        return None

    @property
    def in_sync(self) -> bool:
        return not self._lock.locked() and self.attached_as == self.wanted

    # -- changing the mode ----------------------------------------------------------
    async def start(self) -> None:
        """Attach for the first time; errors go to the caller (the worker's ``start``)."""
        self._set_mode(QueueMode.RUNNING)
        await self.sync()

    def want(self, mode: QueueMode) -> None:
        """Record the wanted mode; a background step applies it. Synchronous: a breaker's
        listener calls it, and deliveries see the new mode at once."""
        if self._closed:
            return
        self._set_mode(mode)
        if self.in_sync:
            return
        if self._syncer is None or self._syncer.done():
            self._syncer = self._spawn(self._keep_in_sync())

    async def close(self) -> None:
        """Detach for good (drain); waits for an attach in progress and undoes it."""
        self._closed = True
        self._set_mode(QueueMode.STOPPED)
        await self.sync()
        syncer = self._syncer
        if syncer is not None and not syncer.done():
            # It can only wait for the lock or sleep before a retry now: safe to cancel.
            syncer.cancel()

    def _set_mode(self, mode: QueueMode) -> None:
        if mode is not self.mode:
            self.mode = mode
            self._mode_changed.set()
            self._mode_changed = asyncio.Event()
        if not self.in_sync:
            self._in_sync.clear()

    # -- waiting --------------------------------------------------------------------
    async def settled(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until the consumer matches the wanted mode."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self.in_sync:
                    await self._in_sync.wait()
                    await asyncio.sleep(0)  # set by a sync that a newer wish already outdated
        return self.in_sync

    async def mode_changed(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for the next change of mode."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._mode_changed.wait()

    # -- applying -------------------------------------------------------------------
    async def sync(self) -> None:
        """Step the consumer towards the wanted mode, re-reading the wish after every step."""
        async with self._lock:
            while (wanted := self.wanted) != self.attached_as:
                if self.handle is not None:
                    await self._detach()
                elif wanted is not None:
                    handler = functools.partial(self._handler, mode=wanted.mode)
                    self.handle = await self._transport.consume(self.queue, handler, prefetch=wanted.prefetch)
                    self.attached_as = wanted
        if self.in_sync:
            self._in_sync.set()

    async def _keep_in_sync(self) -> None:
        while not self.in_sync:
            try:
                await self.sync()
            except Exception as exc:  # broker away: the transport reconnects, we try again
                log.warning("could not attach the consumer (%s); trying again", type(exc).__name__,
                            extra={"queue": self.queue, "mode": self.mode.value})
                await self._clock.sleep(ATTACH_RETRY)

    async def _detach(self) -> None:
        handle, self.handle, self.attached_as = self.handle, None, None
        if handle is not None:
            with contextlib.suppress(Exception):  # a dead connection has no consumer to cancel
                await handle.cancel()
