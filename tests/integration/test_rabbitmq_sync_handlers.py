"""Sync (``def``) handlers on a real RabbitMQ 4 (issue 13, defect 3): a job whose thread overruns
its time limit never runs next to its own retry, and a full set of slots never waits for threads."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from tests.conftest import wait_until

pytestmark = pytest.mark.rabbitmq


class Step(BaseModel):
    n: int


async def test_a_sync_job_past_its_limit_never_runs_beside_its_retry(
    transport: RabbitMQTransport, queue_name: str
) -> None:
    runs: list[tuple[int, float, float]] = []  # (attempt, start, end)
    jobs = JobRegistry()

    @jobs.job("t.slow", queue=queue_name, timeout=0.3, retry=RetryPolicy(max_attempts=3, base=0.2, jitter=0))
    def slow(payload: Step, ctx: JobContext) -> None:
        start = time.monotonic()
        if ctx.attempt == 1:
            time.sleep(1.5)  # five times its limit
        runs.append((ctx.attempt, start, time.monotonic()))

    await transport.declare(queue_name)
    async with Producer.for_registry(transport, jobs, manage_transport=False) as producer:
        await producer.publish("t.slow", Step(n=1))
    async with Worker(transport, jobs, config=WorkerConfig(concurrency=1, metrics_interval=0)) as worker:
        await wait_until(lambda: worker.metrics.registry.get_sample_value("conveyor_sync_threads_overrun") == 1,
                         what="the thread to pass its limit")
        await asyncio.sleep(0.5)
        assert len(runs) == 0, "nothing else ran: the overrunning job keeps the only slot"
        await wait_until(lambda: worker.counts["succeeded"] == 1, timeout=20, what="the retry to succeed")
        assert worker.metrics.registry.get_sample_value("conveyor_sync_threads_overrun") == 0
    assert [attempt for attempt, _, _ in runs] == [1, 2]
    (_, _, first_end), (_, second_start, _) = runs
    assert second_start >= first_end, "the retry started only after the first attempt's thread returned"
    assert (worker.counts["retried"], worker.counts["dead_lettered"]) == (1, 0)
    assert worker.metrics.failed.labels("t.slow", "timeout")._value.get() == 1
    stats = await transport.stats(queue_name)
    assert (stats.ready, stats.dead_letters) == (0, 0)


async def test_sixteen_sync_jobs_at_concurrency_sixteen_all_succeed_within_their_limit(
    transport: RabbitMQTransport, queue_name: str
) -> None:
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))  # as if on a small host
    running = most = 0
    lock = threading.Lock()
    jobs = JobRegistry()

    @jobs.job("t.sync", queue=queue_name, timeout=1.0, retry=RetryPolicy(max_attempts=1))
    def work(payload: Step, ctx: JobContext) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.2)
        with lock:
            running -= 1

    await transport.declare(queue_name)
    async with Producer.for_registry(transport, jobs, manage_transport=False) as producer:
        for n in range(16):
            await producer.publish("t.sync", Step(n=n))
    async with Worker(transport, jobs, config=WorkerConfig(concurrency=16, metrics_interval=0)) as worker:
        await wait_until(lambda: worker.counts["succeeded"] + worker.counts["dead_lettered"] == 16,
                         what="all sixteen jobs")
    assert (worker.counts["succeeded"], worker.counts["dead_lettered"]) == (16, 0)
    assert most == 16
