"""A settlement that fails never loops hot (issue 13, defect 14), on the memory broker with a
fake clock: the message is held for a growing pause before it goes back, a copy the broker keeps
refusing gives way to a dead letter of the original, and nothing a handler raises can make a
copy or a dead letter unwritable."""

from __future__ import annotations

import asyncio
import random

import pytest
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.clock import FakeClock
from conveyor.common.codec import decode_dead_letter, decode_envelope
from conveyor.common.errors import PublishNotConfirmed, RetryableError, TransportError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.breaker import BreakerConfig
from conveyor.consumer.settlement import (
    REFUSALS_BEFORE_DEAD_LETTER,
    SETTLE_BACKOFF_CAP,
    SETTLE_BACKOFF_FIRST,
    Settlement,
)
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer

DLQ = DEFAULT_QUEUE + ".dlq"
# One worker, and a breaker that never opens: the handler fails on every delivery here.
ONE_AT_A_TIME = WorkerConfig(concurrency=1, metrics_interval=0,
                             breaker=BreakerConfig(consecutive_failures=10**6, min_calls=10**6))


class Job(BaseModel):
    n: int


async def settle_loop() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def failing_jobs(runs: list[int]) -> JobRegistry:
    jobs = JobRegistry()

    @jobs.job("t.fail", retry=RetryPolicy(max_attempts=50, base=1, jitter=0))
    async def fail(payload: Job, ctx: JobContext) -> None:
        runs.append(ctx.attempt)
        raise RetryableError("again")

    return jobs


class Refusing(MemoryTransport):
    """Confirms dead letters and jobs; refuses (or loses) every retry copy."""

    def __init__(self, broker: MemoryBroker, error: Exception) -> None:
        super().__init__(broker)
        self.error = error

    async def publish(self, queue: str, message: OutgoingMessage) -> None:
        if message.kind == "retry":
            raise type(self.error)(*self.error.args)  # a new one each time, as a client raises
        await super().publish(queue, message)


async def dead_letter_records(broker: MemoryBroker) -> list:
    reader = MemoryTransport(broker)
    await reader.connect()
    records = []
    while (delivery := await reader.get(DLQ)) is not None:
        records.append(decode_dead_letter(delivery.body))
    return records


async def test_a_copy_the_broker_keeps_refusing_comes_back_after_growing_pauses_then_is_dead_lettered() -> None:
    clock = FakeClock()
    broker = MemoryBroker(clock)
    runs: list[int] = []
    jobs = failing_jobs(runs)
    transport = Refusing(broker, PublishNotConfirmed("the retry copy is too large for the broker"))
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs, clock=clock) as producer:
        envelope = producer.build_envelope("t.fail", Job(n=1))
        await producer.publish_envelope(envelope)
        async with Worker(transport, jobs, clock=clock, rng=random.Random(0), config=ONE_AT_A_TIME) as worker:
            await settle_loop()
            assert runs == [1], "held for a pause, not handed straight back"
            assert worker.counts["released"] == 0
            pause = SETTLE_BACKOFF_FIRST
            for delivery in range(2, REFUSALS_BEFORE_DEAD_LETTER + 1):
                clock.advance(pause * 0.9)
                await settle_loop()
                assert len(runs) == delivery - 1, "not before the pause is over"
                clock.advance(pause * 0.1)
                await settle_loop()
                assert len(runs) == delivery
                pause = min(SETTLE_BACKOFF_CAP, pause * 2)
            assert worker.counts["dead_lettered"] == 1
            clock.advance(60)
            await settle_loop()
    assert runs == [1] * REFUSALS_BEFORE_DEAD_LETTER, "the same attempt each time: no copy was ever taken"
    [record] = await dead_letter_records(broker)
    assert record.reason == "settlement_failed"
    assert (record.error_type, record.job_id) == ("PublishNotConfirmed", envelope.job_id)
    assert decode_envelope(record.original_body) == envelope
    assert broker.depth(DEFAULT_QUEUE) == 0


