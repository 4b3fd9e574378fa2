"""Worker behaviour on the in-memory broker with a fake clock: no sleeps, exact timing."""

from __future__ import annotations

import asyncio
import gc
import random
import warnings

from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.clock import FakeClock
from conveyor.common.errors import RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer


class Job(BaseModel):
    n: int


async def settle_loop() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_retry_waits_for_the_backoff_on_the_broker_not_in_the_worker() -> None:
    clock = FakeClock()
    broker = MemoryBroker(clock)
    attempts: list[int] = []
    jobs = JobRegistry()

    @jobs.job("t.job", retry=RetryPolicy(max_attempts=3, base=10, factor=3, jitter=0))
    async def handler(payload: Job, ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        raise RetryableError("no")

    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs, clock=clock) as producer:
        async with Worker(transport, jobs, clock=clock, rng=random.Random(0)) as worker:
            await producer.publish("t.job", Job(n=1))
            await settle_loop()
            assert attempts == [1]
            assert worker.in_flight == 0, "a delayed retry is never held by the worker"
            assert broker.in_flight(DEFAULT_QUEUE) == 1  # parked on the broker
            clock.advance(9.9)
            await settle_loop()
            assert attempts == [1]
            clock.advance(0.2)
            await settle_loop()
            assert attempts == [1, 2]
            clock.advance(30)
            await settle_loop()
            assert attempts == [1, 2, 3]
            assert worker.counts["dead_lettered"] == 1
            assert broker.depth(DEFAULT_QUEUE + ".dlq") == 1


async def test_job_timeout_cancels_the_handler_and_counts_as_retryable() -> None:
    broker = MemoryBroker()
    cancelled = asyncio.Event()
    jobs = JobRegistry()

    @jobs.job("t.slow", timeout=0.05, retry=RetryPolicy(max_attempts=1))
    async def slow(payload: Job, ctx: JobContext) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer, Worker(transport, jobs) as worker:
        await producer.publish("t.slow", Job(n=1))
        await broker.join(DEFAULT_QUEUE)
    assert cancelled.is_set()
    assert worker.counts["dead_lettered"] == 1
    assert worker.metrics.failed.labels("t.slow", "timeout")._value.get() == 1


async def test_an_async_handler_that_swallows_its_timeout_and_returns_is_a_timeout_not_a_success() -> None:
    # Its work was cut short at the limit; it said "done" and was acked as a success, the job's
    # effect never made. A sync handler's late return has always been a timeout.
    broker = MemoryBroker()
    finished: list[int] = []
    jobs = JobRegistry()

    @jobs.job("t.slow", timeout=0.05, retry=RetryPolicy(max_attempts=2, base=0.01, jitter=0))
    async def slow(payload: Job, ctx: JobContext) -> str:
        try:
            await asyncio.sleep(10)
            finished.append(ctx.attempt)
        except asyncio.CancelledError:
            pass  # the mistake: the cancel is swallowed, and the handler returns as if done
        return "done"

    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer, Worker(transport, jobs) as worker:
        await producer.publish("t.slow", Job(n=1))
        await broker.join(DEFAULT_QUEUE)
    assert finished == []
    assert (worker.counts["succeeded"], worker.counts["retried"], worker.counts["dead_lettered"]) == (0, 1, 1)
    assert worker.metrics.failed.labels("t.slow", "timeout")._value.get() == 2


async def test_sync_handlers_run_off_the_event_loop() -> None:
    import threading

    broker = MemoryBroker()
    threads: list[str] = []
    jobs = JobRegistry()

    @jobs.job("t.sync")
    def blocking(payload: Job, ctx: JobContext) -> None:
        threads.append(threading.current_thread().name)

    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer, Worker(transport, jobs) as worker:
        await producer.publish("t.sync", Job(n=1))
        await broker.join(DEFAULT_QUEUE)
    assert worker.counts["succeeded"] == 1
    assert threads and threads[0] != threading.main_thread().name


