"""The job-state middleware and the producer's handle on the in-memory broker and store.

Writers are flushed explicitly (``flush``), so nothing here waits on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import AsyncIterator

import orjson
import pytest
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.clock import FakeClock
from conveyor.common.errors import ConfigurationError, JobNotSucceeded, PermanentError, RetryableError
from conveyor.common.headers import CONFIG_HASH, PRODUCER_VERSION, WORKER_VERSION
from conveyor.common.job_state import JobState, MemoryJobStateStore, Transition
from conveyor.common.job_state.handle import JobHandle
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.outcome import Outcome, SettleAction
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.base import ConsumerHandle
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.middleware.job_state import JobStateConfig, JobStateMiddleware
from conveyor.consumer.ops.dead_letters import DeadLetterFilter, DeadLetters
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from conveyor.schemas.dead_letter import DeadLetterRecord


class Job(BaseModel):
    n: int


class Rig:
    """Broker, store, producer and worker; ``await rig.ready()`` once the jobs are registered."""

    def __init__(self, jobs: JobRegistry) -> None:
        self.jobs = jobs
        self.clock = FakeClock()
        self.broker = MemoryBroker(self.clock)
        self.store = MemoryJobStateStore(clock=self.clock)
        self._stack = contextlib.AsyncExitStack()

    async def ready(self) -> Rig:
        transport = MemoryTransport(self.broker)
        await transport.connect()
        # Upkeep loops off (0): these tests drive reconcile and cancels themselves.
        config = JobStateConfig(heartbeat=0, reconcile_every=0, cancel_poll=0)
        self.worker = Worker(transport, self.jobs, clock=self.clock, rng=random.Random(0), job_state=self.store,
                             job_state_config=config,
                             config=WorkerConfig(metrics_interval=0, code_version="v-test", config_hash="abc"))
        self.producer = await self._stack.enter_async_context(Producer.for_registry(
            MemoryTransport(self.broker), self.jobs, clock=self.clock, job_state=self.store, code_version="p-test"
        ))
        return self

    @property
    def recorder(self) -> JobStateMiddleware:
        assert self.worker.job_state is not None
        return self.worker.job_state

    async def drain(self) -> None:
        await self.broker.join(DEFAULT_QUEUE)
        await self.recorder.writer.flush()


@pytest.fixture
def jobs() -> JobRegistry:
    return JobRegistry()


@pytest.fixture
async def rig(jobs: JobRegistry) -> AsyncIterator[Rig]:
    chosen = Rig(jobs)
    async with chosen._stack:
        yield chosen


async def _flush_producer(rig: Rig) -> None:
    for middleware in rig.producer._middlewares:
        writer = getattr(middleware, "writer", None)
        if writer is not None:
            await writer.flush()


async def test_a_job_is_recorded_queued_then_succeeded_with_its_result_and_run_metadata(
    rig: Rig, jobs: JobRegistry
) -> None:
    @jobs.job("t.add")
    async def add(payload: Job, ctx: JobContext) -> dict[str, int]:
        return {"sum": payload.n + 1}

    await rig.ready()
    handle = await rig.producer.publish("t.add", Job(n=41))
    assert rig.producer.build_envelope("t.add", Job(n=1)).headers[PRODUCER_VERSION] == "p-test"
    assert isinstance(handle, JobHandle) and handle.queue == DEFAULT_QUEUE and handle.tries == 1
    assert (await handle.status()).state is JobState.QUEUED  # before any write landed
    await _flush_producer(rig)
    record = await handle.status()
    assert record.state is JobState.QUEUED and record.producer_version == "p-test"
    async with rig.worker:
        await rig.drain()
    assert await handle.result(timeout=5) == {"sum": 42}
    record = await handle.status()
    assert record.state is JobState.SUCCEEDED and record.code_version == "v-test" and record.config_hash == "abc"
    assert record.queued_at is not None and record.started_at is not None and record.finished_at is not None
    [attempt] = record.attempts
    assert attempt.worker_id == rig.worker.config.worker_id and attempt.outcome == "succeeded"
    assert attempt.code_version == "v-test"


async def test_the_idempotency_key_comes_from_the_producer_or_else_from_the_worker(
    rig: Rig, jobs: JobRegistry
) -> None:
    @jobs.job("t.key")
    async def key(payload: Job, ctx: JobContext) -> None:
        return None

    await rig.ready()
    handle = await rig.producer.publish("t.key", Job(n=1), idempotency_key="order-7")
    await _flush_producer(rig)
    assert (await handle.status()).idempotency_key == "order-7"  # the producer's queued write
    async with Producer.for_registry(MemoryTransport(rig.broker), rig.jobs, clock=rig.clock) as plain:
        bare = await plain.publish("t.key", Job(n=2), idempotency_key="order-7")  # no store-aware producer
        async with rig.worker:
            await rig.drain()
    first, second = await rig.store.get(handle.job_id), await rig.store.get(bare.job_id)
    assert first is not None and first.state is JobState.SUCCEEDED and first.idempotency_key == "order-7"
    assert second is not None and second.queued_at is None and second.idempotency_key == "order-7"
    assert {r.job_id for r in await rig.store.list_jobs(idempotency_key="order-7")} == {handle.job_id, bare.job_id}


async def test_retries_are_attempts_and_a_dead_letter_links_both_ways(rig: Rig, jobs: JobRegistry) -> None:
    @jobs.job("t.fail", retry=RetryPolicy(max_attempts=2, base=1, jitter=0))
    async def fail(payload: Job, ctx: JobContext) -> None:
        if ctx.attempt == 1:
            raise RetryableError("first")
        raise PermanentError("second")

    await rig.ready()
    handle = await rig.producer.publish("t.fail", Job(n=1))
    async with rig.worker:
        for _ in range(50):
            await asyncio.sleep(0)
        await rig.recorder.writer.flush()
        assert (await handle.status()).state is JobState.RETRYING
        rig.clock.advance(5)
        await rig.drain()
    record = await handle.status()
    assert record.state is JobState.DEAD_LETTERED and record.reason == "permanent" and record.attempt == 2
    assert record.producer_version == "p-test"  # from the envelope's header too, not only the producer's write
    assert [a.outcome for a in record.attempts] == ["failed", "failed"]
    assert record.attempts[1].error == "PermanentError: second"
    reader = MemoryTransport(rig.broker)
    await reader.connect()
    delivery = await reader.get(f"{DEFAULT_QUEUE}.dlq")
    assert delivery is not None
    dead = DeadLetterRecord.model_validate(orjson.loads(delivery.body))
    assert dead.dead_letter_id == record.dead_letter_id and dead.job_id == handle.job_id
    assert delivery.headers[WORKER_VERSION] == "v-test" and delivery.headers[CONFIG_HASH] == "abc"
    await delivery.release()
    letters = DeadLetters(reader, DEFAULT_QUEUE)
    assert [r.job_id for r in await letters.list(DeadLetterFilter(worker_version="v-test"))] == [handle.job_id]
    assert letters.run_info[dead.dead_letter_id] == {"worker_version": "v-test", "config_hash": "abc"}
    assert await letters.list(DeadLetterFilter(worker_version="v-other")) == []
    with pytest.raises(JobNotSucceeded) as caught:
        await handle.result(timeout=5)
    assert caught.value.state == "dead_lettered"


async def test_a_store_outage_never_blocks_or_loses_jobs_and_the_states_land_after(
    rig: Rig, jobs: JobRegistry
) -> None:
    ran: list[int] = []

    @jobs.job("t.ok")
    async def ok(payload: Job, ctx: JobContext) -> None:
        ran.append(payload.n)

    await rig.ready()
    rig.store.fail_with = OSError("database down")
    handles = [await rig.producer.publish("t.ok", Job(n=i)) for i in range(20)]
    async with rig.worker:
        await rig.broker.join(DEFAULT_QUEUE)
        assert sorted(ran) == list(range(20))  # every job ran while the store was down
        with pytest.raises(Exception, match="failing on purpose"):
            await rig.recorder.writer.flush()
        assert rig.recorder.writer.pending == 40  # running + succeeded per job, kept
        rig.store.fail_with = None
        await rig.recorder.writer.flush()
    await _flush_producer(rig)
    records = [await h.status() for h in handles]
    assert {r.state for r in records} == {JobState.SUCCEEDED}
    assert all(r.queued_at is not None for r in records)  # queued landed late: harmless


async def test_a_full_buffer_drops_the_oldest_and_counts_them(rig: Rig) -> None:
    await rig.ready()
    writer = rig.recorder.writer
    writer.capacity = writer.batch_size = 3
    for n in range(5):
        writer.record(rig.recorder._transition(_envelope(rig, n), JobState.RUNNING, None))
    assert writer.pending == 3 and writer.dropped == 2
    assert rig.worker.metrics.registry.get_sample_value(
        "conveyor_job_state_dropped_total", {"role": "worker"}
    ) == 2


async def test_a_job_cancelled_while_queued_is_acked_never_run_and_recorded_cancelled(
    rig: Rig, jobs: JobRegistry
) -> None:
    ran: list[int] = []

    @jobs.job("t.never")
    async def never(payload: Job, ctx: JobContext) -> None:
        ran.append(payload.n)

    await rig.ready()
    handle = await rig.producer.publish("t.never", Job(n=1), delay=30)
    await _flush_producer(rig)
    assert (await handle.status()).state is JobState.SCHEDULED
    first = await rig.store.request_cancel(handle.job_id)
    assert first.changed and (await rig.store.request_cancel(handle.job_id)).changed is False
    async with rig.worker:  # started after the cancel: it learns it from the store
        for _ in range(20):
            await asyncio.sleep(0)  # the broker's delay timer starts
        rig.clock.advance(31)
        await rig.drain()
    assert ran == []
    assert rig.broker.depth(f"{DEFAULT_QUEUE}.dlq") == 0 and rig.worker.counts["cancelled"] == 1
    record = await handle.status()
    assert record.state is JobState.CANCELLED and record.rank == 9  # the worker's record
    assert await rig.store.pending_cancels() == set()
    with pytest.raises(JobNotSucceeded, match="cancelled"):
        await handle.result(timeout=5)


async def test_cancelling_a_running_async_handler_cancels_it_and_it_is_never_retried(
    rig: Rig, jobs: JobRegistry
) -> None:
    started, stopped = asyncio.Event(), asyncio.Event()

    @jobs.job("t.long", retry=RetryPolicy(max_attempts=5))
    async def long(payload: Job, ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()

    await rig.ready()
    handle = await rig.producer.publish("t.long", Job(n=1))
    async with rig.worker:
        await started.wait()
        assert rig.recorder.cancel(handle.job_id) is True
        assert rig.recorder.cancel(handle.job_id) is True  # twice: harmless
        await rig.drain()
    assert stopped.is_set()
    assert rig.worker.counts["cancelled"] == 1 and rig.worker.counts["retried"] == 0
    assert rig.broker.depth(f"{DEFAULT_QUEUE}.dlq") == 0
    record = await handle.status()
    assert record.state is JobState.CANCELLED and [a.outcome for a in record.attempts] == ["cancelled"]


async def test_a_sync_handler_sees_ctx_cancelled_and_the_job_ends_cancelled(rig: Rig, jobs: JobRegistry) -> None:
    started, seen = threading.Event(), threading.Event()

    @jobs.job("t.sync", timeout=30)
    def steps(payload: Job, ctx: JobContext) -> str:
        started.set()
        while not ctx.cancelled:
            threading.Event().wait(0.01)
        seen.set()
        return "stopped early"

    await rig.ready()
    handle = await rig.producer.publish("t.sync", Job(n=1))
    async with rig.worker:
        await asyncio.to_thread(started.wait, 10)
        assert rig.recorder.cancel(handle.job_id) is True
        await rig.drain()
    assert seen.is_set() and rig.worker.counts["cancelled"] == 1
    assert (await handle.status()).state is JobState.CANCELLED


async def test_a_receipt_without_a_store_says_what_is_missing() -> None:
    broker = MemoryBroker()
    async with Producer(MemoryTransport(broker), allow_unregistered=True) as producer:
        receipt = await producer.publish("t.any", {"n": 1})
        with pytest.raises(ConfigurationError, match="job-state store"):
            await receipt.status()
        with pytest.raises(ConfigurationError, match="job-state store"):
            await receipt.result(timeout=1)


def _envelope(rig: Rig, n: int):  # type: ignore[no-untyped-def]
    return rig.producer.build_envelope("t.x", {"n": n}) if rig.producer.schemas.knows("t.x") else _raw(rig, n)


def _raw(rig: Rig, n: int):  # type: ignore[no-untyped-def]
    from conveyor.schemas.envelope import Envelope, InlinePayload

    return Envelope(job_id=f"j{n}", idempotency_key=f"j{n}", job_type="t.x", schema_version=1, correlation_id="c",
                    created_at=rig.clock.now(), payload=InlinePayload(data={"n": n}))


async def test_the_poll_brings_a_cancel_made_elsewhere_to_the_running_job(rig: Rig, jobs: JobRegistry) -> None:
    started = asyncio.Event()

    @jobs.job("t.wait")
    async def wait(payload: Job, ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(3600)

    await rig.ready()
    handle = await rig.producer.publish("t.wait", Job(n=1))
    async with rig.worker:
        await started.wait()
        await rig.recorder.writer.flush()
        assert (await rig.store.request_cancel(handle.job_id)).running  # no broadcast: another process
        await rig.recorder._refresh_cancels()  # what the poll runs every cancel_poll seconds
        await rig.drain()
    assert rig.worker.counts["cancelled"] == 1
    assert (await handle.status()).state is JobState.CANCELLED


async def test_cancels_of_jobs_that_ended_elsewhere_are_forgotten_and_pending_ones_kept(
    rig: Rig, jobs: JobRegistry
) -> None:
    @jobs.job("t.idle")
    async def idle(payload: Job, ctx: JobContext) -> None: ...

    await rig.ready()
    recorder = rig.recorder
    queued = await rig.producer.publish("t.idle", Job(n=1))  # no worker runs: it stays queued
    await _flush_producer(rig)
    assert (await rig.store.request_cancel(queued.job_id)).changed
    recorder.cancel(queued.job_id)  # the broadcast
    for n in range(1_000):  # broadcasts for jobs another worker received, acked and recorded
        recorder.cancel(f"ended-elsewhere-{n}")

    real_query = rig.store.pending_cancels

    async def query_racing_a_broadcast() -> set[str]:
        pending = await real_query()
        recorder.cancel("broadcast-during-the-query")  # its store write is not in this answer
        return pending

    rig.store.pending_cancels = query_racing_a_broadcast  # type: ignore[method-assign]
    await recorder._refresh_cancels()
    assert recorder._cancelled == {queued.job_id, "broadcast-during-the-query"}
    rig.store.pending_cancels = real_query  # type: ignore[method-assign]
    for _ in range(100):  # the poll, many times: the queued job's cancel is never dropped
        await recorder._refresh_cancels()
    assert recorder._cancelled == {queued.job_id}
    assert recorder.is_cancelled(queued.job_id)


async def test_heartbeats_keep_a_long_job_live_while_a_dead_workers_attempt_is_abandoned(
    rig: Rig, jobs: JobRegistry
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @jobs.job("t.long", timeout=3600)
    async def long(payload: Job, ctx: JobContext) -> None:
        started.set()
        await release.wait()

    await rig.ready()
    handle = await rig.producer.publish("t.long", Job(n=1))
    # Another job whose worker died while running it: one running write, then silence.
    orphan = _raw(rig, 7)
    running = rig.recorder._transition(orphan, JobState.RUNNING, None)
    dead = Transition(**{**_fields(running), "worker_id": "dead-worker"})  # type: ignore[arg-type]
    await rig.store.apply([dead])
    async with rig.worker:
        await started.wait()
        for _ in range(3):  # 90 s in all, beyond the 60 s lease, heart-beating every 30 s
            rig.clock.advance(30)
            await rig.recorder._heartbeat()
            await rig.recorder.writer.flush()
        await rig.recorder._reconcile()
        assert (await handle.status()).state is JobState.RUNNING  # alive: its heartbeats say so
        gone = await rig.store.get(orphan.job_id)
        assert gone is not None and gone.state is JobState.RETRYING and gone.attempts[0].outcome == "abandoned"
        release.set()
        await rig.drain()
    assert (await handle.status()).state is JobState.SUCCEEDED


def _fields(t: Transition) -> dict[str, object]:
    return {name: getattr(t, name) for name in t.__slots__}


async def test_a_job_that_times_out_is_timed_out_then_dead_lettered_with_timeout_attempts(
    rig: Rig, jobs: JobRegistry
) -> None:
    @jobs.job("t.hang", timeout=0.05, retry=RetryPolicy(max_attempts=2, base=1, jitter=0))
    async def hang(payload: Job, ctx: JobContext) -> None:
        await asyncio.sleep(3600)

    await rig.ready()
    handle = await rig.producer.publish("t.hang", Job(n=1))
    async with rig.worker:
        while rig.worker.counts["retried"] == 0:
            await asyncio.sleep(0.01)
        await rig.recorder.writer.flush()
        assert (await handle.status()).state is JobState.TIMED_OUT
        for _ in range(20):
            await asyncio.sleep(0)  # the broker's delay timer of the retry copy starts
        rig.clock.advance(5)
        await rig.drain()
    record = await handle.status()
    assert record.state is JobState.DEAD_LETTERED and record.reason == "exhausted"
    assert [a.outcome for a in record.attempts] == ["timeout", "timeout"]


class Report(BaseModel):
    pages: int
    title: str


class Score(BaseModel):
    value: float


class _Opaque:
    pass


@pytest.mark.parametrize(("returned", "kept"), [
    (Report(pages=3, title="q3"), {"pages": 3, "title": "q3"}),  # was dropped as "not JSON"
    ([Report(pages=1, title="a"), {"n": 2}], [{"pages": 1, "title": "a"}, {"n": 2}]),
    (_Opaque(), None),  # no JSON for it: the job succeeds, no result is kept
    ({"when": {1, 2}}, None),
    ({"ratio": float("nan")}, None),  # orjson wrote null: read back, it was another value
    ([1.0, [float("-inf")]], None),
    (Score(value=float("inf")), None),
    ({"ratio": 0.5, "none": None}, {"ratio": 0.5, "none": None}),  # a null of its own is kept
], ids=["a model", "models in a list", "an object", "a set", "NaN", "infinity nested", "infinity in a model",
        "a real null"])
async def test_a_result_is_kept_as_json_a_model_included_and_one_without_json_is_dropped_not_fatal(
    rig: Rig, jobs: JobRegistry, returned: object, kept: object
) -> None:
    @jobs.job("t.report")
    async def report(payload: Job, ctx: JobContext) -> object:
        return returned

    await rig.ready()
    handle = await rig.producer.publish("t.report", Job(n=1))
    async with rig.worker:
        await rig.drain()
    assert rig.worker.counts["succeeded"] == 1
    assert await handle.result(timeout=5) == kept
    assert (await handle.status()).state is JobState.SUCCEEDED


async def test_a_sync_handlers_nan_result_is_not_kept_either(rig: Rig, jobs: JobRegistry) -> None:
    # A sync handler's return value reaches the same recording from its thread.
    @jobs.job("t.ratio")
    def ratio(payload: Job, ctx: JobContext) -> dict[str, float]:
        return {"ratio": float("nan")}

    await rig.ready()
    handle = await rig.producer.publish("t.ratio", Job(n=1))
    async with rig.worker:
        await rig.drain()
    assert rig.worker.counts["succeeded"] == 1
    assert await handle.result(timeout=5) is None
    assert (await handle.status()).result is None


async def test_a_result_over_the_cap_goes_to_the_payload_store_by_reference() -> None:
    from conveyor.common.payload_store.memory import MemoryPayloadStore
    from conveyor.schemas.envelope import PayloadReference

    jobs = JobRegistry()

    @jobs.job("t.big")
    async def big(payload: Job, ctx: JobContext) -> dict[str, str]:
        return {"text": "x" * 70_000}  # over the 64 KiB inline cap

    broker, store, blobs = MemoryBroker(), MemoryJobStateStore(), MemoryPayloadStore()
    transport = MemoryTransport(broker)
    await transport.connect()
    worker = Worker(transport, jobs, job_state=store, payload_store=blobs, config=WorkerConfig(metrics_interval=0))
    async with Producer.for_registry(MemoryTransport(broker), jobs, job_state=store) as producer, worker:
        handle = await producer.publish("t.big", Job(n=1))
        await broker.join(DEFAULT_QUEUE)
    record = await handle.status()  # the worker's shutdown flushed its writer
    assert record.state is JobState.SUCCEEDED and record.result is None and record.result_ref is not None
    reference = PayloadReference.model_validate_json(record.result_ref)
    stored = b"".join([chunk async for chunk in blobs.get(reference)])
    assert orjson.loads(stored) == {"text": "x" * 70_000}
    assert await handle.result(timeout=5) is None  # inline results only; the reference says where


def test_a_producer_and_a_worker_may_share_one_metrics_registry() -> None:
    broker, store = MemoryBroker(), MemoryJobStateStore()
    jobs = JobRegistry()
    worker = Worker(MemoryTransport(broker), jobs, job_state=store)
    producer = Producer(MemoryTransport(broker), job_state=store, metrics=worker.metrics, allow_unregistered=True)
    recorder = next(m for m in producer._middlewares if hasattr(m, "writer"))
    recorder.writer.record(_t_for_registry_test())
    assert worker.metrics.registry.get_sample_value("conveyor_job_state_pending", {"role": "producer"}) == 1
    assert worker.metrics.registry.get_sample_value("conveyor_job_state_pending", {"role": "worker"}) == 0


def _t_for_registry_test() -> Transition:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return Transition(job_id="j", state=JobState.QUEUED, at=now, generation=1, created_at=now)


async def test_a_worker_killed_between_its_ack_and_the_settled_hooks_leaves_the_job_succeeded(
    rig: Rig, jobs: JobRegistry
) -> None:
    """Found by the fault suite (a worker ``kill -9`` mid-batch): the ack went out, the process
    died before the settled hooks ran, so the broker never redelivers and the store was left at
    ``running`` -- then ``retrying`` for ever once its attempt was reconciled. The success is
    recorded (spilled) before the ack now; here the hooks never run, as after such a kill."""

    @jobs.job("t.quick")
    async def quick(payload: Job, ctx: JobContext) -> dict[str, int]:
        return {"n": payload.n}

    await rig.ready()
    handle = await rig.producer.publish("t.quick", Job(n=3))
    rig.worker._settled_hooks = []  # the kill: nothing after the ack runs
    async with rig.worker:
        await rig.drain()
        rig.clock.advance(3600)  # far past the lease: the reconciler finds no live attempt
        await rig.recorder._reconcile()
    record = await handle.status()
    assert record.state is JobState.SUCCEEDED and record.result == orjson.dumps({"n": 3}).decode()
    assert [a.outcome for a in record.attempts] == ["succeeded"]


async def test_a_worker_killed_between_a_dead_letters_ack_and_the_settled_hooks_leaves_it_dead_lettered(
    rig: Rig, jobs: JobRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dead-letter twin of the test above (seen by the fault suite): the dead letter is
    recorded once its copy is confirmed and before the original is acked; here whatever would
    run after that ack is dropped, as a ``kill -9`` there would."""
    from conveyor.common.transport.memory import _MemoryDelivery

    @jobs.job("t.doomed", retry=RetryPolicy(max_attempts=1))
    async def doomed(payload: Job, ctx: JobContext) -> None:
        raise RuntimeError("fails every time")

    await rig.ready()
    acked: list[bool] = []
    ack = _MemoryDelivery._ack

    async def ack_then_die(self: _MemoryDelivery) -> None:
        await ack(self)
        acked.append(True)

    monkeypatch.setattr(_MemoryDelivery, "_ack", ack_then_die)
    hooks = rig.worker._run_settled_hooks

    def dead_after_the_ack(outcome: Outcome, action: SettleAction) -> None:
        if not acked:
            hooks(outcome, action)

    monkeypatch.setattr(rig.worker, "_run_settled_hooks", dead_after_the_ack)
    handle = await rig.producer.publish("t.doomed", Job(n=1))
    async with rig.worker:
        await rig.drain()
        rig.clock.advance(3600)
        await rig.recorder._reconcile()
    assert acked and rig.worker.counts["dead_lettered"] == 1
    record = await handle.status()
    assert record.state is JobState.DEAD_LETTERED and record.dead_letter_id is not None
    assert [a.outcome for a in record.attempts] == ["failed"]


