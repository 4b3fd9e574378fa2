"""The processed-key store contract, one suite for every store.

A test module imports the ``test_*`` functions below (pytest collects them there) and
provides three fixtures:

- ``clock`` — the ``FakeClock`` the stores use;
- ``store`` — an opened store on a fresh database;
- ``second_store`` — a *second* store (its own connections) on the same database, as another
  worker process would have (the memory store, being per-process, returns ``store`` itself);
- ``effects`` — an ``Effects`` for that store: how a handler writes its own effect on
  ``tx.connection``, and how to count them afterwards.
"""

from __future__ import annotations

import abc
import asyncio
from datetime import timedelta

import pytest

from conveyor.common.clock import FakeClock
from conveyor.common.idempotency.base import (
    STATUS_SUCCEEDED,
    IdempotencyConflict,
    ProcessedKeyStore,
    StoreTransaction,
)

__all__ = [
    "Effects",
    "MemoryEffects",
    "PostgresEffects",
    "SQLiteEffects",
    "test_a_checkpoint_survives_until_cleared_or_replaced",
    "test_a_committed_transaction_keeps_the_effect_the_record_and_the_checkpoint",
    "test_a_different_payload_under_the_same_key_is_a_conflict",
    "test_a_duplicate_record_does_not_overwrite_the_first",
    "test_a_failed_transaction_rolls_back_the_record_the_effect_and_the_checkpoint",
    "test_checkpoints_are_json_objects",
    "test_concurrent_record_success_of_one_key_has_exactly_one_winner",
    "test_concurrent_transactions_of_one_key_write_the_effect_once",
    "test_expire_deletes_records_and_checkpoints_older_than_the_cutoff",
    "test_opening_again_keeps_the_data",
    "test_recording_a_success_clears_the_jobs_checkpoint",
    "test_recording_a_success_makes_the_key_known",
    "test_transactions_do_not_nest",
]

HASH_A = "a" * 64
HASH_B = "b" * 64


class Effects(abc.ABC):
    """A handler's own table, written through the raw connection of a store transaction."""

    async def setup(self, store: ProcessedKeyStore) -> None:  # noqa: B027 - optional
        """Create the effects table (outside any test transaction)."""

    @abc.abstractmethod
    async def write(self, tx: StoreTransaction, name: str) -> None: ...

    @abc.abstractmethod
    async def count(self, store: ProcessedKeyStore, name: str) -> int: ...


class MemoryEffects(Effects):
    async def write(self, tx: StoreTransaction, name: str) -> None:
        tx.connection[name] = tx.connection.get(name, 0) + 1

    async def count(self, store: ProcessedKeyStore, name: str) -> int:
        return int(store.effects.get(name, 0))  # type: ignore[attr-defined]


class SQLiteEffects(Effects):
    def __init__(self, table: str) -> None:
        self.table = table

    async def setup(self, store: ProcessedKeyStore) -> None:
        async with store.transaction() as tx:
            await tx.connection.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (name TEXT NOT NULL)")

    async def write(self, tx: StoreTransaction, name: str) -> None:
        await tx.connection.execute(f"INSERT INTO {self.table} (name) VALUES (?)", (name,))

    async def count(self, store: ProcessedKeyStore, name: str) -> int:
        async with store.transaction() as tx:
            async with tx.connection.execute(f"SELECT count(*) FROM {self.table} WHERE name = ?", (name,)) as cur:
                row = await cur.fetchone()
        return int(row[0])


class PostgresEffects(Effects):
    def __init__(self, table: str) -> None:
        self.table = table

    async def setup(self, store: ProcessedKeyStore) -> None:
        async with store.transaction() as tx:
            await tx.connection.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (name text NOT NULL)")

    async def write(self, tx: StoreTransaction, name: str) -> None:
        await tx.connection.execute(f"INSERT INTO {self.table} (name) VALUES ($1)", name)

    async def count(self, store: ProcessedKeyStore, name: str) -> int:
        async with store.transaction() as tx:
            return int(await tx.connection.fetchval(f"SELECT count(*) FROM {self.table} WHERE name = $1", name))


class Boom(Exception):
    pass


