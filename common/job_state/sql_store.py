"""The SQL both database stores run: the forward-only upsert of ``states.merge`` as one statement.

``INSERT … ON CONFLICT (job_id) DO UPDATE SET col = CASE WHEN <forward> THEN new ELSE old END``
is the same text on PostgreSQL and SQLite (≥ 3.24); on both, the right-hand sides read the
row *before* the update, so every column is decided against the same old position. A dialect
gives only its placeholders, its timestamp type and its connection.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from conveyor.common.errors import UnknownJob
from conveyor.common.job_state.base import SCHEMA_VERSION, CancelResult, JobStateStore
from conveyor.common.job_state.filters import JobFilter
from conveyor.common.job_state.states import (
    CANCEL_REQUESTED_RANK,
    FINAL_RANK,
    AttemptInfo,
    JobRecord,
    JobState,
    Transition,
    merge,
    merge_attempt,
)

__all__ = ["SqlConnection", "SqlJobStateStore"]

_JOB_COLUMNS = (
    "job_id", "state", "generation", "rank", "attempt", "updated_at", "job_type", "queue", "created_at",
    "queued_at", "scheduled_for", "started_at", "finished_at", "reason", "error", "result", "result_ref",
    "producer_version", "code_version", "config_hash", "dead_letter_id", "idempotency_key", "cancel_requested_at",
)
_TIME_COLUMNS = frozenset({
    "updated_at", "created_at", "queued_at", "scheduled_for", "started_at", "finished_at", "cancel_requested_at",
    "heartbeat_at",
})
_FILLED = (
    "job_type", "queue", "created_at", "queued_at", "scheduled_for", "started_at", "producer_version",
    "idempotency_key",
)
_FORWARD_TAKEN = ("state", "generation", "rank", "attempt", "finished_at", "reason", "error")
_FORWARD_KEPT = ("result", "result_ref", "code_version", "config_hash", "dead_letter_id")
_ATTEMPT_COLUMNS = (
    "job_id", "attempt_id", "attempt", "worker_id", "started_at", "heartbeat_at", "finished_at", "outcome",
    "error", "code_version", "config_hash",
)


def _never_stored(text: str) -> bool:
    """Text no job's id, type or key holds (they are identifiers): NUL, or a lone surrogate (bytes
    that were not UTF-8, as a shell passes them). PostgreSQL refuses both as an outage would, and
    SQLite's driver raised ``UnicodeEncodeError``: bad input, answered as "no such job"."""
    if "\x00" in text:
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