async def test_a_broker_outage_longer_than_any_pause_gives_the_message_back_at_a_bounded_rate() -> None:
    clock = FakeClock()
    broker = MemoryBroker(clock)
    runs: list[int] = []
    jobs = failing_jobs(runs)
    # Lost confirms: the copy may exist, so the original is never dead-lettered for it.
    transport = Refusing(broker, TransportError("connection lost"))
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs, clock=clock) as producer:
        await producer.publish("t.fail", Job(n=1))
        async with Worker(transport, jobs, clock=clock, rng=random.Random(0), config=ONE_AT_A_TIME) as worker:
            for _ in range(600):  # ten minutes of outage, a second at a time
                await settle_loop()
                clock.advance(1.0)
            await settle_loop()
            assert worker.counts["dead_lettered"] == 0
            # Shutting down while a message is held: the pause ends (at most the cap), it goes back.
            draining = asyncio.ensure_future(worker.drain(0))
            await settle_loop()
            clock.advance(SETTLE_BACKOFF_CAP)
            await draining
    # Pauses of 0.5, 1, 2, 4, then 5 s: about 120 deliveries in ten minutes, not 100,000s.
    assert 100 <= len(runs) <= 125
    assert broker.depth(DEFAULT_QUEUE) + broker.in_flight(DEFAULT_QUEUE) == 1, "the original is still there"


@pytest.mark.parametrize(
    "error",
    [
        RetryableError("cannot open /data/caf\udc80.csv"),  # a file name decoded with surrogateescape
        type("E" * 300, (RetryableError,), {})("a class name longer than any record allows"),
        type("Unprintable", (RetryableError,), {"__str__": lambda self: 1 / 0})(),
    ],
    ids=["lone surrogate in the message", "300-character class name", "str() raises"],
)
async def test_whatever_a_handler_raises_its_retry_copies_and_dead_letter_are_written(error: Exception) -> None:
    broker = MemoryBroker()
    runs: list[int] = []
    jobs = JobRegistry()

    @jobs.job("t.fail", retry=RetryPolicy(max_attempts=2, base=0.01, jitter=0))
    async def fail(payload: Job, ctx: JobContext) -> None:
        runs.append(ctx.attempt)
        raise error

    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer, Worker(transport, jobs) as worker:
        await producer.publish("t.fail", Job(n=1))
        for _ in range(100):
            if worker.counts["dead_lettered"]:
                break
            await asyncio.sleep(0.01)
    assert runs == [1, 2]
    assert (worker.counts["retried"], worker.counts["dead_lettered"], worker.counts["released"]) == (1, 1, 0)
    [record] = await dead_letter_records(broker)
    assert record.reason == "exhausted"
    assert [h.attempt for h in record.history] == [1, 2]


async def test_a_dead_letter_record_that_cannot_be_built_is_written_bare_with_the_original_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("the history cannot be built")

    monkeypatch.setattr(Settlement, "_attempt_record", broken)
    broker = MemoryBroker()
    jobs = failing_jobs([])
    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer, Worker(transport, jobs) as worker:
        envelope = producer.build_envelope("t.fail", Job(n=1))
        await producer.publish_envelope(envelope, queue=DEFAULT_QUEUE)
        for _ in range(100):
            if worker.counts["dead_lettered"]:
                break
            await asyncio.sleep(0.01)
    assert (worker.counts["dead_lettered"], worker.counts["released"]) == (1, 0)
    [record] = await dead_letter_records(broker)
    assert record.reason == "settlement_failed"
    assert record.job_id == envelope.job_id and record.history == ()
    assert "could not be encoded" in (record.error_message or "")
    assert decode_envelope(record.original_body) == envelope


@pytest.mark.parametrize("max_deferrals", [0, 50, 120])
def test_a_deferral_bound_the_history_cannot_count_to_is_refused(max_deferrals: int) -> None:
    """Deferrals are counted in the attempt history (50 entries): 120, the old default, could
    never be reached, so a message from a newer producer was deferred forever."""
    from conveyor.common.errors import ConfigurationError
    from conveyor.consumer.settlement import DeferPolicy

    with pytest.raises(ConfigurationError, match="max_deferrals"):
        DeferPolicy(max_deferrals=max_deferrals)
    assert DeferPolicy().max_deferrals < 50


@pytest.mark.parametrize("delay", [0.0, -1.0, 31 * 24 * 3600.0])
def test_a_deferral_delay_no_transport_can_wait_is_refused(delay: float) -> None:
    from conveyor.common.errors import ConfigurationError
    from conveyor.consumer.settlement import DeferPolicy

    with pytest.raises(ConfigurationError, match="delay"):
        DeferPolicy(delay=delay)
