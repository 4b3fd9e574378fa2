"""The batched writer: state transitions leave the hot path without a database round trip.

``record(transition)`` appends to a bounded in-memory buffer and returns at once; a background
task writes the buffer every ``flush_interval`` seconds (sooner once ``batch_size`` are
waiting) as one ``store.apply`` (one transaction). A store outage never blocks or fails a job:

- a failed write is kept and retried, after a pause doubling up to ``max_backoff``;
- past ``capacity`` waiting transitions the *oldest* are dropped (the newest say more: a later
  state supersedes an earlier one) and counted in ``conveyor_job_state_dropped_total``;
- ``conveyor_job_state_write_failures_total`` counts failed writes, ``conveyor_job_state_pending``
  what waits.

Meanwhile reads show the last state written: a job may look ``queued`` or ``running`` while it
is already further; when the store is back, the buffered transitions land (forward-only, so
their late arrival is harmless). If some were dropped, a job can stay at an earlier state until
its next transition or the reconciler moves it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from conveyor.common.job_state.base import JobStateStore
from conveyor.common.job_state.spill import SpillFile
from conveyor.common.job_state.states import Transition

__all__ = ["JobStateWriter", "WriterMetrics"]

log = logging.getLogger(__name__)


class WriterMetrics:
    """The writers' series, one child per ``role`` (worker, producer): a producer and a worker may
    share one registry, so a series registered already is reused rather than registered twice."""

    def __init__(self, registry: CollectorRegistry | None, role: str) -> None:
        r = registry or CollectorRegistry()
        self.dropped = _series(r, Counter, "conveyor_job_state_dropped",
                               "State transitions dropped: the buffer was full while the store failed").labels(role)
        self.failures = _series(r, Counter, "conveyor_job_state_write_failures",
                                "Failed batch writes to the job-state store").labels(role)
        self.written = _series(r, Counter, "conveyor_job_state_written",
                               "State transitions written to the job-state store").labels(role)
        self.pending = _series(r, Gauge, "conveyor_job_state_pending",
                               "State transitions waiting to be written").labels(role)


def _series(registry: CollectorRegistry, kind: type[Counter] | type[Gauge], name: str, documentation: str) -> Any:
    try:
        return kind(name, documentation, ["role"], registry=registry)
    except ValueError:  # registered by another writer on this registry (prometheus_client's own map)
        return registry._names_to_collectors[name]


class JobStateWriter:
    def __init__(
        self,
        store: JobStateStore,
        *,
        flush_interval: float = 1.0,
        batch_size: int = 2000,
        capacity: int = 100_000,
        max_backoff: float = 5.0,
        registry: CollectorRegistry | None = None,
        role: str = "worker",
        spill: SpillFile | None = None,
    ) -> None:
        """``spill``: a local file every transition is also appended to until it is written, so a
        ``kill -9`` loses none of them (``common.job_state.spill``)."""
        if flush_interval <= 0 or batch_size < 1 or capacity < batch_size:
            raise ValueError("flush_interval > 0, batch_size ≥ 1 and capacity ≥ batch_size")
        self.store = store
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.capacity = capacity
        self.max_backoff = max_backoff
        self.metrics = WriterMetrics(registry, role)
        self._buffer: collections.deque[Transition] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self.spill = spill
        self.metrics.pending.set_function(lambda: len(self._buffer))  # read at scrape time, not per record
        self.dropped = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record(self, transition: Transition) -> None:
        """Queue one transition; never blocks on the store, never raises."""
        if self.spill is not None:
            try:
                self.spill.append(transition)
            except OSError:  # a full disk must not fail a job; the transition is still buffered
                log.warning("job-state spill file write failed", exc_info=True)
        self._buffer.append(transition)
        if len(self._buffer) > self.capacity:
            self._buffer.popleft()
            self.dropped += 1
            self.metrics.dropped.inc()
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="job-state-writer")

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the loop; try once more, within ``timeout``, to write what waits."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=timeout)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await self.flush()
        if self._buffer:
            # With a spill file (a worker's state directory) the next process there writes them;
            # without one (a producer's) they are gone, and the workers' own states follow.
            kept = self.spill is not None
            log.warning("job-state transitions not written at shutdown; "
                        + ("the next worker here writes them" if kept else "they are lost (no state directory)"),
                        extra={"count": len(self._buffer)})
        if self.spill is not None:
            self.spill.close(keep=bool(self._buffer))

    async def flush(self) -> None:
        """Write everything waiting now; raises the store's error (what failed stays buffered)."""
        while self._buffer:
            await self._write_batch()

    async def _write_batch(self) -> None:
        async with self._write_lock:
            batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
            if not batch:
                return
            try:
                await self.store.open()  # a no-op once open; after a failed start, it retries the connect
                await self.store.apply(batch)
            except BaseException:
                # Back in front, in order; over capacity, the oldest go.
                self._buffer.extendleft(reversed(batch))
                while len(self._buffer) > self.capacity:
                    self._buffer.popleft()
                    self.dropped += 1
                    self.metrics.dropped.inc()
                self._trim_spill()
                raise
            self.metrics.written.inc(len(batch))
            self._trim_spill()

    def _trim_spill(self) -> None:
        """Under the write lock the buffer is everything unwritten: the spill file needs no more.
        A rewrite costs as many lines as it keeps, after at least as many appended: O(1) each."""
        if self.spill is None:
            return
        try:
            if not self._buffer:
                self.spill.written()
            elif self.spill.lines > 2 * len(self._buffer) + self.batch_size:
                self.spill.rewrite(self._buffer)
        except OSError:  # a full disk: the old file stays whole, and is tried again next batch
            log.warning("job-state spill file trim failed", exc_info=True)

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                await asyncio.sleep(backoff)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                backoff = 0.0
            except Exception as exc:  # the store is down: keep, count, retry later
                self.failures += 1
                self.metrics.failures.inc()
                backoff = min(self.max_backoff, max(self.flush_interval, backoff * 2))
                log.warning(
                    "job-state store write failed; transitions kept and retried",
                    extra={"error_type": type(exc).__name__, "pending": len(self._buffer), "retry_in": backoff},
                )
