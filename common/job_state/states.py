"""The job state machine, in one place: the states, their order, and the forward-only merge.

::

    queued ─┐                                   ┌─► succeeded
    scheduled ─► running ─► retrying/timed_out ─┤─► dead_lettered
                   ▲               │            └─► cancelled
                   └───────────────┘ (the next attempt: a later generation)

**Never backwards.** Every write carries a *position* ``(generation, rank)`` and is applied only
if its position is greater than the stored one (fields nobody wrote yet, such as the
producer's ``queued_at`` arriving after the worker's ``running``, are filled in either way).
So writes batched by several processes may arrive in any order: the result is the same.

- ``generation`` is a run of the job's message: microseconds of the latest time in the
  envelope (``created_at``, its attempt history's finish times) plus the history's length. A retry, a deferral and a DLQ
  replay all add an entry, so each copy of a job has a later generation than the one before; a
  redelivery of the same message (a worker died) has the same one.
- ``rank`` orders the states within one generation: waiting (queued, scheduled) 0, running 1,
  retrying and timed_out 2 (the attempt failed, a retry copy waits), an operator's cancel of a
  waiting job 8, and what a worker recorded at the end (succeeded, dead_lettered, cancelled) 9.
  A worker's account of what actually happened wins over an operator's cancel of a job that
  had in fact already started.

The reconciler is the one writer allowed to step back, and only within a generation: an
attempt whose worker stopped heart-beating is marked ``abandoned`` and its job returns to
rank 0 (state ``retrying``), so the redelivery's ``running`` (rank 1) wins.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.schemas.envelope import Envelope

__all__ = [
    "CANCEL_REQUESTED_RANK",
    "FINAL_RANK",
    "AttemptInfo",
    "JobRecord",
    "JobState",
    "Transition",
    "ends_cancel",
    "generation_of",
    "generation_of_envelope",
    "merge",
    "merge_attempt",
    "rank_of",
]


class JobState(enum.StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"  # published with a delay
    RUNNING = "running"
    RETRYING = "retrying"  # an attempt failed; the retry copy waits out its delay
    TIMED_OUT = "timed_out"  # an attempt ran past its time limit; retried like a failure
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({JobState.SUCCEEDED, JobState.DEAD_LETTERED, JobState.CANCELLED})
CANCEL_REQUESTED_RANK = 8
FINAL_RANK = 9
_RANKS = {
    JobState.QUEUED: 0,
    JobState.SCHEDULED: 0,
    JobState.RUNNING: 1,
    JobState.RETRYING: 2,
    JobState.TIMED_OUT: 2,
    JobState.SUCCEEDED: FINAL_RANK,
    JobState.DEAD_LETTERED: FINAL_RANK,
    JobState.CANCELLED: FINAL_RANK,
}


def rank_of(state: JobState) -> int:
    return _RANKS[state]


def generation_of(created_at: datetime, history_finished: datetime | None, history_length: int = 0) -> int:
    """The generation of a job's message: µs of the latest of ``created_at`` and its history's
    finish times, plus the number of entries, so a copy made within the same microsecond still
    comes later. The latest, not the newest entry's: a worker whose clock is behind the
    producer's wrote a finish time before ``created_at``, and the retry or DLQ replay then had
    an *earlier* generation than the message it copied: its states were never applied (a
    replay that succeeded stayed ``dead_lettered``)."""
    latest = created_at if history_finished is None or history_finished < created_at else history_finished
    return int(latest.timestamp() * 1_000_000) + history_length


def generation_of_envelope(envelope: Envelope) -> int:
    """``generation_of`` a job's envelope: what its producer and every worker record it under."""
    history = envelope.history
    finished = max((entry.finished_at for entry in history), default=None)
    return generation_of(envelope.created_at, finished, len(history))


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, as a producer, worker or operator saw it.

    With ``worker_id`` it also writes the attempt (``generation`` + ``worker_id`` name it): a
    ``running`` transition starts it (and, sent again, is its heartbeat); any later one ends it
    with ``attempt_outcome``.
    """

    job_id: str
    state: JobState
    at: datetime
    generation: int
    attempt: int = 1
    job_type: str | None = None
    queue: str | None = None
    created_at: datetime | None = None
    scheduled_for: datetime | None = None
    worker_id: str | None = None
    attempt_outcome: str | None = None  # succeeded, failed, timeout, cancelled
    reason: str | None = None  # the final outcome's reason code (exhausted, permanent, …)
    error: str | None = None  # "ErrorType: message", short
    result: str | None = None  # JSON text, size-capped
    result_ref: str | None = None  # claim check of a larger result
    producer_version: str | None = None
    code_version: str | None = None
    config_hash: str | None = None
    dead_letter_id: str | None = None
    idempotency_key: str | None = None  # the envelope's; the first one written is kept

    @property
    def rank(self) -> int:
        return _RANKS[self.state]

    @property
    def attempt_id(self) -> str | None:
        return None if self.worker_id is None else f"{self.generation}:{self.worker_id}"


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    attempt_id: str
    attempt: int
    worker_id: str
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None = None
    outcome: str | None = None  # None while running; succeeded, failed, timeout, cancelled, abandoned
    error: str | None = None
    code_version: str | None = None
    config_hash: str | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    state: JobState
    generation: int
    rank: int
    attempt: int
    updated_at: datetime
    job_type: str | None = None
    queue: str | None = None
    created_at: datetime | None = None
    queued_at: datetime | None = None
    scheduled_for: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str | None = None
    error: str | None = None
    result: str | None = None
    result_ref: str | None = None
    producer_version: str | None = None
    code_version: str | None = None
    config_hash: str | None = None
    dead_letter_id: str | None = None
    cancel_requested_at: datetime | None = None
    attempts: tuple[AttemptInfo, ...] = field(default=())
    idempotency_key: str | None = None

    @property
    def final(self) -> bool:
        return self.rank >= CANCEL_REQUESTED_RANK

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (the CLI's ``--json``): times as ISO 8601, attempts as a list."""
        out: dict[str, object] = {}
        for name in self.__slots__:
            if name in ("generation", "rank", "attempts"):
                continue
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        out["state"] = str(self.state)
        out["attempts"] = [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in _fields(a).items()}
            for a in self.attempts
        ]
        return out


