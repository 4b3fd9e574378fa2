"""Completions from pulsar-client's threads, handed to the event loop in batches.

``pulsar.asyncio`` resolves each send receipt, received message and ack with its own
``call_soon_threadsafe``: a write to the loop's self-pipe (a system call) and a wake-up per
message, and one more per ack, even when the C++ client calls back on the loop's own thread
(acks with ack grouping complete at once). The inbox queues completions and schedules one
run of them per batch: whoever finds no run pending schedules one, from the loop's thread
without the self-pipe.

Lock-free on purpose: ``deque.append``/``popleft`` are atomic, and because a producer appends
*before* it checks the flag while the loop clears the flag *before* it drains, every item is
either drained by a run already scheduled or schedules a new one (at worst one run too many).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import _pulsar
from pulsar.asyncio import PulsarException

__all__ = ["Completion", "LoopInbox"]

log = logging.getLogger(__name__)

_OK = _pulsar.Result.Ok


class LoopInbox:
    __slots__ = ("_loop", "_thread", "_items", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.get_ident()  # made on the loop's thread
        # (future to settle, or a plain callback to call with result and value; result; value)
        self._items: collections.deque[tuple[Any, Any, Any]] = collections.deque()
        self._scheduled = False

    @classmethod
    def here(cls) -> LoopInbox:
        return cls(asyncio.get_running_loop())

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def completion(self, future: asyncio.Future[Any]) -> Callable[..., None]:
        """A pulsar-client callback (``(result)`` or ``(result, value)``) that settles ``future``."""
        return functools.partial(self._put, future)

    def call(self, callback: Callable[[Any, Any], None]) -> Callable[..., None]:
        """A pulsar-client callback that runs ``callback(result, value)`` on the loop, batched."""
        return functools.partial(self._put, callback)

    def _put(self, target: Any, result: Any, value: Any = None) -> None:
        """Any thread."""
        self._items.append((target, result, value))
        if not self._scheduled:
            self._scheduled = True
            if threading.get_ident() == self._thread:
                self._loop.call_soon(self._run)
            else:
                try:
                    self._loop.call_soon_threadsafe(self._run)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    pass

    def _run(self) -> None:
        self._scheduled = False
        items = self._items
        # Completions appended while this runs (a callback that asks for the next message, which
        # the client has buffered, completes at once) are handled in this same run.
        while items:
            target, result, value = items.popleft()
            if not isinstance(target, asyncio.Future):
                try:
                    target(result, value)
                except Exception:  # one broken callback must not strand the others
                    log.exception("pulsar completion callback failed")
            elif target.done():  # its waiter gave up (cancelled)
                continue
            elif result == _OK:
                target.set_result(value)
            else:
                target.set_exception(PulsarException(result))


class Completion:
    """A pulsar-client callback for a call whose result may be known before the call returns.

    With ack grouping (the client's default) ``acknowledge_async`` calls back at once, on the
    caller's thread: then ``wait`` reads the result with no future, no inbox run and no loop
    turn. A callback that comes later, from the client's thread, settles a future through
    the inbox as ``completion`` does. Safe either way round: the callback stores the result
    before it looks for the future, and ``wait`` publishes the future before it looks at the
    result again (a future both sides saw is cancelled here, so the inbox skips it).
    """

    __slots__ = ("_inbox", "result", "_future")

    def __init__(self, inbox: LoopInbox) -> None:
        self._inbox = inbox
        self.result: Any = None
        self._future: asyncio.Future[None] | None = None

    def __call__(self, result: Any, value: Any = None) -> None:
        """Any thread."""
        self.result = result
        future = self._future
        if future is not None:
            self._inbox._put(future, result, value)

    async def wait(self) -> None:
        """Return once the call succeeded; ``PulsarException`` if it failed."""
        result = self.result
        if result is None:
            future = self._inbox.loop.create_future()
            self._future = future
            result = self.result
            if result is None:
                await future
                return
            future.cancel()  # called back meanwhile: the inbox, if it got it too, skips it
        if result != _OK:
            raise PulsarException(result)
