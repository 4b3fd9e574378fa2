"""One fixed time limit for many concurrent calls, kept with a single timer.

``asyncio.timeout`` schedules and cancels a timer handle per call. With one per job (the
handler's limit) and one per publish (the confirm timeout) that was a tenth of a worker's
CPU per job. Calls under the *same* limit expire in the order they started, so one timer,
armed for the oldest call still running, is enough: when it fires it cancels every call past
its deadline and re-arms for the next one.

Expiry behaves exactly like ``asyncio.timeout``: the task is cancelled, and that cancellation
leaves the ``with`` block as ``TimeoutError``, unless the task was also cancelled from
elsewhere (shutdown), which stays a ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

__all__ = ["TimeLimit"]


class TimeLimit:
    """``with limit():`` — the block is cancelled (``TimeoutError``) after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("a time limit must be positive")
        self.seconds = seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: dict[_Call, None] = {}  # insertion order is deadline order
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = 0.0
        # Calls cancelled at their limit that have not ended yet (time.monotonic() of the
        # cancel): a block that swallows CancelledError goes on; the watchdog reads this.
        self.overdue: dict[_Call, float] = {}

    def __call__(self, label: Any = None) -> _Call:
        return _Call(self, label)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """First use, or a new event loop (tests): start afresh on ``loop``."""
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._running, self._timer = loop, {}, None
        self.overdue = {}

    def _start(self, call: _Call, loop: asyncio.AbstractEventLoop) -> None:
        call.when = loop.time() + self.seconds
        self._running[call] = None
        if self._timer is None:
            self._arm(call.when)

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        self._armed_for = when
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        assert self._loop is not None
        self._timer = None
        # The loop runs a timer up to one clock resolution early: what it was armed for is due.
        now = max(self._loop.time(), self._armed_for)
        due = []
        for call in self._running:
            if call.when > now:
                self._arm(call.when)
                break
            due.append(call)
        cancelled_at = time.monotonic()
        for call in due:
            del self._running[call]
            call.expired = True
            self.overdue[call] = cancelled_at
            call.task.cancel()


class _Call:
    __slots__ = ("_limit", "when", "task", "cancelling", "expired", "label")

    when: float  # set by TimeLimit._start
    task: asyncio.Task[Any]  # these two set by __enter__
    cancelling: int

    def __init__(self, limit: TimeLimit, label: Any = None) -> None:
        self._limit = limit
        self.expired = False
        self.label = label  # what the caller wants to know of an overdue call (a job's id)

    def __enter__(self) -> None:
        limit = self._limit
        loop = limit._loop
        # The limit's own loop named: asyncio.current_task() would ask get_running_loop(),
        # a getpid() system call per job on 3.11. A loop that is not running in this thread
        # (one that has stopped: tests) has no current task, and the long way takes over.
        task = None if loop is None else asyncio.current_task(loop)
        if task is None:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("TimeLimit must be used inside a task")
            loop = task.get_loop()
            if loop is not limit._loop:
                limit._bind(loop)
        assert loop is not None
        self.task = task
        self.cancelling = task.cancelling()
        limit._start(self, loop)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._limit._running.pop(self, None)
        if self.expired:
            self._limit.overdue.pop(self, None)
        # As asyncio.timeout: take back our own cancel; report it as a timeout unless another
        # cancel request is pending too.
        if self.expired and self.task.uncancel() <= self.cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
