"""Sync (``def``) handlers on every broker: a job whose thread overruns its time limit never runs
beside its own retry (a thread cannot be killed, so the worker holds its slot and message until
it returns), and it is then retried as a timeout."""

from __future__ import annotations

import time

from conveyor.common.backoff import RetryPolicy
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.consumer.worker import Worker
from tests.conformance.test_job_lifecycle import Ping, fast_config, producer_for
from tests.conftest import wait_until
from tests.support.backends import Backend


async def test_a_sync_job_past_its_limit_never_runs_beside_its_retry(backend: Backend) -> None:
    runs: list[tuple[int, float, float]] = []  # (attempt, start, end)
    jobs = JobRegistry()

    @jobs.job("test.ping", queue=backend.queue, timeout=0.3, retry=RetryPolicy(max_attempts=3, base=0.2, jitter=0.0))
    def slow(payload: Ping, ctx: JobContext) -> None:
        start = time.monotonic()
        if ctx.attempt == 1:
            time.sleep(1.5)  # five times its limit, every first run
        runs.append((ctx.attempt, start, time.monotonic()))

    producer = await producer_for(backend, jobs)
    await producer.publish("test.ping", Ping(n=1))
    async with Worker(await backend.transport(), jobs, config=fast_config(concurrency=2)) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, what="the retry to succeed", timeout=30)
    assert [attempt for attempt, _, _ in runs] == [1, 2], runs
    (_, _, first_end), (_, second_start, _) = runs
    assert second_start >= first_end, f"the retry started {first_end - second_start:.2f} s before the first run ended"
    assert worker.counts["retried"] == 1 and worker.counts["dead_lettered"] == 0