async def test_settlement_failure_gives_the_message_back_instead_of_losing_it() -> None:
    broker = MemoryBroker()
    jobs = JobRegistry()

    @jobs.job("t.fail", retry=RetryPolicy(max_attempts=5, base=1))
    async def fail(payload: Job, ctx: JobContext) -> None:
        raise RetryableError("x")

    class BrokenPublish(MemoryTransport):
        async def publish(self, queue, message):  # the retry copy cannot be confirmed
            raise ConnectionError("broker gone")

    transport = BrokenPublish(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
        await producer.publish("t.fail", Job(n=1))
        worker = Worker(transport, jobs, config=WorkerConfig(concurrency=1))
        await worker.start()
        await settle_loop()
        await worker.drain(0)
        await worker.stop()
    assert worker.counts["retried"] == 0
    assert worker.counts["released"] >= 1
    assert broker.depth(DEFAULT_QUEUE) == 1, "the original must still be on the broker"


async def test_metrics_have_no_series_per_job_id() -> None:
    broker = MemoryBroker()
    jobs = JobRegistry()

    @jobs.job("t.many")
    async def ok(payload: Job, ctx: JobContext) -> None:
        return None

    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer, Worker(transport, jobs) as worker:
        for i in range(200):
            await producer.publish("t.many", Job(n=i))
        await broker.join(DEFAULT_QUEUE)
    text = worker.metrics.render().decode()
    assert 'conveyor_jobs_succeeded_total{job_type="t.many"} 200.0' in text
    assert text.count("conveyor_jobs_succeeded_total{") == 1


async def test_worker_idempotency_option_dedupes_and_exposes_checkpoints() -> None:
    from conveyor.common.idempotency.memory import MemoryProcessedKeyStore

    broker = MemoryBroker()
    runs: list[tuple[int, dict | None]] = []
    jobs = JobRegistry()

    @jobs.job("t.steps", retry=RetryPolicy(max_attempts=3, base=0.01, jitter=0))
    async def steps(payload: Job, ctx: JobContext) -> None:
        runs.append((ctx.attempt, ctx.last_checkpoint))
        if ctx.attempt == 1:
            await ctx.checkpoint({"done": 5})
            raise RetryableError("crash half-way")

    transport = MemoryTransport(broker)
    await transport.connect()
    store = MemoryProcessedKeyStore()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
        async with Worker(transport, jobs, idempotency=store) as worker:
            await producer.publish("t.steps", Job(n=1), idempotency_key="order-7")
            await broker.join(DEFAULT_QUEUE)
            await producer.publish("t.steps", Job(n=1), idempotency_key="order-7")  # a duplicate
            await broker.join(DEFAULT_QUEUE)
    assert runs == [(1, None), (2, {"done": 5})], "resumed from the checkpoint, and the duplicate never ran"
    assert worker.counts["succeeded"] == 2


async def test_stop_cancels_the_monitor_even_mid_sample() -> None:
    """Regression: the depth sampler used wait_for, which on 3.11 can swallow the monitor's
    cancellation, so stop() sat out its 5 s safety timeout."""
    broker = MemoryBroker()
    jobs = JobRegistry()

    @jobs.job("t.noop")
    async def noop(payload: Job, ctx: JobContext) -> None:
        pass

    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
        worker = Worker(transport, jobs)
        await worker.start()
        await producer.publish("t.noop", Job(n=1))
        await broker.join(DEFAULT_QUEUE)
        monitor = worker._monitor
        async with asyncio.timeout(2):
            await worker.stop()
    assert monitor is not None and monitor.done()


async def test_secrets_in_a_handlers_exception_never_reach_retry_copies_or_dead_letters() -> None:
    from conveyor.common.secrets import Redactor
    from conveyor.consumer.ops.dead_letters import DeadLetters

    clock = FakeClock()
    broker = MemoryBroker(clock)
    key = "s3-key-CANARY-5b1d"
    jobs = JobRegistry()

    @jobs.job("t.leaky", retry=RetryPolicy(max_attempts=2, base=1, jitter=0))
    async def leaky(payload: Job, ctx: JobContext) -> None:
        raise RuntimeError(f"cannot reach amqp://u:pw-CANARY@h/ with key={key}")

    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs, clock=clock) as producer:
        async with Worker(transport, jobs, clock=clock, redact=Redactor([key])) as worker:
            await producer.publish("t.leaky", Job(n=1))
            await settle_loop()
            clock.advance(2)
            await settle_loop()
            assert worker.counts["dead_lettered"] == 1
        [record] = await DeadLetters(transport, DEFAULT_QUEUE).list()
    stored = record.model_dump_json() + record.original_body.decode()  # the retry copy's history too
    assert "CANARY" not in stored
    assert record.error_message == "cannot reach amqp://u:***@h/ with key=***"
    assert record.traceback is not None and "key=***" in record.traceback
    assert [h.error_message for h in record.history] == [record.error_message] * 2


def test_worker_config_from_default_settings_is_the_default_config() -> None:
    """One source of defaults: the settings' defaults and WorkerConfig's are the same values."""
    from dataclasses import asdict

    from conveyor.common.settings import Settings

    from_settings = asdict(WorkerConfig.from_settings(Settings()))
    defaults = asdict(WorkerConfig())
    for differs in ("worker_id", "state_dir", "watchdog"):  # id is random; the CLI always has a journal
        from_settings.pop(differs), defaults.pop(differs)
    assert from_settings == defaults
    assert WorkerConfig.from_settings(Settings()).watchdog.warn_after == WorkerConfig().watchdog.warn_after


def test_the_worker_id_names_the_deploys_code_version() -> None:
    from pydantic import ValidationError

    from conveyor.common.settings import Settings

    assert WorkerConfig.from_settings(Settings(code_version="2026.12.1+g3f2a")).worker_id.endswith("@2026.12.1+g3f2a")
    assert "@" not in WorkerConfig.from_settings(Settings()).worker_id
    for bad in ("", "has space", "x" * 41, "a/b"):
        try:
            Settings(code_version=bad)
        except ValidationError:
            continue
        raise AssertionError(f"{bad!r} was accepted as a code version")


async def test_a_handler_that_returns_its_work_unawaited_is_dead_lettered_not_acked_as_done() -> None:
    # lambda p, ctx: send(p) around an async def returned the coroutine unrun: acked as a
    # success, "coroutine was never awaited" in the log, the job's work never done.
    broker = MemoryBroker()
    sent: list[int] = []
    jobs = JobRegistry()

    async def send(payload: Job) -> None:
        sent.append(payload.n)

    async def forgets_to_await(payload: Job, ctx: JobContext) -> object:
        return send(payload)

    jobs.job("t.lambda", model=Job)(lambda payload, ctx: send(payload))
    jobs.job("t.forgets", model=Job)(forgets_to_await)
    transport = MemoryTransport(broker)
    await transport.connect()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a coroutine never awaited warns when it is collected
        async with Producer.for_registry(MemoryTransport(broker), jobs) as producer, Worker(transport, jobs) as worker:
            await producer.publish("t.lambda", Job(n=1))
            await producer.publish("t.forgets", Job(n=2))
            await broker.join(DEFAULT_QUEUE)
        gc.collect()
    assert sent == []
    assert (worker.counts["succeeded"], worker.counts["dead_lettered"]) == (0, 2)
    assert worker.metrics.failed.labels("t.lambda", "permanent")._value.get() == 1
