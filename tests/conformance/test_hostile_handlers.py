"""Handlers that raise what is not an ``Exception``, on every backend: each such job still ends
in exactly one of succeeded or dead-lettered, and the worker keeps running.

``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``, a ``CancelledError`` the handler raises
itself and a bare ``BaseException`` are failed attempts like any other: retried, then
dead-lettered as ``exhausted``. (Let through, the first two took the worker down, the next gave
the message back unspent, to be redelivered at once for ever, and the others left it
unsettled until the connection closed.) So is one raised in a thread or task the handler awaits.
"""

from __future__ import annotations

import asyncio

from conveyor.common.backoff import RetryPolicy
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.consumer.worker import Worker
from tests.conformance.test_job_lifecycle import Ping, dead_letters, fast_config, producer_for
from tests.conftest import wait_until
from tests.support.backends import Backend

RAISED: list[type[BaseException]] = [
    KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError, BaseException,
]


def hostile_jobs(backend: Backend, runs: list[tuple[str, int]]) -> JobRegistry:
    jobs = JobRegistry()
    retry = RetryPolicy(max_attempts=2, base=0.2, jitter=0.0)

    def raise_for(payload: Ping, ctx: JobContext) -> None:
        runs.append((ctx.job_type, payload.n))
        if payload.n < len(RAISED):
            raise RAISED[payload.n](f"handler {ctx.job_type} raised it")

    async def raise_for_async(payload: Ping, ctx: JobContext) -> None:
        raise_for(payload, ctx)

    async def awaits_a_thread_that_raises(payload: Ping, ctx: JobContext) -> None:
        # asyncio throws what the awaited future holds into the job's task: a GeneratorExit so
        # thrown closed every frame of it, and the message stayed unsettled.
        await asyncio.to_thread(raise_for, payload, ctx)

    jobs.job("test.sync", queue=backend.queue, retry=retry, timeout=10, model=Ping)(raise_for)
    jobs.job("test.async", queue=backend.queue, retry=retry, timeout=10, model=Ping)(raise_for_async)
    jobs.job("test.awaits", queue=backend.queue, retry=retry, timeout=10, model=Ping)(awaits_a_thread_that_raises)
    return jobs


async def test_handlers_raising_base_exceptions_are_retried_then_dead_lettered_and_the_worker_keeps_running(
    backend: Backend,
) -> None:
    runs: list[tuple[str, int]] = []
    jobs = hostile_jobs(backend, runs)
    producer = await producer_for(backend, jobs)
    hostile = {(job_type, n): (await producer.publish(job_type, Ping(n=n))).job_id
               for job_type in ("test.sync", "test.async", "test.awaits") for n in range(len(RAISED))}
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == len(hostile), timeout=30,
                         what="every hostile job dead-lettered")
        after = await producer.publish("test.sync", Ping(n=len(RAISED)))  # the worker still runs jobs
        await wait_until(lambda: worker.counts["succeeded"] == 1, what="a job published afterwards")
        await asyncio.sleep(0.3)
        assert (worker.counts["released"], worker.counts["retried"]) == (0, len(hostile))
    assert sorted(runs) == sorted([*hostile, *hostile, ("test.sync", len(RAISED))]), "two attempts each, no more"
    records = {record.job_id: record for record in await dead_letters(backend)}
    assert sorted(records) == sorted(hostile.values()) and after.job_id not in records
    for (_, n), job_id in hostile.items():
        record = records[job_id]
        assert (record.reason, record.error_type) == ("exhausted", RAISED[n].__name__)
        assert [attempt.error_type for attempt in record.history] == [RAISED[n].__name__] * 2
