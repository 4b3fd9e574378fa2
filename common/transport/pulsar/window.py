"""At most so many sends in flight per producer: the client's own queue never fills.

``asyncio.Semaphore`` did this, but ``async with`` cost ~4 % of a pipelined publish's CPU
(two coroutine frames and a generator per send) where the window is almost never full. Here a
send that finds a free slot takes it with a decrement and no await; only a send that finds
the window full waits, in FIFO order, and a slot a waiter is handed but can no longer use
(it was cancelled meanwhile) goes to the next one, never lost.
"""

from __future__ import annotations

import asyncio
import collections

__all__ = ["SendWindow"]


class SendWindow:
    __slots__ = ("free", "_waiters")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a send window holds at least one send")
        self.free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_take(self) -> bool:
        """Take a slot now if one is free and nobody queues for one (no overtaking)."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot (after ``try_take`` failed)."""
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot just as it was cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Return a slot: to the longest waiter still waiting, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1
