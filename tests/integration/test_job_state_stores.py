"""The SQLite and PostgreSQL job-state stores against REAL databases: the shared store contract,
plus what only a real database shows (writers racing on one job from separate connections,
reopening a file, concurrent schema set-up, an unreachable server).

PostgreSQL needs ``CONVEYOR_DATABASE_URL``; a missing server fails, never skips. Each test
works in tables of its own prefix and drops them afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conveyor import MemoryBroker, MemoryTransport, Producer
from conveyor.common.clock import FakeClock
from conveyor.common.errors import JobNotSucceeded, JobStateStoreUnavailable
from conveyor.common.job_state import (
    JobState,
    JobStateStore,
    PostgresJobStateStore,
    SQLiteJobStateStore,
    Transition,
)
from conveyor.common.job_state.handle import JobHandle
from conveyor.common.job_state.states import generation_of
from tests.faults.proxy import FaultProxy
from tests.support.job_state_contract import *  # noqa: F403 - the shared contract tests


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock, database_url: str
) -> AsyncIterator[JobStateStore]:
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    chosen: SQLiteJobStateStore | PostgresJobStateStore
    if request.param == "sqlite":
        chosen = SQLiteJobStateStore(tmp_path / "state.db", clock=clock, table_prefix=prefix)
    else:
        chosen = PostgresJobStateStore(database_url, clock=clock, table_prefix=prefix)
    async with chosen:
        try:
            yield chosen
        finally:
            await chosen.drop_schema()


def _run(clock: FakeClock, job_id: str, state: JobState, worker: str, attempt: int = 1) -> Transition:
    created = clock.now()
    return Transition(job_id=job_id, state=state, at=clock.now(), generation=generation_of(created, None),
                      attempt=attempt, created_at=created, worker_id=worker,
                      attempt_outcome=None if state is JobState.RUNNING else "succeeded")


async def test_writers_on_separate_connections_racing_on_one_job_end_final(
    database_url: str, clock: FakeClock
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    stores = [PostgresJobStateStore(database_url, table_prefix=prefix, clock=clock, max_size=1) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))  # concurrent schema set-up, too
        # Producer, the worker's running and its end, and a stale duplicate, all at once, 20 jobs.
        batches = [
            [_run(clock, f"j{n}", JobState.RUNNING, "w") for n in range(20)],
            [_run(clock, f"j{n}", JobState.SUCCEEDED, "w") for n in range(20)],
            [_run(clock, f"j{n}", JobState.RUNNING, "w") for n in range(20)],
            [Transition(job_id=f"j{n}", state=JobState.QUEUED, at=clock.now(),
                        generation=generation_of(clock.now(), None)) for n in range(20)],
        ]
        await asyncio.gather(*(s.apply(b) for s, b in zip(stores, batches, strict=True)))
        records = await stores[0].list_jobs(limit=100)
        assert len(records) == 20 and {r.state for r in records} == {JobState.SUCCEEDED}
        assert all(r.queued_at is not None for r in records)
    finally:
        await stores[0].drop_schema()
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_sqlite_store_reopened_keeps_its_records(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "deep" / "state.db"
    async with SQLiteJobStateStore(path, clock=clock) as first:
        await first.apply([_run(clock, "kept", JobState.SUCCEEDED, "w")])
    async with SQLiteJobStateStore(path, clock=clock) as second:
        record = await second.get("kept")
    assert record is not None and record.state is JobState.SUCCEEDED and record.attempts[0].worker_id == "w"


async def test_an_unreachable_postgres_is_the_stores_error_without_the_password() -> None:
    store = PostgresJobStateStore("postgresql://conveyor:hunter2@127.0.0.1:1/conveyor", connect_timeout=2.0, min_size=0)
    with pytest.raises(JobStateStoreUnavailable) as caught:
        await store.open()
    assert "hunter2" not in str(caught.value)
    with pytest.raises(JobStateStoreUnavailable):
        await store.get("x")  # never opened


def _v1(store: SQLiteJobStateStore | PostgresJobStateStore) -> None:
    """Make ``store`` create the v1 schema of earlier releases: the jobs table without the key."""
    v2 = store.schema_statements()
    store.schema_statements = lambda: [s.replace(f", idempotency_key {store.text_type})", ")") for s in v2]  # type: ignore[method-assign]

    async def no_upgrade(conn: object) -> None:
        return None

    store._upgrade = no_upgrade  # type: ignore[method-assign,assignment]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_v1_table_is_upgraded_in_place_at_open_and_keeps_its_rows(
    kind: str, tmp_path: Path, clock: FakeClock, database_url: str
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}_"

    def make() -> SQLiteJobStateStore | PostgresJobStateStore:
        if kind == "sqlite":
            return SQLiteJobStateStore(tmp_path / "state.db", clock=clock, table_prefix=prefix)
        return PostgresJobStateStore(database_url, clock=clock, table_prefix=prefix)

    old = make()
    _v1(old)
    async with old, old._transaction() as conn:
        p = old.placeholder
        await conn.execute(f"DELETE FROM {old.version_table}")
        await conn.execute(f"INSERT INTO {old.version_table} (version) VALUES (1)")
        await conn.execute(
            f"INSERT INTO {old.jobs_table} (job_id, state, generation, rank, attempt, updated_at)"
            f" VALUES ({p(1)}, 'queued', 1, 0, 1, {p(2)})", "before", old._to_db(clock.now()),
        )
        columns = await conn.fetch(f"SELECT * FROM {old.jobs_table}")
        assert len(columns[0]) == 22  # the v1 shape: no idempotency_key column yet
    store = make()
    try:
        async with store:
            before = await store.get("before")
            assert before is not None and before.state is JobState.QUEUED and before.idempotency_key is None
            created = clock.now()
            await store.apply([Transition(job_id="after", state=JobState.QUEUED, at=created,
                                          generation=generation_of(created, None), created_at=created,
                                          idempotency_key="k-up")])
            assert [r.job_id for r in await store.list_jobs(idempotency_key="k-up")] == ["after"]
            async with store._transaction() as conn:
                assert (await conn.fetch(f"SELECT max(version) FROM {store.version_table}"))[0][0] == 2
                # so the next open() alters nothing (on PostgreSQL an ALTER would lock the table)
                assert not await store._missing_column(conn, store.jobs_table, "idempotency_key")
                assert await store._missing_column(conn, store.jobs_table, "no_such_column")
        async with make() as again:  # the upgrade is idempotent: a second open is a no-op
            after = await again.get("after")
            assert after is not None and after.idempotency_key == "k-up"
    finally:
        async with make() as cleanup:
            await cleanup.drop_schema()


async def test_result_with_timeout_zero_answers_a_finished_job_and_times_out_a_waiting_one(
        store: JobStateStore, clock: FakeClock) -> None:
    # asyncio.timeout(0) cut the first read of a database store (its I/O yields), so a job that
    # had long succeeded raised TimeoutError: "is it done?" could not be asked without waiting.
    created = clock.now()
    generation = generation_of(created, None)
    await store.apply([
        Transition("done", JobState.SUCCEEDED, clock.now(), generation, created_at=created, result='{"pages": 3}'),
        Transition("dead", JobState.DEAD_LETTERED, clock.now(), generation, created_at=created, reason="exhausted"),
        Transition("waiting", JobState.QUEUED, clock.now(), generation, created_at=created),
    ])

    def handle(job_id: str) -> JobHandle:
        return JobHandle(job_id=job_id, queue="q", confirmed_at=created, tries=1, store=store)

    assert await handle("done").result(timeout=0) == {"pages": 3}
    with pytest.raises(JobNotSucceeded, match="exhausted"):
        await handle("dead").result(timeout=0)
    with pytest.raises(TimeoutError):
        await handle("waiting").result(timeout=0)
    with pytest.raises(TimeoutError):
        await handle("waiting").result(timeout=0.05)
    assert await handle("done").result(timeout=0.05) == {"pages": 3}


async def test_a_producer_starts_and_publishes_while_its_job_state_store_is_down(database_url: str) -> None:
    # README "Store down": every process keeps its transitions and writes them later. The
    # producer opened its store at start and raised: with PostgreSQL down, nothing could be published.
    parts = urlsplit(database_url)
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        proxy.refuse()
        store = PostgresJobStateStore(proxy.rewrite_url(database_url), table_prefix=prefix, connect_timeout=2.0,
                                      min_size=0)
        async with Producer(MemoryTransport(MemoryBroker()), allow_unregistered=True, job_state=store) as producer:
            handles = [await producer.publish("t.down", {"n": n}) for n in range(3)]
            proxy.accept()
            async with PostgresJobStateStore(database_url, table_prefix=prefix) as reader:
                try:
                    for _ in range(100):  # the writer's backoff is at most 5 s
                        records = [await reader.get(h.job_id) for h in handles]
                        if all(r is not None for r in records):
                            break
                        await asyncio.sleep(0.1)
                    assert all(r is not None and r.state is JobState.QUEUED for r in records), records
                finally:
                    await reader.drop_schema()
        await store.close()
