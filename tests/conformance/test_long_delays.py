"""Delays longer than the largest delay tier (issue 13, defect 6), on every backend.

The test backends' largest RabbitMQ tier is 5 s (``TEST_DELAY_TIERS``); an 8 s delay used to be
clamped to it there and the job ran 3 s early. Every backend must honour it: never before 8 s,
and soon after.
"""

from __future__ import annotations

import time

import pytest

from conveyor.common.backoff import MAX_DELAY, RetryPolicy
from conveyor.common.errors import ConfigurationError, RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.consumer.worker import Worker
from tests.conformance.test_job_lifecycle import Calls, Ping, fast_config, producer_for, registry_for
from tests.conftest import wait_until
from tests.support.backends import TEST_DELAY_TIERS, Backend

LONG = 8.0
assert LONG > max(TEST_DELAY_TIERS)
# A pass through a tier is exact to a few ms; the hop through the worker and the broker's
# tick (Pulsar: 100 ms) come on top. Late is allowed, early never.
SLACK = 4.0


async def test_a_delay_longer_than_the_largest_tier_never_runs_early(backend: Backend) -> None:
    calls = Calls()
    jobs = registry_for(backend, lambda payload, ctx: calls.add(ctx))
    producer = await producer_for(backend, jobs)
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        start = time.monotonic()
        receipt = await producer.publish("test.ping", Ping(n=1), delay=LONG)
        await wait_until(lambda: time.monotonic() - start >= LONG - 0.2 or bool(calls.seen), timeout=LONG + 1,
                         what="the delay to pass")
        assert calls.seen == [], f"an {LONG:g}s delay ran after {calls.seen[0][2] - start:.2f}s"
        await wait_until(lambda: bool(calls.seen), timeout=SLACK + 1, what="the delayed job to run")
    (job_id, attempt, ran_at) = calls.seen[0]
    assert (job_id, attempt) == (receipt.job_id, 1)
    assert LONG <= ran_at - start < LONG + SLACK
    assert worker.counts["succeeded"] == 1
    assert len(calls.seen) == 1  # went round the tiers without a second run or a spent attempt


async def test_a_retry_backoff_longer_than_the_largest_tier_is_waited_in_full(backend: Backend) -> None:
    calls = Calls()

    async def handler(payload: Ping, ctx: JobContext) -> None:
        calls.add(ctx)
        if ctx.attempt == 1:
            raise RetryableError("transient")

    jobs = registry_for(backend, handler, retry=RetryPolicy(max_attempts=2, base=LONG, cap=LONG, jitter=0.0))
    producer = await producer_for(backend, jobs)
    receipt = await producer.publish("test.ping", Ping(n=1))
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, timeout=LONG + SLACK + 5, what="the retry")
    (_, a1, t1), (_, a2, t2) = calls.of(receipt.job_id)
    assert (a1, a2) == (1, 2)
    assert LONG <= t2 - t1 < LONG + SLACK, f"the {LONG:g}s backoff took {t2 - t1:.2f}s"
    assert worker.counts["retried"] == 1


async def test_a_delay_beyond_the_maximum_is_refused_before_anything_is_sent(backend: Backend) -> None:
    jobs = registry_for(backend, lambda payload, ctx: None)
    producer = await producer_for(backend, jobs)
    await producer.transport.declare(backend.queue)
    for delay, says in ((MAX_DELAY + 1, "longest Conveyor honours"), (float("inf"), "longest Conveyor honours"),
                        (float("nan"), "not NaN")):
        with pytest.raises(ConfigurationError, match=says):
            await producer.publish("test.ping", Ping(n=1), delay=delay)
    assert (await producer.transport.stats(backend.queue)).ready == 0
    await producer.publish("test.ping", Ping(n=2), delay=MAX_DELAY)  # the broker takes the maximum itself