class SqlConnection(abc.ABC):
    """One connection inside one transaction, as the generic store needs it."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; returns the rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]: ...


class SqlJobStateStore(JobStateStore):
    """Everything but the driver: SQL text, row mapping, the operations."""

    #: ``$1`` (PostgreSQL) or ``?`` (SQLite) for the 1-based parameter ``i``.
    placeholder: Callable[[int], str]
    time_type = "timestamptz"
    text_type = "text"

    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractAsyncContextManager[SqlConnection]: ...

    @abc.abstractmethod
    def _to_db(self, value: datetime | None) -> Any: ...

    @abc.abstractmethod
    def _from_db(self, value: Any) -> datetime | None: ...

    # -- schema ------------------------------------------------------------------------
    def schema_statements(self) -> list[str]:
        t, ts, jobs, attempts = self.text_type, self.time_type, self.jobs_table, self.attempts_table
        return [
            f"CREATE TABLE IF NOT EXISTS {jobs} ("
            f" job_id {t} PRIMARY KEY, state {t} NOT NULL, generation bigint NOT NULL, rank integer NOT NULL,"
            f" attempt integer NOT NULL, updated_at {ts} NOT NULL, job_type {t}, queue {t}, created_at {ts},"
            f" queued_at {ts}, scheduled_for {ts}, started_at {ts}, finished_at {ts}, reason {t}, error {t},"
            f" result {t}, result_ref {t}, producer_version {t}, code_version {t}, config_hash {t},"
            f" dead_letter_id {t}, cancel_requested_at {ts}, idempotency_key {t})",
            f"CREATE INDEX IF NOT EXISTS {jobs}_created ON {jobs} (created_at)",
            f"CREATE INDEX IF NOT EXISTS {jobs}_state ON {jobs} (state, created_at)",
            f"CREATE INDEX IF NOT EXISTS {jobs}_updated ON {jobs} (updated_at)",
            f"CREATE INDEX IF NOT EXISTS {jobs}_cancels ON {jobs} (cancel_requested_at)"
            " WHERE cancel_requested_at IS NOT NULL",
            f"CREATE TABLE IF NOT EXISTS {attempts} ("
            f" job_id {t} NOT NULL, attempt_id {t} NOT NULL, attempt integer NOT NULL, worker_id {t} NOT NULL,"
            f" started_at {ts}, heartbeat_at {ts}, finished_at {ts}, outcome {t}, error {t}, code_version {t},"
            f" config_hash {t}, PRIMARY KEY (job_id, attempt_id))",
            f"CREATE INDEX IF NOT EXISTS {attempts}_live ON {attempts} (heartbeat_at) WHERE finished_at IS NULL",
        ]

    def _add_column_sql(self, table: str, column: str, type_: str) -> str:
        return f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {type_}"

    async def _missing_column(self, conn: SqlConnection, table: str, column: str) -> bool:
        # Asked first, though ADD COLUMN IF NOT EXISTS would be a no-op: on PostgreSQL the ALTER takes
        # an exclusive lock on the table even then, and every process runs this at start-up.
        p = self.placeholder
        rows = await conn.fetch(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
            f" AND table_name = {p(1)} AND column_name = {p(2)}", table, column,
        )
        return not rows

    async def _upgrade(self, conn: SqlConnection) -> None:
        """v1 → v2, idempotent, at every ``open()``: a table created before the key gets its column."""
        jobs, t = self.jobs_table, self.text_type
        if await self._missing_column(conn, jobs, "idempotency_key"):
            await conn.execute(self._add_column_sql(jobs, "idempotency_key", t))
        await conn.execute(f"CREATE INDEX IF NOT EXISTS {jobs}_idempotency_key ON {jobs} (idempotency_key, created_at)")

    async def _migrate(self, conn: SqlConnection) -> None:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.version_table}"
            f" (version integer PRIMARY KEY, applied_at {self.time_type})"
        )
        rows = await conn.fetch(f"SELECT max(version) FROM {self.version_table}")
        self._check_schema_version(rows[0][0] if rows else None)
        for statement in self.schema_statements():
            await conn.execute(statement)
        await self._upgrade(conn)
        p = self.placeholder
        await conn.execute(
            f"INSERT INTO {self.version_table} (version, applied_at) VALUES ({p(1)}, {p(2)}) ON CONFLICT DO NOTHING",
            SCHEMA_VERSION, self._to_db(self.clock.now()),
        )

    # -- the upserts -----------------------------------------------------------------
    def _upsert_job_sql(self) -> str:
        j = self.jobs_table
        columns = _JOB_COLUMNS[:-1]  # cancel_requested_at is the operator's, never a transition's
        values = ", ".join(self.placeholder(i + 1) for i in range(len(columns)))
        forward = (
            f"(excluded.generation > {j}.generation OR"
            f" (excluded.generation = {j}.generation AND excluded.rank > {j}.rank))"
        )
        sets = [f"{c} = COALESCE({j}.{c}, excluded.{c})" for c in _FILLED]
        sets.append(
            f"updated_at = CASE WHEN excluded.updated_at > {j}.updated_at"
            f" THEN excluded.updated_at ELSE {j}.updated_at END"
        )
        sets += [f"{c} = CASE WHEN {forward} THEN excluded.{c} ELSE {j}.{c} END" for c in _FORWARD_TAKEN]
        sets += [f"{c} = CASE WHEN {forward} THEN COALESCE(excluded.{c}, {j}.{c}) ELSE {j}.{c} END"
                 for c in _FORWARD_KEPT]
        sets.append(  # states.ends_cancel: a new run of a job that had ended drops the old run's cancel
            f"cancel_requested_at = CASE WHEN excluded.generation > {j}.generation AND {j}.rank >= {FINAL_RANK}"
            f" THEN NULL ELSE {j}.cancel_requested_at END"
        )
        return (
            f"INSERT INTO {j} ({', '.join(columns)}) VALUES ({values})"
            f" ON CONFLICT (job_id) DO UPDATE SET {', '.join(sets)}"
        )

    def _upsert_attempt_sql(self) -> str:
        a = self.attempts_table
        values = ", ".join(self.placeholder(i + 1) for i in range(len(_ATTEMPT_COLUMNS)))
        open_end = f"(({a}.outcome IS NULL OR {a}.outcome = 'abandoned') AND excluded.outcome IS NOT NULL)"
        sets = [
            f"started_at = COALESCE({a}.started_at, excluded.started_at)",
            f"heartbeat_at = CASE WHEN excluded.heartbeat_at > {a}.heartbeat_at"
            f" THEN excluded.heartbeat_at ELSE {a}.heartbeat_at END",
            *(f"{c} = CASE WHEN {open_end} THEN excluded.{c} ELSE {a}.{c} END"
              for c in ("finished_at", "outcome", "error")),
        ]
        return (
            f"INSERT INTO {a} ({', '.join(_ATTEMPT_COLUMNS)}) VALUES ({values})"
            f" ON CONFLICT (job_id, attempt_id) DO UPDATE SET {', '.join(sets)}"
        )

    def _job_row(self, r: JobRecord) -> tuple[Any, ...]:
        ts = self._to_db
        return (
            r.job_id, str(r.state), r.generation, r.rank, r.attempt, ts(r.updated_at), r.job_type, r.queue,
            ts(r.created_at), ts(r.queued_at), ts(r.scheduled_for), ts(r.started_at), ts(r.finished_at),
            r.reason, r.error, r.result, r.result_ref, r.producer_version, r.code_version, r.config_hash,
            r.dead_letter_id, r.idempotency_key,
        )

    def _attempt_row(self, job_id: str, a: AttemptInfo) -> tuple[Any, ...]:
        ts = self._to_db
        return (
            job_id, a.attempt_id, a.attempt, a.worker_id, ts(a.started_at), ts(a.heartbeat_at), ts(a.finished_at),
            a.outcome, a.error, a.code_version, a.config_hash,
        )

    async def apply(self, transitions: Sequence[Transition]) -> None:
        """One round trip per table per batch. The batch is folded first (``states.merge``, in
        order), so a job's running and end in one batch are one row each, not two: the
        database then merges one folded row the way it would have merged the transitions."""
        if not transitions:
            return
        jobs: dict[str, JobRecord] = {}
        attempts: dict[tuple[str, str], AttemptInfo] = {}
        for t in transitions:
            jobs[t.job_id] = merge(jobs.get(t.job_id), t)
            if t.attempt_id is not None:
                key = (t.job_id, t.attempt_id)
                attempts[key] = merge_attempt(attempts.get(key), t)
        async with self._transaction() as conn:
            await conn.executemany(self._upsert_job_sql(), [self._job_row(r) for r in jobs.values()])
            if attempts:
                await conn.executemany(
                    self._upsert_attempt_sql(), [self._attempt_row(job, a) for (job, _), a in attempts.items()]
                )

    # -- reads -----------------------------------------------------------------------
    def _record(self, row: Sequence[Any]) -> JobRecord:
        values: dict[str, Any] = {
            c: (self._from_db(v) if c in _TIME_COLUMNS else v) for c, v in zip(_JOB_COLUMNS, row, strict=True)
        }
        values["state"] = JobState(values["state"])
        return JobRecord(**values)

    def _attempt(self, row: Sequence[Any]) -> AttemptInfo:
        names = _ATTEMPT_COLUMNS[1:]
        values: dict[str, Any] = {
            c: (self._from_db(v) if c in _TIME_COLUMNS else v) for c, v in zip(names, row, strict=True)
        }
        return AttemptInfo(**values)

    async def get(self, job_id: str) -> JobRecord | None:
        if _never_stored(job_id):
            return None
        p = self.placeholder
        async with self._transaction() as conn:
            rows = await conn.fetch(
                f"SELECT {', '.join(_JOB_COLUMNS)} FROM {self.jobs_table} WHERE job_id = {p(1)}", job_id
            )
            if not rows:
                return None
            attempts = await conn.fetch(
                f"SELECT {', '.join(_ATTEMPT_COLUMNS[1:])} FROM {self.attempts_table} WHERE job_id = {p(1)}"
                " ORDER BY COALESCE(started_at, finished_at), attempt_id",
                job_id,
            )
        return replace(self._record(rows[0]), attempts=tuple(self._attempt(a) for a in attempts))

    async def _list(self, selected: JobFilter, limit: int) -> list[JobRecord]:
        where, args = selected.where(self.placeholder, self._to_db)
        if any(isinstance(arg, str) and _never_stored(arg) for arg in args):
            return []  # a type or key no job has matches nothing (see get)
        args.append(limit)
        sql = (
            f"SELECT {', '.join(_JOB_COLUMNS)} FROM {self.jobs_table}{where}"
            f" ORDER BY created_at DESC, job_id DESC LIMIT {self.placeholder(len(args))}"
        )
        async with self._transaction() as conn:
            rows = await conn.fetch(sql, *args)
        return [self._record(r) for r in rows]

    # -- operator actions and upkeep -------------------------------------------------
    async def request_cancel(self, job_id: str) -> CancelResult:
        p, j = self.placeholder, self.jobs_table
        now = self._to_db(self.clock.now())
        if _never_stored(job_id):
            raise UnknownJob(f"no job {job_id!r} in the job-state store")
        async with self._transaction() as conn:
            rows = await conn.fetch(
                f"SELECT state, rank, cancel_requested_at FROM {j} WHERE job_id = {p(1)}{self._for_update}", job_id
            )
            if not rows:
                raise UnknownJob(f"no job {job_id!r} in the job-state store")
            state, rank, requested = JobState(rows[0][0]), rows[0][1], rows[0][2]
            if rank >= CANCEL_REQUESTED_RANK:
                return CancelResult(job_id, state, state, changed=False)
            if state is JobState.RUNNING:
                await conn.execute(
                    f"UPDATE {j} SET cancel_requested_at = COALESCE(cancel_requested_at, {p(1)}), updated_at = {p(1)}"
                    f" WHERE job_id = {p(2)}", now, job_id,
                )
                return CancelResult(job_id, state, state, changed=requested is None)
            await conn.execute(
                f"UPDATE {j} SET state = {p(1)}, rank = {p(2)}, finished_at = {p(3)}, updated_at = {p(3)},"
                f" reason = 'cancelled', cancel_requested_at = COALESCE(cancel_requested_at, {p(3)})"
                f" WHERE job_id = {p(4)}",
                str(JobState.CANCELLED), CANCEL_REQUESTED_RANK, now, job_id,
            )
        return CancelResult(job_id, state, JobState.CANCELLED, changed=True)

    _for_update = ""  # PostgreSQL locks the row; SQLite's BEGIN IMMEDIATE already holds the file

    async def pending_cancels(self) -> set[str]:
        async with self._transaction() as conn:
            rows = await conn.fetch(
                f"SELECT job_id FROM {self.jobs_table} WHERE cancel_requested_at IS NOT NULL"
                f" AND rank < {self.placeholder(1)}", FINAL_RANK,
            )
        return {r[0] for r in rows}

    async def reconcile(self, stale_after: timedelta) -> int:
        p, j, a = self.placeholder, self.jobs_table, self.attempts_table
        cutoff = self._to_db(self._cutoff(stale_after))
        async with self._transaction() as conn:
            abandoned = await conn.execute(
                f"UPDATE {a} SET outcome = 'abandoned', finished_at = heartbeat_at"
                f" WHERE finished_at IS NULL AND heartbeat_at < {p(1)}", cutoff,
            )
            await conn.execute(
                f"UPDATE {j} SET state = {p(1)}, rank = 0, updated_at = {p(2)} WHERE state = {p(3)}"
                f" AND NOT EXISTS (SELECT 1 FROM {a} WHERE {a}.job_id = {j}.job_id AND {a}.finished_at IS NULL)",
                str(JobState.RETRYING), self._to_db(self.clock.now()), str(JobState.RUNNING),
            )
        return abandoned

    async def expire(self, older_than: timedelta) -> int:
        p, j, a = self.placeholder, self.jobs_table, self.attempts_table
        cutoff = self._to_db(self._cutoff(older_than))
        async with self._transaction() as conn:
            await conn.execute(
                f"DELETE FROM {a} WHERE job_id IN"
                f" (SELECT job_id FROM {j} WHERE rank >= {p(1)} AND updated_at < {p(2)})",
                CANCEL_REQUESTED_RANK, cutoff,
            )
            return await conn.execute(
                f"DELETE FROM {j} WHERE rank >= {p(1)} AND updated_at < {p(2)}", CANCEL_REQUESTED_RANK, cutoff
            )

    async def drop_schema(self) -> None:
        """Drop this store's tables (tests and decommissioning only)."""
        async with self._transaction() as conn:
            for table in (self.attempts_table, self.jobs_table, self.version_table):
                await conn.execute(f"DROP TABLE IF EXISTS {table}")
