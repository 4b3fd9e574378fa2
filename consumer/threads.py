"""Sync (``def``) handlers: the worker's own threads, a time limit per run, and no overlap.

A thread cannot be stopped from the outside. Sync handlers used to run in the event loop's
default executor under the job's timeout, and the timeout only stopped the *waiting*: the
thread went on while the job's retry started, so one job ran several times at once and every
side effect happened. That executor is also shared and small (``min(32, CPUs + 4)``: 6 threads
on 2 cores), so at concurrency 16 jobs waited for a thread and timed out before they started.

What happens now:

* **A pool per worker, sized to its concurrency.** A job holding one of the worker's slots
  always finds a thread; the loop's default executor is not used for handlers.
* **The time limit starts when the thread starts the handler**, not when the call was queued.
* **A sync job that overruns its limit keeps its concurrency slot and its message until its
  thread returns; only then is it settled, as timed out** (retried, or dead-lettered once its
  attempts are spent), whatever the late thread returned or raised, as an async handler
  cancelled at its limit is a timeout even if its work was done. So its retry can never run
  while the first attempt still does. The alternatives both start the retry next to the
  running thread: settling at the limit (the old behaviour), or giving the message back.
  The price is that a stuck thread takes its slot with it (the worker runs one job fewer until
  it returns) and its message stays unacknowledged, so it is made visible: the gauge
  ``conveyor_sync_threads_overrun`` counts such threads, and the stall watchdog logs each one
  with its job id and the thread's current stack, which names the call it is stuck in. A thread
  still running ``exit_after`` past its limit (``CONVEYOR_STALL_EXIT_AFTER`` under
  ``conveyor worker``) ends the process, as a blocked loop does: the broker redelivers, and the
  crash journal counts the job, so one that hangs every time is dead-lettered as ``crash_loop``.
  An embedded worker without ``exit_after`` keeps holding the message until it stops.
* At shutdown the grace period wins: a handler still running when it ends cannot be stopped;
  its message is given back and its thread's result discarded (the process exit ends it:
  ``conveyor worker`` exits without joining such a thread, see ``running``).
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.common.deadlines import TimeLimit

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["HandlerThreads", "Overrun"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Overrun:
    """A sync handler's thread still running past its job's time limit."""

    key: int
    job_id: str
    job_type: str
    thread_id: int
    limit: float
    since: float  # time.monotonic() when the limit passed
    # "sync": a handler thread; "async": a coroutine that swallowed its cancel (thread_id 0)
    kind: str = "sync"

    def over_by(self) -> float:
        return max(0.0, time.monotonic() - self.since)


class HandlerThreads:
    """The threads one worker runs sync handlers in (``size``: the worker's concurrency)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a handler pool needs at least one thread")
        self.size = size
        self._executor: ThreadPoolExecutor | None = None
        self._overruns: dict[int, Overrun] = {}
        self._keys = itertools.count()
        self._running = 0
        self._lock = threading.Lock()

    def running(self) -> int:
        """Handler calls whose thread is running now, whether or not their job still waits.

        After a drain, one is a job whose message went back to the broker: the interpreter's
        exit would join its thread (``concurrent.futures`` does), so the handler ran on to the
        end while its redelivery ran elsewhere, the double run this module exists to prevent.
        """
        with self._lock:
            return self._running

    def overruns(self) -> list[Overrun]:
        """The threads past their limit now (safe to call from another thread)."""
        return list(self._overruns.values())

    def shutdown(self) -> None:
        """Stop taking calls; running threads finish on their own (nothing can stop them)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, func: Callable[[], T], *, limit: TimeLimit, job_id: str, job_type: str) -> T:
        """``func()`` in a thread, its context variables copied; ``TimeoutError`` when it took
        longer than ``limit`` from the moment its thread started it, raised only once the thread
        has returned (see the module docstring)."""
        loop = asyncio.get_running_loop()
        started: asyncio.Future[int] = loop.create_future()
        context = contextvars.copy_context()

        def call() -> T:
            with self._lock:
                self._running += 1
            loop.call_soon_threadsafe(_resolve, started, threading.get_ident())
            try:
                return context.run(func)
            except Exception:
                raise
            except BaseException as exc:
                raise _Carried(exc) from None
            finally:
                with self._lock:
                    self._running -= 1

        future = loop.run_in_executor(self._pool(), call)
        first: set[asyncio.Future[Any]] = {started, future}
        try:
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            future.cancel()  # still queued: it never runs; already running: nothing to stop
            raise
        if not started.done():  # cancelled in the queue (the pool was shut down)
            return await future
        deadline = limit()
        try:
            with deadline:
                return await asyncio.shield(future)
        except TimeoutError:
            if not deadline.expired:
                raise  # the handler's own TimeoutError (a socket's, say)
        except _Carried as carried:
            raise carried.error from None  # here, in this frame: an exception like any other
        await self._outlast(future, Overrun(next(self._keys), job_id, job_type, started.result(), limit.seconds,
                                            time.monotonic()))
        raise TimeoutError

    async def _outlast(self, future: asyncio.Future[T], overrun: Overrun) -> None:
        """Hold on (slot and message) until the overrunning thread returns, visibly."""
        self._overruns[overrun.key] = overrun
        # Done callback, not ``finally``: if shutdown cancels the wait, the thread still runs.
        future.add_done_callback(lambda _: self._overruns.pop(overrun.key, None))
        await asyncio.wait({future})
        if not future.cancelled():
            future.exception()  # the late outcome is discarded; retrieved so asyncio does not log it
        log.warning(
            "sync handler returned %.1fs after its time limit; settled as timed out",
            overrun.over_by(), extra={"job_id": overrun.job_id, "job_type": overrun.job_type},
        )

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            # Imported on first use: a worker with async handlers only never loads it.
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="conveyor-job")
        return self._executor


class _Carried(Exception):  # a wrapper, unwrapped in run()
    """A handler's ``BaseException`` that is not an ``Exception`` (``GeneratorExit``,
    ``KeyboardInterrupt``, ``SystemExit``), carried from its thread to the loop inside an
    ``Exception``. Left bare in the future, a ``GeneratorExit`` was thrown into the delivery's
    task by asyncio, and a coroutine that is thrown ``GeneratorExit`` is closed, frame after
    frame, past every ``except``: the processor's outcome was lost and the message left unsettled."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(type(error).__name__)
        self.error = error


def _resolve(future: asyncio.Future[int], value: int) -> None:
    if not future.done():
        future.set_result(value)
