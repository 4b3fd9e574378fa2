"""The transport headers a job travels with, and jobs published by earlier versions.

A new job sent when it was created carries no Conveyor header: the start-delay metric reads the
envelope's ``created_at``. A retry copy or a delayed job carries ``x-conveyor-due-at``. The job
type and the attempt are read from the envelope. Versions before 2026-12 also sent
them as ``x-conveyor-job-type`` and ``x-conveyor-attempt``: such messages, still queued when a
newer worker starts, must run, retry and succeed exactly as before, whatever those say.
"""

from __future__ import annotations

from datetime import UTC, datetime

from conveyor.common import headers as h
from conveyor.common.codec import encode_model
from conveyor.common.errors import RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.transport.base import OutgoingMessage
from conveyor.consumer.worker import Worker
from conveyor.producer.producer import Producer
from tests.conformance.test_job_lifecycle import Ping, dead_letters, fast_config, producer_for, registry_for
from tests.conftest import wait_until
from tests.support.backends import Backend


def _fail_first_attempt(seen: list[tuple[int, dict[str, str]]]) -> object:
    async def handler(payload: Ping, ctx: JobContext) -> None:
        seen.append((ctx.attempt, dict(ctx.headers)))
        if ctx.attempt == 1:
            raise RetryableError("once")

    return handler


async def test_a_new_job_carries_no_conveyor_header_and_its_retry_copy_the_due_time(backend: Backend) -> None:
    seen: list[tuple[int, dict[str, str]]] = []
    jobs = registry_for(backend, _fail_first_attempt(seen))
    producer = await producer_for(backend, jobs)
    await producer.publish("test.ping", Ping(n=1))
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, what="the job's second attempt")
        # Both attempts are measured: the first from created_at, the copy from its due time.
        assert worker.metrics.registry.get_sample_value(
            "conveyor_job_start_delay_seconds_count", {"queue": backend.queue}) == 2
        assert worker.metrics.registry.get_sample_value(
            "conveyor_job_start_delay_seconds_sum", {"queue": backend.queue}) < 30
    assert [attempt for attempt, _ in seen] == [1, 2]
    assert not [name for name in seen[0][1] if name.lower().startswith("x-conveyor-")], seen[0][1]
    assert h.DUE_AT in seen[1][1], "the retry copy became due after its delay, not when created"
    for _, headers in seen:
        assert h.JOB_TYPE not in headers and h.ATTEMPT not in headers


async def test_a_delayed_job_carries_its_due_time(backend: Backend) -> None:
    seen: list[tuple[int, dict[str, str]]] = []

    async def handler(payload: Ping, ctx: JobContext) -> None:
        seen.append((ctx.attempt, dict(ctx.headers)))

    jobs = registry_for(backend, handler)
    producer = await producer_for(backend, jobs)
    await producer.publish("test.ping", Ping(n=2), delay=0.05)
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, what="the delayed job")
    due = h.due_timestamp(seen[0][1])
    assert due is not None and abs(due - datetime.now(UTC).timestamp()) < 60


async def test_a_job_an_earlier_version_published_with_job_type_and_attempt_headers_still_runs(backend: Backend) -> None:
    # As versions before 2026-12 sent it, the headers lying as they may: the envelope decides.
    seen: list[tuple[int, dict[str, str]]] = []
    jobs = registry_for(backend, _fail_first_attempt(seen))
    envelope = Producer.for_registry(None, jobs).build_envelope("test.ping", Ping(n=7))  # type: ignore[arg-type]
    old = {h.JOB_TYPE: "some.other.type", h.ATTEMPT: "999", h.DUE_AT: h.format_due_at(datetime.now(UTC))}
    sender = await backend.transport()
    await sender.declare(backend.queue)
    await sender.publish(backend.queue, OutgoingMessage(body=encode_model(envelope), message_id=envelope.job_id,
                                                        headers=old))
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, what="the old job's second attempt")
        assert (worker.counts["retried"], worker.counts["dead_lettered"]) == (1, 0)
        assert worker.metrics.registry.get_sample_value(
            "conveyor_job_start_delay_seconds_count", {"queue": backend.queue}) == 2
    assert [attempt for attempt, _ in seen] == [1, 2]
    assert seen[0][1][h.JOB_TYPE] == "some.other.type" and seen[0][1][h.ATTEMPT] == "999"
    assert h.JOB_TYPE not in seen[1][1] and h.ATTEMPT not in seen[1][1], "the retry copy is written anew"
    assert await dead_letters(backend) == []
