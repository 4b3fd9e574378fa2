"""The relay against the real PostgreSQL: committed rows published with confirms and marked sent,
racing relays, LISTEN/NOTIFY, ordering per key, refusals, outages, clean-up, metrics."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import asyncpg
import psycopg
import pytest
from pydantic import BaseModel

from conveyor.common.errors import TransportError
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.payload_store.base import PayloadStore
from conveyor.common.payload_store.filesystem import FileSystemPayloadStore
from conveyor.common.payload_store.s3 import S3PayloadStore
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.factory import transport_from_url
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.ops.dead_letters import DeadLetters
from conveyor.consumer.worker import Worker
from conveyor.producer.outbox import Outbox, OutboxRelay, RelayConfig, failed_rows, requeue_failed
from conveyor.producer.producer import Producer
from conveyor.schemas.envelope import Envelope, PayloadReference
from tests.support.ports import free_port
from tests.unit.producer.test_producer import jobs


class Recording(MemoryTransport):
    """Memory transport that records every publish (job id, queue) and can be slow or failing."""

    def __init__(self, broker: MemoryBroker, log: list[tuple[str, str]], *, jitter: float = 0.0,
                 failing: list[int] | None = None) -> None:
        super().__init__(broker)
        self.log, self.jitter, self.failing = log, jitter, failing

    async def publish(self, queue: str, message: OutgoingMessage) -> None:
        if self.failing and self.failing[0] > 0:
            self.failing[0] -= 1
            raise TransportError("connection reset by peer (test)")
        if self.jitter:
            await asyncio.sleep(random.uniform(0, self.jitter))
        await super().publish(queue, message)
        self.log.append((message.message_id, queue))


def _add(database_url: str, table: str, count: int, *, key: str | None = None, **options: object) -> list[str]:
    outbox = Outbox(jobs=jobs(), table=table)
    with psycopg.connect(database_url) as connection, connection.transaction():
        return [outbox.add(connection, "email.send", {"to": f"{n}@example.com"}, ordering_key=key, **options)
                for n in range(count)]


def _relay(database_url: str, table: str, transport: MemoryTransport, **config: object) -> OutboxRelay:
    return OutboxRelay(database_url, lambda: Producer(transport, allow_unregistered=True),
                       config=RelayConfig(table=table, **config))  # type: ignore[arg-type]


async def _race(relays: list[OutboxRelay], rounds: int = 4) -> None:
    """Run the relays side by side until none finds a row (a relay that found nothing while the
    others held every row tries again in the next round)."""
    for relay in relays:
        await relay.start()
    try:
        async def drain(relay: OutboxRelay) -> None:
            while await relay.relay_once():
                pass

        for _ in range(rounds):
            await asyncio.gather(*(drain(r) for r in relays))
    finally:
        for relay in relays:
            await relay.close()


@pytest.fixture(params=["rabbitmq", "pulsar"])
def broker_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue({"rabbitmq": "amqp_url", "pulsar": "pulsar_url"}[request.param]))


async def test_committed_rows_are_published_once_with_confirms_and_marked_sent(
        database_url: str, table: str, broker_url: str, queue_name: str, db: asyncpg.Connection) -> None:
    committed = _add(database_url, table, 30, queue=queue_name)
    outbox = Outbox(jobs=jobs(), table=table)
    with psycopg.connect(database_url) as connection:
        with connection.transaction():
            rolled_back = outbox.add(connection, "email.send", {"to": "x@example.com"}, queue=queue_name)
            raise psycopg.Rollback()  # leaves the block, rolled back
    relay = OutboxRelay(database_url, lambda: Producer(transport_from_url(broker_url), allow_unregistered=True),
                        config=RelayConfig(table=table))
    async with relay:
        assert await relay.relay_once() == 30
        assert await relay.relay_once() == 0
        assert await relay.sample() == 0
    received: list[str] = []
    async with transport_from_url(broker_url) as transport:
        for _ in range(300):
            delivery = await transport.get(queue_name)
            if delivery is None:
                if len(received) >= 30:
                    break
                continue
            received.append(delivery.message_id)
            await delivery.ack()
        await transport.delete(queue_name)
    assert sorted(received) == sorted(committed) and rolled_back not in received
    unsent = await db.fetchval(f"SELECT count(*) FROM {table} WHERE sent_at IS NULL")
    assert unsent == 0


async def test_racing_relays_never_publish_a_row_twice(database_url: str, table: str) -> None:
    committed = _add(database_url, table, 400)
    log: list[tuple[str, str]] = []
    broker = MemoryBroker()
    relays = [_relay(database_url, table, Recording(broker, log, jitter=0.003), batch_size=25) for _ in range(4)]
    await _race(relays)
    counts = Counter(job_id for job_id, _ in log)
    assert set(counts) == set(committed)
    assert max(counts.values()) == 1, "a row was published by two relays"


async def test_notify_wakes_the_relay_long_before_its_poll(database_url: str, table: str,
                                                           db: asyncpg.Connection) -> None:
    log: list[tuple[str, str]] = []
    relay = _relay(database_url, table, Recording(MemoryBroker(), log), poll_interval=600)
    stop = asyncio.Event()
    sleeping = asyncio.Event()
    sleep = relay._sleep

    async def watched_sleep(seconds: float, until: asyncio.Event) -> None:
        sleeping.set()
        await sleep(seconds, until)

    relay._sleep = watched_sleep  # type: ignore[method-assign]
    async with relay:
        task = asyncio.create_task(relay.run(stop))
        # Only once the relay found nothing and sleeps on LISTEN: a row committed before its first
        # batch would be published by that batch, NOTIFY or not, and the test could not fail.
        await asyncio.wait_for(sleeping.wait(), 30)
        assert not log
        [job_id] = await asyncio.to_thread(_add, database_url, table, 1)
        deadline = time.monotonic() + 20
        while not log and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 30)
    assert log == [(job_id, "conveyor.default")], "the NOTIFY at commit did not wake the relay (poll is 600 s)"


async def test_rows_of_one_key_are_published_in_order_across_racing_relays(database_url: str, table: str) -> None:
    keys = ["alice", "bob", "carol"]
    order: dict[str, list[str]] = {k: [] for k in keys}
    for round_ in range(20):
        for key in keys:
            order[key] += _add(database_url, table, 1 if round_ % 2 else 2, key=key)
    unkeyed = _add(database_url, table, 30)
    log: list[tuple[str, str]] = []
    broker = MemoryBroker()
    relays = [_relay(database_url, table, Recording(broker, log, jitter=0.005), batch_size=7) for _ in range(3)]
    await _race(relays)
    published = [job_id for job_id, _ in log]
    assert sorted(published) == sorted([*unkeyed, *(j for ids in order.values() for j in ids)])
    for key, ids in order.items():
        assert [j for j in published if j in set(ids)] == ids, f"key {key} out of order"


async def test_a_refused_row_is_marked_failed_and_holds_back_nothing(database_url: str, table: str,
                                                                     db: asyncpg.Connection) -> None:
    good = _add(database_url, table, 3)
    log: list[tuple[str, str]] = []
    broker = MemoryBroker()
    transport = Recording(broker, log)
    # A producer that does not declare queues: the memory broker refuses the unknown queue
    # (as RabbitMQ returns an unroutable message): PublishNotConfirmed, for good.
    refused = _add(database_url, table, 1, queue="nowhere")
    broker.declare("conveyor.default")
    relay = OutboxRelay(database_url, lambda: Producer(transport, allow_unregistered=True, declare_queues=False),
                        config=RelayConfig(table=table))
    async with relay:
        assert await relay.relay_once() == 3
        assert await relay.relay_once() == 0
        await relay.sample()
    row = await db.fetchrow(f"SELECT failed_at, last_error, sent_at FROM {table} WHERE job_id = $1", refused[0])
    assert row["failed_at"] is not None and row["sent_at"] is None and "PublishNotConfirmed" in row["last_error"]
    assert sorted(j for j, _ in log) == sorted(good)
    assert relay.metrics.failed_rows._value.get() == 1
    assert relay.metrics.backlog._value.get() == 0


async def test_a_failed_row_requeued_once_its_cause_is_fixed_is_published_and_requeue_again_does_nothing(
        database_url: str, table: str, db: asyncpg.Connection) -> None:
    refused = _add(database_url, table, 2, queue="declared.later")
    log: list[tuple[str, str]] = []
    broker = MemoryBroker()
    transport = Recording(broker, log)
    relay = OutboxRelay(database_url, lambda: Producer(transport, allow_unregistered=True, declare_queues=False),
                        config=RelayConfig(table=table))
    async with relay:
        await relay.relay_once()
        failed = await failed_rows(db, table)
        assert sorted(r.job_id for r in failed) == sorted(refused) and log == []
        assert all("PublishNotConfirmed" in r.last_error for r in failed)
        broker.declare("declared.later")  # the operator fixes the cause
        assert await requeue_failed(db, table, ids=[failed[0].id]) == 1
        assert await relay.relay_once() == 1
        assert [j for j, _ in log] == [failed[0].job_id]
        assert await requeue_failed(db, table) == 1  # the other one
        assert [await requeue_failed(db, table) for _ in range(100)] == [0] * 100  # an operator's loop
        assert await relay.relay_once() == 1
        assert await relay.relay_once() == 0
    assert sorted(j for j, _ in log) == sorted(refused)  # each published once, with the id it was given
    assert await failed_rows(db, table) == []
    assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE sent_at IS NULL") == 0


async def test_a_broker_outage_leaves_rows_unsent_until_it_ends(database_url: str, table: str,
                                                                db: asyncpg.Connection) -> None:
    committed = _add(database_url, table, 5, key="k")
    committed += _add(database_url, table, 5)
    log: list[tuple[str, str]] = []
    failing = [10_000]  # every publish fails until the outage ends
    transport = Recording(MemoryBroker(), log, failing=failing)
    relay = OutboxRelay(database_url, lambda: Producer(transport, allow_unregistered=True, publish_tries=1),
                        config=RelayConfig(table=table))
    async with relay:
        for _ in range(3):
            assert await relay.relay_once() == 0
        assert await relay.sample() == 10
        attempts = await db.fetchval(f"SELECT max(attempts) FROM {table}")
        assert attempts == 3
        keyed_tries = await db.fetchval(f"SELECT count(*) FROM {table} WHERE ordering_key = 'k' AND attempts > 0")
        assert keyed_tries == 1, "after a failure, the key's later rows are not tried (never overtaken)"
        failing[0] = 0
        while await relay.relay_once():
            pass
    assert sorted(j for j, _ in log) == sorted(committed)
    assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE sent_at IS NULL OR failed_at IS NOT NULL") == 0


async def test_clean_up_deletes_only_sent_rows_past_retention(database_url: str, table: str,
                                                              db: asyncpg.Connection) -> None:
    sent = _add(database_url, table, 1200)
    relay = _relay(database_url, table, Recording(MemoryBroker(), []), retention=timedelta(0), batch_size=500)
    async with relay:
        while await relay.relay_once():
            pass
        unsent = _add(database_url, table, 2)
        assert await relay.clean_up() == len(sent)
        assert await relay.clean_up() == 0
    remaining = {r["job_id"] for r in await db.fetch(f"SELECT job_id FROM {table}")}
    assert remaining == set(unsent)


async def test_sample_reports_backlog_and_oldest_unsent_age(database_url: str, table: str,
                                                            db: asyncpg.Connection) -> None:
    _add(database_url, table, 4)
    await db.execute(f"UPDATE {table} SET created_at = clock_timestamp() - interval '90 seconds'"
                     f" WHERE id = (SELECT min(id) FROM {table})")
    relay = _relay(database_url, table, Recording(MemoryBroker(), []))
    async with relay:
        assert await relay.sample() == 4
    assert 90 <= relay.metrics.oldest_unsent._value.get() < 200
    text = relay.metrics.render().decode()
    assert "conveyor_outbox_backlog 4.0" in text and "conveyor_outbox_oldest_unsent_seconds" in text


async def test_the_relay_survives_its_database_sessions_being_killed(database_url: str, table: str,
                                                                     db: asyncpg.Connection) -> None:
    log: list[tuple[str, str]] = []
    relay = _relay(database_url, table, Recording(MemoryBroker(), log), poll_interval=0.5)
    stop = asyncio.Event()

    async def sent() -> int:
        return int(await db.fetchval(f"SELECT count(*) FROM {table} WHERE sent_at IS NOT NULL"))

    async def wait_for(count: int) -> None:
        deadline = time.monotonic() + 30
        while await sent() < count:
            assert time.monotonic() < deadline, f"{await sent()} of {count} rows sent"
            await asyncio.sleep(0.05)

    async with relay:
        task = asyncio.create_task(relay.run(stop))
        first = await asyncio.to_thread(_add, database_url, table, 5)
        await wait_for(5)
        # By pid, this relay's own: other relays (other test runs on the shared server) share its name.
        pids = [relay._db.get_server_pid(), relay._listener.get_server_pid()]
        killed = await db.fetchval("SELECT count(pg_terminate_backend(pid)) FROM unnest($1::int[]) AS pid", pids)
        assert killed == 2, "the relay's work and LISTEN sessions"
        second = await asyncio.to_thread(_add, database_url, table, 5)
        await wait_for(10)
        stop.set()
        await asyncio.wait_for(task, 30)
    assert sorted(j for j, _ in log) == sorted(first + second)


class Hangs(MemoryTransport):
    async def publish(self, queue: str, message: OutgoingMessage) -> None:
        await asyncio.sleep(3600)  # a confirm that never comes


async def test_a_stop_cancels_a_batch_stuck_past_the_grace_and_leaves_its_rows_unsent(
        database_url: str, table: str, db: asyncpg.Connection) -> None:
    _add(database_url, table, 3)
    relay = OutboxRelay(database_url, lambda: Producer(Hangs(MemoryBroker()), allow_unregistered=True,
                                                       confirm_timeout=3600),
                        config=RelayConfig(table=table, shutdown_grace=0.3))
    stop = asyncio.Event()
    async with relay:
        task = asyncio.create_task(relay.run(stop))
        deadline = time.monotonic() + 10
        pid = relay._db.get_server_pid()  # this relay's session: others on the shared server share its name
        while not await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1"
                                    " AND state = 'idle in transaction'", pid):
            assert time.monotonic() < deadline, "the relay never started its batch"
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 10)  # returns after the grace, not after the hour
    assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE sent_at IS NULL") == 3
    # The rows are free again: not locked by a transaction left open.
    async with db.transaction():
        assert len(await db.fetch(f"SELECT id FROM {table} FOR UPDATE SKIP LOCKED")) == 3


class Bodies(MemoryTransport):
    def __init__(self, broker: MemoryBroker, bodies: list[bytes]) -> None:
        super().__init__(broker)
        self.bodies = bodies

    async def publish(self, queue: str, message: OutgoingMessage) -> None:
        await super().publish(queue, message)
        self.bodies.append(bytes(message.body))


async def test_a_large_row_goes_out_as_a_claim_check_when_the_relay_has_a_store(
        database_url: str, table: str, tmp_path: Path) -> None:
    outbox = Outbox(jobs=jobs(), table=table, max_message_bytes=None)
    with psycopg.connect(database_url) as connection, connection.transaction():
        big = outbox.add(connection, "email.send", {"to": "x" * 300_000})
        small = outbox.add(connection, "email.send", {"to": "y"})
    bodies: list[bytes] = []
    store = FileSystemPayloadStore(tmp_path)
    relay = OutboxRelay(database_url, lambda: Producer(Bodies(MemoryBroker(), bodies), allow_unregistered=True,
                                                       payload_store=store, payload_threshold=128 * 1024),
                        config=RelayConfig(table=table))
    async with relay:
        assert await relay.relay_once() == 2
    sent = {e.job_id: e for e in (Envelope.model_validate_json(b) for b in bodies)}
    assert isinstance(sent[big].payload, PayloadReference) and sent[big].payload.size > 300_000
    assert not isinstance(sent[small].payload, PayloadReference)
    assert max(len(b) for b in bodies) < 10_000


async def test_without_a_notify_the_fallback_poll_still_publishes(database_url: str, table: str,
                                                                 db: asyncpg.Connection) -> None:
    log: list[tuple[str, str]] = []
    relay = _relay(database_url, table, Recording(MemoryBroker(), log), poll_interval=0.3)
    stop = asyncio.Event()
    async with relay:
        task = asyncio.create_task(relay.run(stop))
        await db.execute(f"DROP TRIGGER {table}_notify ON {table}")  # a NOTIFY lost (listener reconnecting)
        ids = await asyncio.to_thread(_add, database_url, table, 3)
        deadline = time.monotonic() + 20
        while len(log) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 30)
    assert sorted(j for j, _ in log) == sorted(ids)


async def test_a_row_that_does_not_decode_is_marked_failed_and_slows_nothing(database_url: str, table: str,
                                                                            db: asyncpg.Connection) -> None:
    good = _add(database_url, table, 2, key="k")
    await db.execute(f"INSERT INTO {table} (job_id, job_type, queue, envelope, ordering_key)"
                     " VALUES ('hand-written', 'email.send', 'conveyor.default', '{\"not\": \"an envelope\"}', 'k')")
    good += _add(database_url, table, 2, key="k")
    log: list[tuple[str, str]] = []
    relay = _relay(database_url, table, Recording(MemoryBroker(), log))
    async with relay:
        assert await relay.relay_once() == 4
        assert relay._failures == 0, "a poison row must not put the relay into backoff"
        assert await relay.relay_once() == 0
    row = await db.fetchrow(f"SELECT failed_at, last_error FROM {table} WHERE job_id = 'hand-written'")
    assert row["failed_at"] is not None and row["last_error"].startswith("MalformedMessage")
    assert [j for j, _ in log] == good  # the key's order holds around the refused row


@pytest.mark.parametrize(("edit", "says"), [
    ((b'"to":"0@example.com"', b'"to":NaN'), "JSON constant NaN is not allowed"),
    ((b'"to":"0@example.com"', b'"to":"0@example.com","to":"admin@example.com"'), "duplicate JSON object key"),
    ((b'"to":"0@example.com"', b'"to":123456789012345678901234567890'), "integer out of range"),
], ids=["NaN", "a duplicate key", "a huge integer"])
async def test_a_row_a_worker_would_refuse_is_marked_failed_not_sent_as_another_job(
        database_url: str, table: str, db: asyncpg.Connection, edit: tuple[bytes, bytes], says: str) -> None:
    # Read leniently, NaN went out as null and the last duplicate key won (the job that ran was
    # not the one in the row); a huge integer went out for every worker to dead-letter.
    [job_id] = _add(database_url, table, 1)
    old, new = (part.decode() for part in edit)
    await db.execute(f"UPDATE {table} SET envelope = replace(envelope, $1, $2) WHERE job_id = $3", old, new, job_id)
    log: list[tuple[str, str]] = []
    relay = _relay(database_url, table, Recording(MemoryBroker(), log))
    async with relay:
        assert await relay.relay_once() == 0
        assert relay.failures == 0, "a refused row must not put the relay into backoff"
    row = await db.fetchrow(f"SELECT failed_at, last_error FROM {table} WHERE job_id = $1", job_id)
    assert row["failed_at"] is not None and row["last_error"].startswith("MalformedMessage"), row["last_error"]
    assert says in row["last_error"]
    assert log == []


async def test_a_row_whose_store_is_unreachable_waits_unsent_and_goes_out_once_it_is_back(
        database_url: str, table: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    outbox = Outbox(jobs=jobs(), table=table, max_message_bytes=None)
    with psycopg.connect(database_url) as connection, connection.transaction():
        big = outbox.add(connection, "email.send", {"to": "x" * 300_000})
        small = outbox.add(connection, "email.send", {"to": "y"})
    bodies: list[bytes] = []
    unreachable = S3PayloadStore("conveyor-test", prefix="h", endpoint_url=f"http://127.0.0.1:{free_port()}",
                                 access_key="a", secret_key="b", timeout=5)
    stores: list[PayloadStore] = [unreachable]
    relay = OutboxRelay(database_url, lambda: Producer(Bodies(MemoryBroker(), bodies), allow_unregistered=True,
                                                       payload_store=stores[-1]), config=RelayConfig(table=table))
    try:
        async with relay:
            assert await relay.relay_once() == 1, "the small row is not held back"
            assert relay.failures == 1
            row = await db.fetchrow(f"SELECT sent_at, failed_at, last_error FROM {table} WHERE job_id = $1", big)
            assert row["sent_at"] is None and row["failed_at"] is None
            assert row["last_error"].startswith("PayloadStoreUnavailable")
            stores.append(FileSystemPayloadStore(tmp_path))  # the store is back
            assert await relay.relay_once() == 1
    finally:
        await unreachable.close()
    sent = [Envelope.model_validate_json(body) for body in bodies]
    assert [e.job_id for e in sent] == [small, big] and isinstance(sent[1].payload, PayloadReference)


async def test_a_row_whose_payload_no_longer_validates_is_published_and_dead_lettered_by_the_worker(
        database_url: str, table: str) -> None:
    # The row was valid when committed: the job exists. The relay does not judge it again; the
    # worker that cannot run it dead-letters it with its reason, where it can be edited and replayed.
    [job_id] = _add(database_url, table, 1)

    class Stricter(BaseModel):
        to: str
        subject: str  # a required field added under the same version

    now = JobRegistry()
    now.job("email.send", model=Stricter)(_ignored)
    broker = MemoryBroker()
    relay = OutboxRelay(database_url, lambda: Producer.for_registry(MemoryTransport(broker), now),
                        config=RelayConfig(table=table))
    async with relay:
        assert await relay.relay_once() == 1
    async with MemoryTransport(broker) as transport, Worker(transport, now) as worker:
        await broker.join(DEFAULT_QUEUE)
    assert worker.counts["dead_lettered"] == 1
    async with MemoryTransport(broker) as reader:
        [record] = await DeadLetters(reader, DEFAULT_QUEUE).list()
    assert (record.job_id, record.reason) == (job_id, "invalid_payload")


async def _ignored(payload: BaseModel, ctx: object) -> None:
    return None
