"""The idempotency middleware in a real Worker on the in-memory broker: duplicates become
no-ops, conflicts are dead-lettered, effects committed with the key survive a crash before
the ack exactly once, and checkpoints carry a job's progress across a retry."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.clock import FakeClock
from conveyor.common.codec import decode_dead_letter
from conveyor.common.errors import ConfigurationError, RetryableError
from conveyor.common.idempotency import MemoryProcessedKeyStore, SQLiteProcessedKeyStore
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.middleware.idempotency import (
    IdempotencyMiddleware,
    JobIdempotency,
    idempotency_of,
    job_transaction,
    last_checkpoint,
    payload_hash,
    save_checkpoint,
)
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from tests.conftest import wait_until

QUIET = WorkerConfig(metrics_interval=0)


class Order(BaseModel):
    order_id: str
    amount: int


class Batch(BaseModel):
    rows: int


class Tagged(BaseModel):
    tags: dict[str, int]


def helper(ctx: JobContext) -> JobIdempotency:
    found = idempotency_of(ctx)
    assert found is not None, "the middleware puts the helper in ctx.state['idempotency']"
    return found


async def connected(broker: MemoryBroker) -> MemoryTransport:
    transport = MemoryTransport(broker)
    await transport.connect()
    return transport


async def settle_loop(rounds: int = 50) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def dead_letters(broker: MemoryBroker) -> list:
    reader = await connected(broker)
    records = []
    while (delivery := await reader.get(DEFAULT_QUEUE + ".dlq")) is not None:
        records.append(decode_dead_letter(delivery.body))
        await delivery.ack()
    await reader.close()
    return records


async def create_charges_table(db: Path) -> None:
    async with SQLiteProcessedKeyStore(db) as store, store.transaction() as tx:
        await tx.connection.execute("CREATE TABLE charges (order_id TEXT NOT NULL, amount INTEGER NOT NULL)")


async def count_charges(db: Path, order_id: str) -> int:
    async with SQLiteProcessedKeyStore(db) as store, store.transaction() as tx:
        async with tx.connection.execute("SELECT count(*) FROM charges WHERE order_id = ?", (order_id,)) as cursor:
            row = await cursor.fetchone()
    return int(row[0])


async def test_a_duplicate_publish_with_the_same_idempotency_key_runs_the_handler_once() -> None:
    broker = MemoryBroker()
    store = MemoryProcessedKeyStore()
    charged: list[str] = []
    refunded: list[str] = []
    jobs = JobRegistry()

    @jobs.job("orders.charge")
    async def charge(payload: Order, ctx: JobContext) -> None:
        charged.append(ctx.job_id)

    @jobs.job("orders.refund")
    async def refund(payload: Order, ctx: JobContext) -> None:
        refunded.append(ctx.job_id)

    worker = Worker(await connected(broker), jobs, config=QUIET, middlewares=[IdempotencyMiddleware(store)])
    async with Producer.for_registry(await connected(broker), jobs) as producer, worker:
        order = Order(order_id="o-1", amount=100)
        first = await producer.publish("orders.charge", order, idempotency_key="order-1")
        again = await producer.publish("orders.charge", order, idempotency_key="order-1")  # e.g. after a lost confirm
        await producer.publish("orders.refund", order, idempotency_key="order-1")  # same key, other job type
        await broker.join(DEFAULT_QUEUE)
        later = await producer.publish("orders.charge", order, idempotency_key="order-1")
        await broker.join(DEFAULT_QUEUE)
    assert charged == [first.job_id], "the handler ran once for three publishes of one key"
    assert len(refunded) == 1, "keys are scoped by job type"
    assert worker.counts["succeeded"] == 4, "a skipped duplicate counts as succeeded (and is acked)"
    assert broker.depth(DEFAULT_QUEUE) == 0 and broker.in_flight(DEFAULT_QUEUE) == 0
    record = await store.get("orders.charge:order-1")
    assert record is not None and record.job_id == first.job_id
    assert record.payload_hash == payload_hash(order)
    assert {again.job_id, later.job_id}.isdisjoint(charged)


async def test_the_same_key_with_a_different_payload_is_dead_lettered_as_a_conflict() -> None:
    broker = MemoryBroker()
    store = MemoryProcessedKeyStore()
    charged: list[int] = []
    jobs = JobRegistry()

    @jobs.job("orders.charge", retry=RetryPolicy(max_attempts=5, base=0.01, cap=0.01))
    async def charge(payload: Order, ctx: JobContext) -> None:
        charged.append(payload.amount)

    worker = Worker(await connected(broker), jobs, config=QUIET, middlewares=[IdempotencyMiddleware(store)])
    async with Producer.for_registry(await connected(broker), jobs) as producer, worker:
        await producer.publish("orders.charge", Order(order_id="o-1", amount=100), idempotency_key="order-1")
        await broker.join(DEFAULT_QUEUE)
        conflicting = await producer.publish("orders.charge", Order(order_id="o-1", amount=999), idempotency_key="order-1")
        await broker.join(DEFAULT_QUEUE)
    assert charged == [100], "the conflicting payload never reached the handler"
    [letter] = await dead_letters(broker)
    assert letter.job_id == conflicting.job_id
    assert (letter.reason, letter.error_type) == ("idempotency_conflict", "IdempotencyConflict")
    assert letter.attempt == 1, "a conflict is not retried"
    assert worker.counts["dead_lettered"] == 1 and worker.counts["retried"] == 0


async def test_an_effect_committed_with_the_key_survives_a_crash_before_the_ack_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    await create_charges_table(db)
    broker = MemoryBroker()
    runs: list[tuple[str, int]] = []
    crash_after_commit: list[MemoryTransport] = []
    jobs = JobRegistry()

    @jobs.job("orders.charge")
    async def charge(payload: Order, ctx: JobContext) -> None:
        runs.append((ctx.job_id, ctx.attempt))
        async with job_transaction(ctx) as tx:  # the key is recorded in this transaction
            await tx.connection.execute(
                "INSERT INTO charges (order_id, amount) VALUES (?, ?)", (payload.order_id, payload.amount)
            )
        if crash_after_commit:
            await crash_after_commit.pop().close()  # the process dies: committed, never acked

    first_process = await connected(broker)
    crash_after_commit.append(first_process)
    worker = Worker(first_process, jobs, config=QUIET, middlewares=[IdempotencyMiddleware(SQLiteProcessedKeyStore(db))])
    async with Producer.for_registry(await connected(broker), jobs) as producer:
        await worker.start()
        receipt = await producer.publish("orders.charge", Order(order_id="o-7", amount=250), idempotency_key="o-7")
        await wait_until(lambda: broker.depth(DEFAULT_QUEUE) == 1 and worker.in_flight == 0, what="the unacked message back")
        await worker.stop()
    assert worker.counts["succeeded"] == 0, "the ack never happened"
    assert await count_charges(db, "o-7") == 1

    # The restarted process: a new connection and a new store on the same database file.
    restarted = Worker(
        await connected(broker), jobs, config=QUIET, middlewares=[IdempotencyMiddleware(SQLiteProcessedKeyStore(db))]
    )
    async with restarted:
        await broker.join(DEFAULT_QUEUE)
    assert runs == [(receipt.job_id, 1)], "the redelivery did not run the handler again"
    assert restarted.counts["succeeded"] == 1
    assert await count_charges(db, "o-7") == 1, "the effect exists exactly once"


async def test_concurrent_duplicates_on_two_workers_write_the_effect_once(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    await create_charges_table(db)
    broker = MemoryBroker()
    entered: list[str] = []
    jobs = JobRegistry()

    @jobs.job("orders.charge")
    async def charge(payload: Order, ctx: JobContext) -> None:
        entered.append(ctx.worker_id)
        async with helper(ctx).transaction() as tx:
            await tx.connection.execute("INSERT INTO charges (order_id, amount) VALUES (?, ?)", (payload.order_id, 1))
            await asyncio.sleep(0.2)  # hold the key while the duplicate arrives at the other worker

    workers = [
        Worker(
            await connected(broker),
            jobs,
            config=WorkerConfig(metrics_interval=0, worker_id=f"w{n}"),
            middlewares=[IdempotencyMiddleware(SQLiteProcessedKeyStore(db, busy_timeout=10))],
        )
        for n in range(2)
    ]
    async with Producer.for_registry(await connected(broker), jobs) as producer, workers[0], workers[1]:
        for _ in range(2):
            await producer.publish("orders.charge", Order(order_id="o-9", amount=1), idempotency_key="o-9")
        await broker.join(DEFAULT_QUEUE)
    assert sorted(entered) == ["w0", "w1"], "each worker got one copy at the same time"
    assert await count_charges(db, "o-9") == 1
    assert sum(w.counts["succeeded"] for w in workers) == 2


async def test_a_retry_resumes_from_the_last_checkpoint() -> None:
    clock = FakeClock()
    broker = MemoryBroker(clock)
    store = MemoryProcessedKeyStore(clock=clock)
    imported: list[int] = []
    resumed_from: list[int] = []
    jobs = JobRegistry()

    @jobs.job("batch.import", retry=RetryPolicy(max_attempts=3, base=1, jitter=0))
    async def import_rows(payload: Batch, ctx: JobContext) -> None:
        start = (last_checkpoint(ctx) or {}).get("next", 0)  # what ctx.last_checkpoint will return
        resumed_from.append(start)
        for row in range(start, payload.rows):
            if row == 3 and ctx.attempt == 1:
                raise RetryableError("database hiccup")
            imported.append(row)
            await save_checkpoint(ctx, {"next": row + 1})  # what ctx.checkpoint(...) will do

    worker = Worker(
        await connected(broker), jobs, config=QUIET, clock=clock, rng=random.Random(0),
        middlewares=[IdempotencyMiddleware(store)],
    )
    async with Producer.for_registry(await connected(broker), jobs, clock=clock) as producer, worker:
        receipt = await producer.publish("batch.import", Batch(rows=6))
        await settle_loop()
        assert imported == [0, 1, 2] and worker.counts["retried"] == 1
        assert await store.load_checkpoint(receipt.job_id) == {"next": 3}
        clock.advance(1.5)
        await settle_loop()
    assert resumed_from == [0, 3]
    assert imported == [0, 1, 2, 3, 4, 5], "every row once, none repeated"
    assert worker.counts["succeeded"] == 1
    assert await store.load_checkpoint(receipt.job_id) is None, "a success clears the checkpoint"


async def test_a_sync_handler_checkpoints_from_its_thread() -> None:
    broker = MemoryBroker()
    store = MemoryProcessedKeyStore()
    jobs = JobRegistry()

    @jobs.job("batch.sync", retry=RetryPolicy(max_attempts=1))
    def work(payload: Batch, ctx: JobContext) -> None:
        helper(ctx).checkpoint_blocking({"next": payload.rows})
        raise ValueError("stop here, keep the checkpoint")

    worker = Worker(await connected(broker), jobs, config=QUIET, middlewares=[IdempotencyMiddleware(store)])
    async with Producer.for_registry(await connected(broker), jobs) as producer, worker:
        receipt = await producer.publish("batch.sync", Batch(rows=4))
        await broker.join(DEFAULT_QUEUE)
    assert await store.load_checkpoint(receipt.job_id) == {"next": 4}


async def test_jobs_can_opt_out_and_unknown_options_still_fail() -> None:
    broker = MemoryBroker()
    store = MemoryProcessedKeyStore()
    runs: list[str] = []
    jobs = JobRegistry()

    @jobs.job("metrics.ping", idempotent=False)
    async def ping(payload: Order, ctx: JobContext) -> None:
        runs.append(ctx.job_id)
        assert idempotency_of(ctx) is None and last_checkpoint(ctx) is None
        with pytest.raises(ConfigurationError, match="idempotency middleware"):
            await save_checkpoint(ctx, {"n": 1})

    worker = Worker(await connected(broker), jobs, config=QUIET, middlewares=[IdempotencyMiddleware(store)])
    async with Producer.for_registry(await connected(broker), jobs) as producer, worker:
        for _ in range(2):
            await producer.publish("metrics.ping", Order(order_id="o", amount=1), idempotency_key="same")
        await broker.join(DEFAULT_QUEUE)
    assert len(runs) == 2 and store.records == {}
    with pytest.raises(ConfigurationError, match="idempotent"):
        Worker(await connected(broker), jobs)  # nobody owns the option without the middleware


async def test_a_store_outage_before_the_handler_retries_without_running_it() -> None:
    broker = MemoryBroker()
    store = MemoryProcessedKeyStore()
    store.fail_with = ConnectionError("database down")
    runs: list[int] = []
    jobs = JobRegistry()

    @jobs.job("orders.charge", retry=RetryPolicy(max_attempts=1))
    async def charge(payload: Order, ctx: JobContext) -> None:
        runs.append(ctx.attempt)

    worker = Worker(await connected(broker), jobs, config=QUIET, middlewares=[IdempotencyMiddleware(store)])
    async with Producer.for_registry(await connected(broker), jobs) as producer, worker:
        await producer.publish("orders.charge", Order(order_id="o", amount=1))
        await broker.join(DEFAULT_QUEUE)
    assert runs == []
    [letter] = await dead_letters(broker)
    assert letter.error_type == "IdempotencyStoreUnavailable"


async def test_a_failure_to_record_after_success_still_acks_the_job() -> None:
    broker = MemoryBroker()

    class RecordFails(MemoryProcessedKeyStore):
        async def record_success(self, key: str, payload_hash: str, job_id: str) -> bool:
            raise ConnectionError("lost the database after the handler ran")

    jobs = JobRegistry()

    @jobs.job("orders.charge")
    async def charge(payload: Order, ctx: JobContext) -> None:
        return None

    worker = Worker(await connected(broker), jobs, config=QUIET, middlewares=[IdempotencyMiddleware(RecordFails())])
    async with Producer.for_registry(await connected(broker), jobs) as producer, worker:
        await producer.publish("orders.charge", Order(order_id="o", amount=1))
        await broker.join(DEFAULT_QUEUE)
    assert worker.counts["succeeded"] == 1, "re-running a job that succeeded is worse than a missing record"


def test_the_payload_hash_is_canonical() -> None:
    assert payload_hash(Tagged(tags={"a": 1, "b": 2})) == payload_hash(Tagged(tags={"b": 2, "a": 1}))
    assert payload_hash(Tagged(tags={"a": 1})) != payload_hash(Tagged(tags={"a": 2}))
    assert len(payload_hash(Batch(rows=1))) == 64