async def test_recording_a_success_makes_the_key_known(store: ProcessedKeyStore, clock: FakeClock) -> None:
    assert await store.get("t.job:k1") is None
    assert await store.check("t.job:k1", HASH_A) is None
    assert await store.record_success("t.job:k1", HASH_A, "job-1") is True
    record = await store.get("t.job:k1")
    assert record is not None
    assert (record.key, record.status, record.payload_hash, record.job_id) == ("t.job:k1", STATUS_SUCCEEDED, HASH_A, "job-1")
    assert record.finished_at == clock.now()
    assert await store.check("t.job:k1", HASH_A) == record


async def test_a_duplicate_record_does_not_overwrite_the_first(store: ProcessedKeyStore, clock: FakeClock) -> None:
    assert await store.record_success("t.job:k1", HASH_A, "job-1") is True
    first = await store.get("t.job:k1")
    clock.advance(60)
    assert await store.record_success("t.job:k1", HASH_A, "job-2") is False
    assert await store.get("t.job:k1") == first


async def test_a_different_payload_under_the_same_key_is_a_conflict(store: ProcessedKeyStore) -> None:
    await store.record_success("t.job:k1", HASH_A, "job-1")
    with pytest.raises(IdempotencyConflict) as caught:
        await store.check("t.job:k1", HASH_B)
    assert caught.value.reason == "idempotency_conflict"
    with pytest.raises(IdempotencyConflict):
        await store.record_success("t.job:k1", HASH_B, "job-2")
    record = await store.get("t.job:k1")
    assert record is not None and (record.payload_hash, record.job_id) == (HASH_A, "job-1")


async def test_a_checkpoint_survives_until_cleared_or_replaced(store: ProcessedKeyStore) -> None:
    assert await store.load_checkpoint("job-1") is None
    await store.save_checkpoint("job-1", {"done": 3, "cursor": "abc", "nested": {"ids": [1, 2]}})
    assert await store.load_checkpoint("job-1") == {"done": 3, "cursor": "abc", "nested": {"ids": [1, 2]}}
    await store.save_checkpoint("job-1", {"done": 4})
    assert await store.load_checkpoint("job-1") == {"done": 4}
    assert await store.load_checkpoint("job-2") is None
    await store.clear_checkpoint("job-1")
    await store.clear_checkpoint("job-1")  # clearing nothing is fine
    assert await store.load_checkpoint("job-1") is None


