"""Sync (``def``) handlers on the in-memory broker (issue 13, defect 3).

Threads are real here (a thread cannot run on a fake clock), so the durations are real but
short. The hostile cases: the event loop's default executor is tiny (as the 6 threads of a
2-core machine, shared with everything), and a handler that overruns its limit must never run
next to its own retry.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.deadlines import TimeLimit
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.threads import HandlerThreads
from conveyor.consumer.watchdog import WatchdogConfig
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer


class Job(BaseModel):
    n: int


@pytest.fixture
async def tiny_default_executor() -> AsyncIterator[None]:
    """The loop's shared executor with two threads: the worker must not depend on it."""
    executor = ThreadPoolExecutor(max_workers=2)
    asyncio.get_running_loop().set_default_executor(executor)
    yield
    executor.shutdown(wait=False)


async def test_sixteen_sync_jobs_at_concurrency_sixteen_all_run_at_once_within_their_limit(
    tiny_default_executor: None,
) -> None:
    broker = MemoryBroker()
    running = 0
    most = 0
    lock = threading.Lock()
    jobs = JobRegistry()

    @jobs.job("t.sync", timeout=1.0, retry=RetryPolicy(max_attempts=1))
    def work(payload: Job, ctx: JobContext) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.2)
        with lock:
            running -= 1

    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
        async with Worker(transport, jobs, config=WorkerConfig(concurrency=16, metrics_interval=0)) as worker:
            for n in range(16):
                await producer.publish("t.sync", Job(n=n))
            await asyncio.wait_for(broker.join(DEFAULT_QUEUE), 5)
    assert worker.counts["succeeded"] == 16
    assert worker.counts["dead_lettered"] == 0
    assert most == 16, "a thread for every slot: none of them waited in a queue"


async def test_the_time_limit_starts_when_the_thread_starts_not_when_the_call_was_queued() -> None:
    threads = HandlerThreads(1)
    limit = TimeLimit(0.5)
    try:
        first = asyncio.ensure_future(threads.run(lambda: time.sleep(0.3), limit=limit, job_id="a", job_type="t"))
        second = asyncio.ensure_future(threads.run(lambda: time.sleep(0.3) or "done", limit=limit, job_id="b",
                                                   job_type="t"))
        await first
        assert await second == "done", "queued 0.3 s, ran 0.3 s: within its 0.5 s limit"
    finally:
        threads.shutdown()


async def test_running_counts_handler_threads_still_running_after_their_wait_was_cancelled() -> None:
    # What ``conveyor worker`` reads after a drain: a cancelled wait does not stop the thread.
    threads = HandlerThreads(2)
    release = threading.Event()
    try:
        call = asyncio.ensure_future(threads.run(release.wait, limit=TimeLimit(10), job_id="a", job_type="t"))
        while threads.running() == 0:
            await asyncio.sleep(0.01)
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        assert threads.running() == 1, "the drain gave the job back; its thread still runs"
        release.set()
        while threads.running():
            await asyncio.sleep(0.01)
        assert await threads.run(lambda: "after", limit=TimeLimit(10), job_id="b", job_type="t") == "after"
        assert threads.running() == 0
    finally:
        release.set()
        threads.shutdown()


async def test_a_sync_job_that_overruns_its_limit_never_overlaps_its_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = MemoryBroker()
    runs: list[tuple[int, float, float]] = []  # (attempt, start, end)
    overrun_seen: list[float] = []
    jobs = JobRegistry()

    @jobs.job("t.slow", timeout=0.2, retry=RetryPolicy(max_attempts=3, base=0.01, jitter=0))
    def slow(payload: Job, ctx: JobContext) -> None:
        start = time.monotonic()
        if ctx.attempt == 1:
            time.sleep(0.8)  # four times its limit
        runs.append((ctx.attempt, start, time.monotonic()))

    transport = MemoryTransport(broker)
    await transport.connect()
    config = WorkerConfig(concurrency=4, metrics_interval=0, watchdog=WatchdogConfig(warn_after=5, interval=0.05))
    caplog.set_level(logging.WARNING)
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
        async with Worker(transport, jobs, config=config) as worker:
            receipt = await producer.publish("t.slow", Job(n=1))
            await asyncio.sleep(0.5)  # past the limit, the thread still sleeping
            overrun_seen.append(worker.metrics.registry.get_sample_value("conveyor_sync_threads_overrun") or 0)
            assert worker.in_flight == 1, "the overrunning job keeps its slot and its message"
            await asyncio.wait_for(broker.join(DEFAULT_QUEUE), 5)
            after = worker.metrics.registry.get_sample_value("conveyor_sync_threads_overrun")
    assert [attempt for attempt, _, _ in runs] == [1, 2]
    (_, _, first_end), (_, second_start, _) = runs
    assert second_start >= first_end, "the retry started only after the first attempt's thread returned"
    assert worker.counts["retried"] == 1 and worker.counts["succeeded"] == 1
    assert worker.counts["dead_lettered"] == 0
    assert worker.metrics.failed.labels("t.slow", "timeout")._value.get() == 1, "settled as timed out"
    assert overrun_seen == [1] and after == 0
    logged = [r for r in caplog.records if r.getMessage().startswith("sync handler overran its time limit")]
    assert logged, "the watchdog names the overrunning thread"
    assert logged[0].job_id == receipt.job_id  # type: ignore[attr-defined]
    assert "time.sleep(0.8)" in logged[0].thread_stack  # type: ignore[attr-defined]
