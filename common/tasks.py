"""Background tasks kept alive until they finish.

The event loop holds only a weak reference to a task: one started and forgotten can be
garbage-collected mid-flight. Every component that starts background work keeps it in a
``TaskSet``, which drops each task when it is done and lets ``close`` wait for the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["TaskSet", "current_task"]

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
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the last loop spawned on

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        loop = self._loop
        # The loop of the last spawn while it runs, else ask (a getpid() call per spawn on 3.11,
        # and the worker spawns one task per delivery). A set belongs to one thread's loops.
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))  # a copy: tasks leave the set as they finish

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the tasks running now."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