def _fields(attempt: AttemptInfo) -> dict[str, object]:
    return {name: getattr(attempt, name) for name in attempt.__slots__}


def _forward(record: JobRecord, t: Transition) -> bool:
    return (t.generation, t.rank) > (record.generation, record.rank)


def ends_cancel(generation: int, rank: int, new_generation: int) -> bool:
    """Whether a write of ``new_generation`` retires the cancel requested of a record at
    ``(generation, rank)``: its run had ended by its worker's account (a cancel that came too
    late was moot) and this is a new run of it (a DLQ replay, the id published again). A cancel
    of a job waiting for its retry (rank 8, no worker's end yet) outlives the retry copy."""
    return new_generation > generation and rank >= FINAL_RANK


def merge(record: JobRecord | None, t: Transition) -> JobRecord:
    """``record`` after ``t``: the reference semantics every store's SQL implements.

    One constructor call (no ``dataclasses.replace``): it runs for every transition written."""
    queued_at = t.at if t.state is JobState.QUEUED or t.state is JobState.SCHEDULED else None
    started_at = t.at if t.state is JobState.RUNNING else None
    finished_at = t.at if t.rank >= CANCEL_REQUESTED_RANK else None
    if record is None:
        return JobRecord(
            t.job_id, t.state, t.generation, t.rank, t.attempt, t.at, t.job_type, t.queue, t.created_at, queued_at,
            t.scheduled_for, started_at, finished_at, t.reason, t.error, t.result, t.result_ref, t.producer_version,
            t.code_version, t.config_hash, t.dead_letter_id, idempotency_key=t.idempotency_key,
        )
    r = record
    filled = (
        r.job_type or t.job_type, r.queue or t.queue, r.created_at or t.created_at, r.queued_at or queued_at,
        r.scheduled_for or t.scheduled_for, r.started_at or started_at,
    )
    producer_version = r.producer_version or t.producer_version
    key = r.idempotency_key or t.idempotency_key  # filled like ``filled``: whichever writer came first
    updated_at = t.at if t.at > r.updated_at else r.updated_at
    if not _forward(r, t):
        return JobRecord(
            r.job_id, r.state, r.generation, r.rank, r.attempt, updated_at, *filled, r.finished_at, r.reason,
            r.error, r.result, r.result_ref, producer_version, r.code_version, r.config_hash, r.dead_letter_id,
            r.cancel_requested_at, r.attempts, key,
        )
    return JobRecord(
        r.job_id, t.state, t.generation, t.rank, t.attempt, updated_at, *filled, finished_at, t.reason, t.error,
        t.result or r.result, t.result_ref or r.result_ref, producer_version, t.code_version or r.code_version,
        t.config_hash or r.config_hash, t.dead_letter_id or r.dead_letter_id,
        None if ends_cancel(r.generation, r.rank, t.generation) else r.cancel_requested_at, r.attempts, key,
    )


def merge_attempt(attempt: AttemptInfo | None, t: Transition) -> AttemptInfo:
    """The attempt ``t`` names (it has a ``worker_id``), after ``t``."""
    assert t.attempt_id is not None and t.worker_id is not None
    running = t.state is JobState.RUNNING
    if attempt is None:
        return AttemptInfo(
            attempt_id=t.attempt_id, attempt=t.attempt, worker_id=t.worker_id,
            started_at=t.at if running else None, heartbeat_at=t.at,
            finished_at=None if running else t.at, outcome=None if running else t.attempt_outcome,
            error=None if running else t.error, code_version=t.code_version, config_hash=t.config_hash,
        )
    a = attempt  # one constructor call each way, as in ``merge``
    heartbeat = t.at if a.heartbeat_at is None or t.at > a.heartbeat_at else a.heartbeat_at
    if running:
        return AttemptInfo(a.attempt_id, a.attempt, a.worker_id, a.started_at or t.at, heartbeat, a.finished_at,
                           a.outcome, a.error, a.code_version, a.config_hash)
    if a.outcome not in (None, "abandoned") or t.attempt_outcome is None:  # its end is written once
        return AttemptInfo(a.attempt_id, a.attempt, a.worker_id, a.started_at, heartbeat, a.finished_at,
                           a.outcome, a.error, a.code_version, a.config_hash)
    return AttemptInfo(a.attempt_id, a.attempt, a.worker_id, a.started_at, heartbeat, t.at, t.attempt_outcome,
                       t.error, a.code_version, a.config_hash)