async def test_checkpoints_are_json_objects(store: ProcessedKeyStore) -> None:
    with pytest.raises(TypeError):
        await store.save_checkpoint("job-1", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await store.save_checkpoint("job-1", {"blob": "x" * 300_000})


async def test_recording_a_success_clears_the_jobs_checkpoint(store: ProcessedKeyStore) -> None:
    await store.save_checkpoint("job-1", {"done": 9})
    await store.save_checkpoint("job-other", {"done": 1})
    await store.record_success("t.job:k1", HASH_A, "job-1")
    assert await store.load_checkpoint("job-1") is None
    assert await store.load_checkpoint("job-other") == {"done": 1}


async def test_expire_deletes_records_and_checkpoints_older_than_the_cutoff(
    store: ProcessedKeyStore, clock: FakeClock
) -> None:
    await store.record_success("t.job:old", HASH_A, "job-old")
    await store.save_checkpoint("job-stale", {"done": 1})
    clock.advance(2 * 3600)
    await store.record_success("t.job:new", HASH_A, "job-new")
    await store.save_checkpoint("job-fresh", {"done": 2})
    assert await store.expire(timedelta(hours=1)) == 1
    assert await store.get("t.job:old") is None
    assert await store.get("t.job:new") is not None
    assert await store.load_checkpoint("job-stale") is None
    assert await store.load_checkpoint("job-fresh") == {"done": 2}
    assert await store.expire(timedelta(hours=1)) == 0
    with pytest.raises(ValueError):
        await store.expire(timedelta(seconds=-1))
    # An expired key is unknown again: the same key may succeed anew.
    assert await store.record_success("t.job:old", HASH_B, "job-old-2") is True


async def test_a_committed_transaction_keeps_the_effect_the_record_and_the_checkpoint(
    store: ProcessedKeyStore, effects: Effects
) -> None:
    await effects.setup(store)
    async with store.transaction() as tx:
        assert await tx.record_success("t.job:k1", HASH_A, "job-1") is True
        await effects.write(tx, "sent-k1")
        await store.save_checkpoint("job-1b", {"step": 2})  # the store's own call joins the transaction
        assert await tx.get("t.job:k1") is not None  # visible inside
    assert (await store.get("t.job:k1")).job_id == "job-1"  # type: ignore[union-attr]
    assert await effects.count(store, "sent-k1") == 1
    assert await store.load_checkpoint("job-1b") == {"step": 2}


async def test_a_failed_transaction_rolls_back_the_record_the_effect_and_the_checkpoint(
    store: ProcessedKeyStore, effects: Effects
) -> None:
    await effects.setup(store)
    with pytest.raises(Boom):
        async with store.transaction() as tx:
            assert await tx.record_success("t.job:k1", HASH_A, "job-1") is True
            await effects.write(tx, "sent-k1")
            await tx.save_checkpoint("job-1", {"step": 1})
            raise Boom
    assert await store.get("t.job:k1") is None, "a rolled-back transaction leaves no record"
    assert await effects.count(store, "sent-k1") == 0
    assert await store.load_checkpoint("job-1") is None
    # The store is usable after a rollback, and the key can still succeed.
    assert await store.record_success("t.job:k1", HASH_A, "job-1") is True


async def test_transactions_do_not_nest(store: ProcessedKeyStore) -> None:
    async with store.transaction():
        with pytest.raises(RuntimeError):
            async with store.transaction():
                pass
    assert await store.get("t.job:none") is None


async def test_opening_again_keeps_the_data(store: ProcessedKeyStore, second_store: ProcessedKeyStore) -> None:
    await store.record_success("t.job:k1", HASH_A, "job-1")
    await store.open()  # a no-op on an open store; the schema set-up is idempotent
    record = await second_store.get("t.job:k1")
    assert record is not None and record.job_id == "job-1"


async def test_concurrent_record_success_of_one_key_has_exactly_one_winner(
    store: ProcessedKeyStore, second_store: ProcessedKeyStore
) -> None:
    for n in range(5):
        key = f"t.job:race-{n}"
        results = await asyncio.gather(
            store.record_success(key, HASH_A, f"job-a-{n}"),
            second_store.record_success(key, HASH_A, f"job-b-{n}"),
        )
        assert sorted(results) == [False, True], f"exactly one winner, got {results}"
        winner = await store.get(key)
        assert winner is not None and winner.job_id == (f"job-a-{n}" if results[0] else f"job-b-{n}")
    # Different payloads racing for one key: one wins, the other is a conflict.
    outcomes = await asyncio.gather(
        store.record_success("t.job:race-x", HASH_A, "job-a"),
        second_store.record_success("t.job:race-x", HASH_B, "job-b"),
        return_exceptions=True,
    )
    assert sum(o is True for o in outcomes) == 1
    assert sum(isinstance(o, IdempotencyConflict) for o in outcomes) == 1


async def test_concurrent_transactions_of_one_key_write_the_effect_once(
    store: ProcessedKeyStore, second_store: ProcessedKeyStore, effects: Effects
) -> None:
    """Record first, then write: the loser waits on the key, finds it taken, rolls back."""
    await effects.setup(store)
    first_claimed = asyncio.Event()
    wrote: list[str] = []

    async def attempt(which: ProcessedKeyStore, job_id: str, hold: bool) -> None:
        async with which.transaction() as tx:
            if not await tx.record_success("t.job:once", HASH_A, job_id):
                raise Boom  # already done elsewhere: roll back, write nothing
            if hold:
                first_claimed.set()
                await asyncio.sleep(0.2)  # keep the transaction open while the other tries
            await effects.write(tx, "effect-once")
            wrote.append(job_id)

    async def second() -> None:
        await first_claimed.wait()
        await attempt(second_store, "job-b", hold=False)

    outcomes = await asyncio.gather(attempt(store, "job-a", hold=True), second(), return_exceptions=True)
    assert outcomes[0] is None and isinstance(outcomes[1], Boom), outcomes
    assert wrote == ["job-a"]
    assert await effects.count(store, "effect-once") == 1
    record = await store.get("t.job:once")
    assert record is not None and record.job_id == "job-a"
