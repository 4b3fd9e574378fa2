"""The memory and SQLite processed-key stores against the shared contract, plus what is
specific to each (WAL mode, schema versioning, outages, URLs)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.common.clock import FakeClock
from conveyor.common.errors import ConfigurationError
from conveyor.common.idempotency import (
    MemoryProcessedKeyStore,
    PostgresProcessedKeyStore,
    SQLiteProcessedKeyStore,
    store_from_url,
)
from conveyor.common.idempotency.base import IdempotencyStoreUnavailable, ProcessedKeyStore
from tests.support.idempotency_contract import *  # noqa: F403 - the shared contract tests
from tests.support.idempotency_contract import Effects, MemoryEffects, SQLiteEffects


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[ProcessedKeyStore]:
    chosen: ProcessedKeyStore
    if request.param == "memory":
        chosen = MemoryProcessedKeyStore(clock=clock)
    else:
        chosen = SQLiteProcessedKeyStore(tmp_path / "keys.db", clock=clock, busy_timeout=5.0)
    async with chosen:
        yield chosen


@pytest.fixture
async def second_store(store: ProcessedKeyStore, clock: FakeClock) -> AsyncIterator[ProcessedKeyStore]:
    if isinstance(store, MemoryProcessedKeyStore):
        yield store  # one process, one memory
        return
    assert isinstance(store, SQLiteProcessedKeyStore)
    async with SQLiteProcessedKeyStore(store.path, clock=clock, busy_timeout=5.0) as other:
        yield other


@pytest.fixture
def effects(store: ProcessedKeyStore) -> Effects:
    return MemoryEffects() if isinstance(store, MemoryProcessedKeyStore) else SQLiteEffects("handler_effects")


async def test_sqlite_runs_in_wal_mode_and_survives_a_reopen(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "nested" / "dir" / "keys.db"
    async with SQLiteProcessedKeyStore(path, clock=clock) as store:
        assert await store.journal_mode() == "wal"
        await store.record_success("t.job:k", "a" * 64, "job-1")
        await store.save_checkpoint("job-2", {"done": 1})
    async with SQLiteProcessedKeyStore(path, clock=clock) as reopened:
        record = await reopened.get("t.job:k")
        assert record is not None and record.finished_at == clock.now()
        assert await reopened.load_checkpoint("job-2") == {"done": 1}


async def test_a_sqlite_path_whose_directory_cannot_be_made_is_the_stores_own_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")  # `conveyor worker` printed mkdir's traceback for this
    with pytest.raises(IdempotencyStoreUnavailable, match="sqlite open failed: (FileExistsError|NotADirectoryError)"):
        await SQLiteProcessedKeyStore(tmp_path / "a-file" / "keys.db").open()


async def test_sqlite_schema_is_versioned_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    async with SQLiteProcessedKeyStore(path):
        pass
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM conveyor_idempotency_schema").fetchall() == [(1,)]
        db.execute("INSERT INTO conveyor_idempotency_schema (version, applied_at) VALUES (2, 0)")
    with pytest.raises(ConfigurationError, match="newer"):
        await SQLiteProcessedKeyStore(path).open()


async def test_table_prefixes_keep_stores_apart(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    async with SQLiteProcessedKeyStore(path, table_prefix="a_") as a, SQLiteProcessedKeyStore(path, table_prefix="b_") as b:
        await a.record_success("t.job:k", "a" * 64, "job-1")
        assert await b.get("t.job:k") is None
    with pytest.raises(ConfigurationError):
        SQLiteProcessedKeyStore(path, table_prefix="x; DROP TABLE y")


async def test_a_closed_or_broken_store_raises_the_retryable_unavailable_error(tmp_path: Path) -> None:
    store = SQLiteProcessedKeyStore(tmp_path / "keys.db")
    with pytest.raises(IdempotencyStoreUnavailable):
        await store.get("t.job:k")
    async with store:
        pass
    with pytest.raises(IdempotencyStoreUnavailable):
        await store.record_success("t.job:k", "a" * 64, "job-1")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(IdempotencyStoreUnavailable):
        await SQLiteProcessedKeyStore(tmp_path / "dir.db").open()
    memory = MemoryProcessedKeyStore()
    memory.fail_with = ConnectionError("down")
    with pytest.raises(IdempotencyStoreUnavailable):
        await memory.get("t.job:k")


def test_store_from_url_picks_the_store_by_scheme(tmp_path: Path) -> None:
    assert isinstance(store_from_url("memory://"), MemoryProcessedKeyStore)
    sqlite_store = store_from_url(f"sqlite://{tmp_path}/keys.db")
    assert isinstance(sqlite_store, SQLiteProcessedKeyStore) and sqlite_store.path == tmp_path / "keys.db"
    assert isinstance(store_from_url("sqlite:relative/keys.db"), SQLiteProcessedKeyStore)
    assert isinstance(store_from_url("postgresql://u:p@127.0.0.1:5433/db"), PostgresProcessedKeyStore)
    with pytest.raises(ConfigurationError) as caught:
        store_from_url("redis://user:secret@host/0")
    assert "secret" not in str(caught.value)


async def test_a_write_cancelled_at_any_step_leaves_the_store_usable(store: ProcessedKeyStore) -> None:
    # The worker's writes run under timeouts and shutdowns that cancel them anywhere: a SQLite
    # BEGIN cancelled on aiosqlite's thread left its transaction open, and every later write
    # failed "cannot start a transaction within a transaction" (each job retried, then dead-lettered).
    for steps in range(25):
        task = asyncio.ensure_future(store.record_success(f"k{steps}", "h", "job-1"))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert await store.record_success(f"after-{steps}", "h", "job-2"), steps
        record = await store.get(f"after-{steps}")
        assert record is not None and record.job_id == "job-2"
