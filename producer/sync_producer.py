"""A blocking producer for synchronous code (Django, Flask, scripts, gunicorn pre-fork workers).

It is the async ``Producer``, run on one private event-loop thread per process: every thread of
the process submits its publish to that loop and waits for the broker's confirm, so the
guarantees are the async producer's own (publisher confirms, an unroutable message raises, an
unknown outcome is retried under the same job id, large payloads go through the claim check)
and so are the exceptions. One connection serves every thread of the process.

Fork safety: a child of ``fork()`` (a gunicorn pre-fork worker) never touches the parent's loop
thread or connection. Threads do not survive ``fork()``, and a socket shared with the parent
would interleave both processes' frames; so in the child the producer forgets what the parent
started (without closing it: closing would send a close frame on the parent's connection) and
builds its own loop thread and connection on its first publish, from the same factory.

Shutdown: ``close()`` (or the ``with`` block) closes the producer and its connection and stops
the thread. A producer left open is closed when it is garbage-collected or at interpreter exit
(``weakref.finalize``), bounded by ``exit_timeout`` so that exit never hangs on a broker that
does not answer. A ``close()`` during the first connect does not wait for it: it cancels the
connect, and the publishes that waited for it raise ``ConfigurationError``. The loop thread is a
daemon thread: exit handlers run only after the interpreter has joined every non-daemon thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar, Unpack

from pydantic import BaseModel

from conveyor.common import bounds
from conveyor.common.errors import ConfigurationError, PublishOutcomeUnknown
from conveyor.common.jobs.command import PublishReceipt
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.factory import transport_from_url
from conveyor.producer.options import EnvelopeOptions, PublishOptions
from conveyor.producer.producer import Producer
from conveyor.schemas.envelope import Envelope

__all__ = ["SyncProducer"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class _LoopThread:
    """One event loop on one daemon thread, with the producer that lives on it."""

    def __init__(self, name: str) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.producer: Producer | None = None
        self.opening: concurrent.futures.Future[Producer] | None = None  # the connect every publish waits for
        self._accepting = True
        self._guard = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.CancelledError:
            # close() while this publish waited for its confirm: the broker may have it.
            raise PublishOutcomeUnknown("the producer was closed while this publish was in flight") from None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        with self._guard:  # a call is either on the loop before stop() cancels what runs there, or refused
            if not self._accepting:
                coro.close()
                raise ConfigurationError("this SyncProducer is closed")
            return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float) -> None:
        """Cancel what still runs on the loop (its callers get PublishOutcomeUnknown), stop it."""
        with self._guard:
            if not self._accepting:
                return
            self._accepting = False
            cancelled = asyncio.run_coroutine_threadsafe(_cancel_others(), self.loop)
        with contextlib.suppress(Exception):
            cancelled.result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)


async def _cancel_others() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class SyncProducer:
    """``producer.publish(job_type, payload, …)`` from any thread; returns once the broker confirmed.

    ``factory`` builds the async ``Producer`` (with its transport) on the loop thread; it is
    called again in a forked child. ``SyncProducer.from_url(url, jobs=…, **options)`` is the
    usual way to make one.
    """

    def __init__(
        self, factory: Callable[[], Producer], *, exit_timeout: float = 5.0, name: str = "conveyor-producer"
    ) -> None:
        exit_timeout = bounds.seconds("exit_timeout", exit_timeout)  # NaN or inf: an exit that hangs
        self._factory = factory
        self._exit_timeout = exit_timeout
        self._name = name
        self._lock = threading.Lock()
        self._runner: _LoopThread | None = None
        # Shuts the runner down if this producer is collected or the interpreter exits unclosed.
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._closed = False
        self._warned_loop = False
        # What a forked child inherited from its parent: kept referenced (never closed, never
        # collected) so that no finaliser acts on the parent's sockets from the child.
        self._inherited: list[_LoopThread] = []
        _LIVE.add(self)  # one process-wide fork hook, not one per producer (they are never removed)

    @classmethod
    def from_url(cls, url: str, *, jobs: JobRegistry | None = None, exit_timeout: float = 5.0,
                 **producer_options: Any) -> SyncProducer:
        """A producer for the broker at ``url`` (``amqp://``, ``pulsar://``, ``memory://``); with
        ``jobs``, it validates against that registry's schemas and routes to its queues.

        ``producer_options`` go to every process's ``Producer``: an object that holds its own
        connections (a payload store) would be shared by a forked child, so build such a
        producer in a factory of your own (``SyncProducer(factory)``) instead."""

        def factory() -> Producer:
            transport = transport_from_url(url)
            if jobs is not None:
                return Producer.for_registry(transport, jobs, **producer_options)
            return Producer(transport, **producer_options)

        return cls(factory, exit_timeout=exit_timeout)

    # -- publishing ----------------------------------------------------------------------
    def publish(
        self, job_type: str, payload: BaseModel | Mapping[str, Any], **options: Unpack[PublishOptions]
    ) -> PublishReceipt:
        """As ``Producer.publish``: the same options, checks, retries, receipt and exceptions."""
        runner, producer = self._started()  # refuses its own loop thread; any other loop is warned of
        self._warn_if_on_a_loop()
        return runner.call(producer.publish(job_type, payload, **options))

    def publish_envelope(self, envelope: Envelope, *, queue: str | None = None, delay: float = 0.0) -> PublishReceipt:
        runner, producer = self._started()  # refuses its own loop thread; any other loop is warned of
        self._warn_if_on_a_loop()
        return runner.call(producer.publish_envelope(envelope, queue=queue, delay=delay))

    def build_envelope(
        self, job_type: str, payload: BaseModel | Mapping[str, Any], **options: Unpack[EnvelopeOptions]
    ) -> Envelope:
        """As ``Producer.build_envelope`` (validates; sends nothing)."""
        return self._started()[1].build_envelope(job_type, payload, **options)

    @property
    def producer(self) -> Producer:
        """The async producer of this process (started); for its metrics and schemas."""
        return self._started()[1]

    # -- life cycle ----------------------------------------------------------------------
    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, timeout: float | None = None) -> None:
        """Close the producer and its connection, stop the loop thread. Idempotent; later
        publishes raise ``ConfigurationError``."""
        # Checked before anything changes: a bad timeout raised after the runner was taken and
        # its finaliser detached, and the loop thread and connection then lived on unclosed.
        limit = self._exit_timeout if timeout is None else bounds.seconds("timeout", timeout, zero_ok=True)
        with self._lock:
            self._closed = True
            runner, self._runner = self._runner, None
            finalizer, self._finalizer = self._finalizer, None
        if runner is None or finalizer is None or finalizer.detach() is None:
            return  # never started, or already shut down (by another close, or at exit)
        _shut_down(runner, limit)

    def _warn_if_on_a_loop(self) -> None:
        """Once: a publish from a coroutine blocks its whole loop until the confirm (retries
        included). Not refused: a notebook runs its cells on a loop, and there that is wanted."""
        if self._warned_loop:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._warned_loop = True
        log.warning("SyncProducer.publish called on a running event loop: it blocks that loop until the broker "
                    "confirms; in async code use Producer and 'await producer.publish(...)'")

    def _started(self) -> tuple[_LoopThread, Producer]:
        current = self._runner
        if current is not None and threading.current_thread() is current.thread:
            raise ConfigurationError("SyncProducer.publish called on its own loop thread: it would wait for itself")
        with self._lock:
            if self._closed:
                raise ConfigurationError("this SyncProducer is closed")
            runner = self._runner
            if runner is None:
                runner = self._runner = _LoopThread(self._name)
                self._finalizer = weakref.finalize(self, _shut_down, runner, self._exit_timeout)
            if runner.producer is not None:
                return runner, runner.producer
            # Built and connected on the loop (its locks and timers belong there), once for all
            # the threads that publish meanwhile.
            opening = runner.opening
            if opening is None:
                opening = runner.opening = runner.submit(self._open(runner))
        # Waited for outside the lock: a close() from another thread must not wait out a connect
        # to a broker that does not answer; it cancels the connect instead.
        try:
            return runner, opening.result()
        except concurrent.futures.CancelledError:
            raise ConfigurationError("this SyncProducer was closed while it connected") from None
        finally:
            if opening.done() and runner.producer is None:
                with self._lock:  # a failed connect is tried again on the next publish
                    if runner.opening is opening:
                        runner.opening = None

    async def _open(self, runner: _LoopThread) -> Producer:
        producer = self._factory()
        await producer.__aenter__()
        # Set here, on the loop thread, so that a close() that comes after this line always
        # finds the producer to close, whichever thread waits for the connect.
        runner.producer = producer
        return producer

    def _forget_parent(self) -> None:
        # In the child right after fork(): no other thread exists, the parent's lock may have
        # been held by one of its threads, and its loop thread is gone.
        self._lock = threading.Lock()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._runner is not None:
            self._inherited.append(self._runner)
            self._runner = None


def _shut_down(runner: _LoopThread, limit: float) -> None:
    """Close the runner's producer and its connection, then stop its loop, each within ``limit``:
    from ``close()``, or as the finaliser of a producer collected or still open at exit."""
    if runner.pid != os.getpid():
        return  # a forked child never acts on its parent's connection
    if threading.current_thread() is runner.thread:
        # Collected on its own loop thread, which cannot wait for itself: just stop the loop.
        runner.loop.stop()
        return
    try:
        if runner.producer is not None:
            runner.call(runner.producer.__aexit__(None, None, None), limit)
    except Exception as exc:  # a broker that is gone cannot stop us from closing
        log.warning("closing the producer's connection failed: %s: %s", type(exc).__name__, exc)
    finally:
        runner.stop(limit)


_LIVE: weakref.WeakSet[SyncProducer] = weakref.WeakSet()


def _forget_parents() -> None:
    for producer in list(_LIVE):
        producer._forget_parent()


os.register_at_fork(after_in_child=_forget_parents)
