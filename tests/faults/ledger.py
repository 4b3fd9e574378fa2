"""The checker: account for every published job id after a final drain.

Sources, all outside the worker processes under test:

* executions — ``job_id attempt pid`` lines the handler appends before doing anything;
* effects — rows in a PostgreSQL table written in the job's idempotency transaction;
* dead letters — the records in the queue's DLQ, read through the transport;
* job states — the scenario's own job-state store (a PostgreSQL schema of its own), read
  through the store's API: each job's final state must agree with the effects and dead letters,
  and no job (or attempt) may be left running, queued or retrying.

From them, the figures every scenario prints and the invariants it must hold: lost = 0,
duplicate effects = 0, no job both succeeded and dead-lettered, only the jobs meant to fail
(or poison) in the DLQ.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncpg

from conveyor.common.job_state import JobState, JobStateStore, job_state_store_from_url
from conveyor.common.transport.factory import transport_from_url
from conveyor.consumer.ops.dead_letters import DeadLetters
from conveyor.schemas.dead_letter import DeadLetterRecord

__all__ = ["POISON_HEADER", "Figures", "Ledger", "Snapshot"]

POISON_HEADER = "x-fault-poison"  # set on every poison message the scenarios publish


@dataclass(frozen=True)
class Snapshot:
    executions: list[str]  # job ids, once per run of the handler
    effects: dict[str, int]  # job id → effect rows
    effect_times: dict[str, datetime]  # job id → first effect's commit time
    dead_letters: list[DeadLetterRecord]

    @property
    def dead_job_ids(self) -> list[str]:
        """Job ids of dead-lettered jobs; poison messages are counted apart (their ids are forged)."""
        return [r.job_id for r in self.dead_letters if r.job_id and POISON_HEADER not in r.original_headers]


@dataclass
class Figures:
    scenario: str
    broker: str
    published: int = 0
    succeeded: int = 0
    dead_lettered: int = 0
    lost: int = 0
    both: int = 0
    unexpected_dead: int = 0
    duplicate_executions: int = 0
    duplicate_effects: int = 0
    duplicate_dead_letters: int = 0
    poison: int = 0
    state_mismatch: int | None = None  # jobs whose store state disagrees with the ledger (None: not read)
    state_stuck: int | None = None  # jobs (or attempts) in the store left unfinished
    recover_seconds: float | None = None
    elapsed_seconds: float = 0.0
    notes: dict[str, object] = field(default_factory=dict)

    def line(self) -> str:
        recover = "—" if self.recover_seconds is None else f"{self.recover_seconds:.1f}s"
        extra = "".join(f", {k}={v}" for k, v in self.notes.items())
        return (
            f"{self.scenario} [{self.broker}]: published={self.published} succeeded={self.succeeded} "
            f"dead_lettered={self.dead_lettered} poison={self.poison} lost={self.lost} "
            f"duplicate_effects={self.duplicate_effects} duplicate_executions={self.duplicate_executions} "
            f"duplicate_dead_letters={self.duplicate_dead_letters} state_mismatch={self.state_mismatch} "
            f"state_stuck={self.state_stuck} recover={recover} "
            f"elapsed={self.elapsed_seconds:.1f}s{extra}"
        )


class Ledger:
    """What was published, and what became of it."""

    def __init__(self, *, broker_url: str, queue: str, database_url: str, effects_table: str, executions: Path,
                 job_state_url: str | None = None) -> None:
        self.broker_url = broker_url
        self.queue = queue
        self.database_url = database_url
        self.effects_table = effects_table
        self.executions_file = executions
        self.expected: dict[str, bool] = {}  # job id → meant to be dead-lettered
        self.poison: dict[str, str] = {}  # poison marker → description
        self.started = time.monotonic()
        self.job_state_url = job_state_url
        self._connection: asyncpg.Connection | None = None
        self._states: JobStateStore | None = None

    async def _db(self) -> asyncpg.Connection:
        # One connection for the scenario: the ledger is polled every 100 ms while it waits.
        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(self.database_url)
        return self._connection

    async def create_effects_table(self, state_schema: str | None = None) -> None:
        """And ``state_schema``, the empty schema the job-state store creates its tables in."""
        await (await self._db()).execute(
            f"CREATE TABLE {self.effects_table} (job_id text NOT NULL, n integer NOT NULL, pid integer NOT NULL,"
            " done_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        if state_schema:
            await (await self._db()).execute(f"CREATE SCHEMA {state_schema}")

    async def drop_effects_table(self, state_schema: str | None = None) -> None:
        """Drop the table and close the ledger's connections."""
        states, self._states = self._states, None
        if states is not None:
            await states.close()
        connection, self._connection = await self._db(), None
        try:
            await connection.execute(f"DROP TABLE IF EXISTS {self.effects_table}")
            if state_schema:
                await connection.execute(f"DROP SCHEMA IF EXISTS {state_schema} CASCADE")
        finally:
            await connection.close()

    def expect(self, job_id: str, *, dead: bool = False) -> None:
        self.expected[job_id] = dead

    def executions(self) -> list[str]:
        if not self.executions_file.exists():
            return []
        return [line.split()[0] for line in self.executions_file.read_text().splitlines() if line.strip()]

    async def effects(self) -> tuple[dict[str, int], dict[str, datetime]]:
        rows = await (await self._db()).fetch(
            f"SELECT job_id, count(*) AS n, min(done_at) AS first FROM {self.effects_table} GROUP BY job_id"
        )
        return {r["job_id"]: r["n"] for r in rows}, {r["job_id"]: r["first"] for r in rows}

    async def dead_letters(self) -> list[DeadLetterRecord]:
        async with transport_from_url(self.broker_url) as transport:
            return await DeadLetters(transport, self.queue).list(limit=100_000)

    async def snapshot(self) -> Snapshot:
        effects, times = await self.effects()
        return Snapshot(self.executions(), effects, times, await self.dead_letters())

    async def job_states(self) -> tuple[dict[str, str | None], dict[str, str]]:
        """What the job-state store disagrees on: ``(wrong, stuck)``. ``wrong``: expected job id →
        its state in the store (None: no record) where that is not the ledger's outcome
        (succeeded, or dead-lettered/cancelled for a job meant to fail); ``stuck``: job id → why,
        for every job in the store not final or with an attempt that never ended."""
        assert self.job_state_url, "this ledger has no job-state store"
        if self._states is None:
            self._states = job_state_store_from_url(self.job_state_url)
            await self._states.open()
        store = self._states
        records = {r.job_id: r for r in await store.list_jobs(limit=10_000)}
        assert len(records) < 10_000, "more jobs than one listing reads: page the store"
        wrong: dict[str, str | None] = {}
        for job_id, dead in self.expected.items():
            want = {JobState.DEAD_LETTERED, JobState.CANCELLED} if dead else {JobState.SUCCEEDED}
            record = records.get(job_id)
            if record is None or record.state not in want:
                wrong[job_id] = None if record is None else record.state.value
        stuck = {job_id: record.state.value for job_id, record in records.items() if not record.state.final}
        if not wrong and not stuck:  # every state is final: read the attempts once
            for job_id in records:
                full = await store.get(job_id)
                if full is not None and any(a.outcome is None for a in full.attempts):
                    stuck[job_id] = "attempt running"
        return wrong, stuck

    def settled(self, snap: Snapshot) -> bool:
        """Every expected job has an effect or a dead letter, and every poison message its dead letter."""
        done = set(snap.effects) | set(snap.dead_job_ids)
        poison_seen = {r.original_headers.get(POISON_HEADER) for r in snap.dead_letters}
        return done >= set(self.expected) and poison_seen >= set(self.poison)

    def figures(self, scenario: str, broker: str, snap: Snapshot) -> Figures:
        succeeded, dead = set(snap.effects), set(snap.dead_job_ids)
        expected = set(self.expected)
        meant_dead = {job for job, is_dead in self.expected.items() if is_dead}
        executions = Counter(snap.executions)
        poison_records = [r for r in snap.dead_letters if r.original_headers.get(POISON_HEADER) in self.poison]
        return Figures(
            scenario=scenario,
            broker=broker,
            published=len(expected) + len(self.poison),
            succeeded=len(succeeded & expected),
            dead_lettered=len(dead & expected),
            lost=len(expected - succeeded - dead),
            both=len(succeeded & dead),
            unexpected_dead=len((dead & expected) ^ meant_dead) + len(dead - expected),
            duplicate_executions=sum(n - 1 for n in executions.values()),
            duplicate_effects=sum(n - 1 for n in snap.effects.values()),
            duplicate_dead_letters=len(snap.dead_job_ids) - len(dead)
            + len(poison_records) - len({r.original_headers.get(POISON_HEADER) for r in poison_records}),
            poison=len({r.original_headers.get(POISON_HEADER) for r in poison_records}),
            elapsed_seconds=time.monotonic() - self.started,
        )
