"""Background tasks kept alive until they finish, and slots for running them.

The event loop holds only a weak reference to a task: one started and forgotten can be
garbage-collected mid-flight. Every component that starts background work keeps it in a
``TaskSet``, which drops each task when it is done and lets ``close`` wait for the rest.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["Slots", "TaskSet", "current_task"]

T = TypeVar("T")


def current_task(loop: asyncio.AbstractEventLoop | None) -> asyncio.Task[Any] | None:
    """``asyncio.current_task()``, asking ``loop`` first: the caller's own loop, remembered.

    On Python 3.11 ``asyncio.current_task()`` and ``get_running_loop()`` make a ``getpid()``
    system call each (the running-loop check after a fork), and the worker asked several times
    per job. A loop that is not running in this thread (a stopped one: tests run many loops)
    has no current task, so the long way answers then; ``loop`` must be one that only ever runs
    in the caller's thread, as every asyncio object's loop must.
    """
    if loop is not None:
        task = asyncio.current_task(loop)
        if task is not None:
            return task
    return asyncio.current_task()


class TaskSet:
    """Holds every task it spawned until it is done.

    Done tasks are dropped in batches, when the set has grown to twice what was still running
    at the last sweep, not by a done callback each: a callback is one more loop handle
    scheduled and run per task, and the worker spawns a task per delivery (issue 18). A done
    task kept until the next sweep costs only its memory (a few hundred bytes, at most as many
    as were running); ``len``, iteration and ``wait`` see the running ones only."""

    _MIN_SWEEP = 64

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the last loop spawned on
        self._sweep_at = self._MIN_SWEEP

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        loop = self._loop
        # The loop of the last spawn while it runs, else ask (a getpid() call per spawn on 3.11,
        # and the worker spawns one task per delivery). A set belongs to one thread's loops.
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(coro)
        tasks = self._tasks
        tasks.add(task)
        if len(tasks) >= self._sweep_at:
            self._sweep()
        return task

    def _sweep(self) -> None:
        self._tasks = running = {task for task in self._tasks if not task.done()}
        self._sweep_at = max(self._MIN_SWEEP, 2 * len(running))

    def _running(self) -> list[asyncio.Task[Any]]:
        return [task for task in self._tasks if not task.done()]

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(self._running())  # a copy: tasks finish while the caller iterates

    def __len__(self) -> int:
        return len(self._running())

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the tasks running now."""
        running = self._running()
        if running:
            await asyncio.wait(running, timeout=timeout)



class Slots:
    """At most ``size`` holders at once; taking a free slot is a plain call.

    ``asyncio.Semaphore``'s ``async with`` costs two coroutine frames and a generator per use
    where it almost never waits (the worker takes one per delivery, a Pulsar producer one per
    send). Here a free slot is taken with a decrement and no await; only a taker that finds
    none free waits, in FIFO order, and a slot a waiter is handed but can no longer use (it was
    cancelled meanwhile) goes to the next one, never lost.
    """

    __slots__ = ("free", "_waiters")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("at least one slot")
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