class _DeadLink(ConsumerHandle):
    """A control subscription whose channel close never gets its reply (a cut connection)."""

    attached = False

    async def cancel(self) -> None:
        await asyncio.Event().wait()


async def test_shutdown_is_bounded_when_the_control_subscription_never_closes() -> None:
    """Found by the fault suite (a TCP cut, then SIGTERM): the worker's drain hung on closing
    the cancel channel's subscription until it was killed. Shutdown now gives up on it."""
    broker = MemoryBroker(FakeClock())
    transport = MemoryTransport(broker)
    await transport.connect()

    async def subscribe(channel: str, handler: object) -> ConsumerHandle:
        return _DeadLink()

    transport.subscribe = subscribe  # type: ignore[assignment,method-assign]
    recorder = JobStateMiddleware(MemoryJobStateStore(), worker_id="w", control=transport,
                                  config=JobStateConfig(heartbeat=0, reconcile_every=0, cancel_poll=0,
                                                        close_timeout=0.01))
    await recorder.startup()
    await asyncio.wait_for(recorder.shutdown(), 30)  # hung for ever before the fix


async def test_a_copy_written_by_a_worker_whose_clock_is_behind_is_still_a_later_generation() -> None:
    # The worker's clock 4 s behind the producer's: the failed attempt's finish time came before
    # the job's created_at, so the DLQ replay (and a retry copy) had an *earlier* generation than
    # the message it copied. Its states were never applied: a replay that succeeded stayed
    # dead_lettered, and handle.result() raised JobNotSucceeded.
    from datetime import timedelta

    from conveyor import MemoryJobStateStore, MemoryTransport, Producer
    from conveyor.common.clock import FakeClock
    from conveyor.common.job_state.states import Transition
    from conveyor.consumer.middleware.job_state import generation_of_envelope
    from conveyor.schemas.envelope import new_attempt_record

    clock = FakeClock()
    original = Producer(MemoryTransport(), allow_unregistered=True, clock=clock).build_envelope("t.x", {"n": 1})
    behind = original.created_at - timedelta(seconds=4)
    failed = new_attempt_record(attempt=1, worker_id="w", started_at=behind, finished_at=behind, outcome="failed",
                                error_type="PermanentError", error_message="no")
    replayed = original.with_history(failed)
    assert generation_of_envelope(replayed) > generation_of_envelope(original)
    again = replayed.with_history(failed)  # a second copy finished at the same skewed instant
    assert generation_of_envelope(again) > generation_of_envelope(replayed)
    store = MemoryJobStateStore(clock=clock)
    await store.apply([Transition("j", JobState.DEAD_LETTERED, clock.now(), generation_of_envelope(original)),
                       Transition("j", JobState.SUCCEEDED, clock.now(), generation_of_envelope(replayed))])
    record = await store.get("j")
    assert record is not None and record.state is JobState.SUCCEEDED
