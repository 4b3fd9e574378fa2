"""The job-state store contract, one suite for every store (memory, SQLite, PostgreSQL).

A test module imports the ``test_*`` functions below (pytest collects them there) and provides
``clock`` (a ``FakeClock`` the store uses) and ``store`` (an opened store on fresh tables).
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest

from conveyor.common.clock import FakeClock
from conveyor.common.errors import UnknownJob
from conveyor.common.job_state import JobState, JobStateStore, Transition
from conveyor.common.job_state.filters import JobFilter
from conveyor.common.job_state.states import generation_of

__all__ = [
    "test_a_batch_in_any_order_ends_in_the_same_record",
    "test_a_cancel_of_a_finished_job_changes_nothing",
    "test_a_later_generation_runs_again_after_a_retry",
    "test_a_queued_write_arriving_after_the_end_fills_in_queued_at_only",
    "test_an_abandoned_attempt_gives_way_to_the_redelivery",
    "test_cancel_of_an_unknown_job_is_an_unknown_job_error",
    "test_cancelling_a_running_job_marks_it_and_the_worker_records_the_end",
    "test_a_cancel_outlives_a_retry_but_not_a_run_that_ended",
    "test_cancelling_a_waiting_job_cancels_it_at_once_and_twice_is_idempotent",
    "test_expire_deletes_only_finished_jobs_older_than_the_cutoff",
    "test_the_idempotency_key_is_kept_from_the_first_writer_and_lists_every_job_with_it",
    "test_list_filters_by_state_type_and_time_newest_first",
    "test_since_at_the_ends_of_time_or_without_a_zone_is_a_filter_not_an_outage",
    "test_an_operation_cancelled_at_any_step_leaves_the_store_usable",
    "test_every_filter_lists_exactly_the_jobs_its_matches_accepts",
    "test_states_never_go_backwards",
    "test_text_no_id_holds_in_an_id_type_or_key_finds_nothing_and_is_no_outage",
    "test_the_full_life_of_a_job_is_recorded_with_its_attempts",
    "test_the_worker_outcome_wins_over_an_operator_cancel_it_raced",
]


def _t(clock: FakeClock, job_id: str, state: JobState, *, gen: datetime | None = None, **kw: object) -> Transition:
    created = kw.pop("created_at", None) or clock.now()
    assert isinstance(created, datetime)
    generation = generation_of(created, gen)
    return Transition(job_id=job_id, state=state, at=clock.now(), generation=generation,
                      created_at=created, job_type=kw.pop("job_type", "t.job"), **kw)  # type: ignore[arg-type]


async def test_the_full_life_of_a_job_is_recorded_with_its_attempts(store: JobStateStore, clock: FakeClock) -> None:
    created = clock.now()
    await store.apply([_t(clock, "j1", JobState.QUEUED, created_at=created, queue="q", producer_version="p1")])
    clock.advance(1)
    await store.apply([_t(clock, "j1", JobState.RUNNING, created_at=created, worker_id="w1", code_version="c1",
                          config_hash="h1")])
    clock.advance(1)
    first_end = clock.now()
    await store.apply([_t(clock, "j1", JobState.RETRYING, created_at=created, worker_id="w1",
                          attempt_outcome="failed", error="ValueError: boom", code_version="c1")])
    clock.advance(1)
    await store.apply([_t(clock, "j1", JobState.RUNNING, created_at=created, gen=first_end, attempt=2,
                          worker_id="w2")])
    clock.advance(1)
    await store.apply([_t(clock, "j1", JobState.SUCCEEDED, created_at=created, gen=first_end, attempt=2,
                          worker_id="w2", attempt_outcome="succeeded", result='{"n": 3}')])
    record = await store.get("j1")
    assert record is not None
    assert record.state is JobState.SUCCEEDED and record.attempt == 2 and record.result == '{"n": 3}'
    assert record.queue == "q" and record.producer_version == "p1" and record.code_version == "c1"
    assert record.queued_at == created and record.started_at == created + timedelta(seconds=1)
    assert record.finished_at == created + timedelta(seconds=4)
    assert [(a.worker_id, a.outcome) for a in record.attempts] == [("w1", "failed"), ("w2", "succeeded")]
    assert record.attempts[0].error == "ValueError: boom" and record.attempts[0].config_hash == "h1"
    assert record.attempts[1].started_at == created + timedelta(seconds=3)


async def test_states_never_go_backwards(store: JobStateStore, clock: FakeClock) -> None:
    created = clock.now()
    await store.apply([_t(clock, "j", JobState.SUCCEEDED, created_at=created, worker_id="w", attempt_outcome="succeeded")])
    for late in (JobState.RUNNING, JobState.QUEUED, JobState.RETRYING):
        clock.advance(1)
        await store.apply([_t(clock, "j", late, created_at=created, worker_id="w", attempt_outcome="failed")])
    record = await store.get("j")
    assert record is not None and record.state is JobState.SUCCEEDED
    assert [a.outcome for a in record.attempts] == ["succeeded"]  # an attempt's end is written once


async def test_a_batch_in_any_order_ends_in_the_same_record(store: JobStateStore, clock: FakeClock) -> None:
    created = clock.now()
    steps = [
        _t(clock, "x", JobState.QUEUED, created_at=created),
        _t(clock, "x", JobState.RUNNING, created_at=created, worker_id="w"),
        _t(clock, "x", JobState.DEAD_LETTERED, created_at=created, worker_id="w", attempt_outcome="failed",
           reason="permanent", dead_letter_id="d1"),
    ]
    for n, order in enumerate(itertools.permutations(steps)):
        job_id = f"x{n}"
        await store.apply([Transition(**{**_fields(t), "job_id": job_id}) for t in order])
        record = await store.get(job_id)
        assert record is not None and record.state is JobState.DEAD_LETTERED, order
        assert record.queued_at is not None and record.reason == "permanent" and record.dead_letter_id == "d1"
        assert [a.outcome for a in record.attempts] == ["failed"]


async def test_a_queued_write_arriving_after_the_end_fills_in_queued_at_only(
    store: JobStateStore, clock: FakeClock
) -> None:
    created = clock.now()
    await store.apply([_t(clock, "late", JobState.SUCCEEDED, created_at=created, worker_id="w",
                          attempt_outcome="succeeded")])
    await store.apply([_t(clock, "late", JobState.QUEUED, created_at=created, producer_version="p9")])
    record = await store.get("late")
    assert record is not None and record.state is JobState.SUCCEEDED
    assert record.queued_at == created and record.producer_version == "p9"


async def test_a_later_generation_runs_again_after_a_retry(store: JobStateStore, clock: FakeClock) -> None:
    created = clock.now()
    await store.apply([_t(clock, "r", JobState.TIMED_OUT, created_at=created, worker_id="w",
                          attempt_outcome="timeout")])
    clock.advance(2)
    await store.apply([_t(clock, "r", JobState.RUNNING, created_at=created, gen=clock.now(), attempt=2,
                          worker_id="w")])
    record = await store.get("r")
    assert record is not None and record.state is JobState.RUNNING and record.attempt == 2
    # …but the first attempt's running, batched late, does not step back over the retry.
    await store.apply([_t(clock, "r", JobState.RUNNING, created_at=created, worker_id="w")])
    record = await store.get("r")
    assert record is not None and record.attempt == 2


async def test_an_abandoned_attempt_gives_way_to_the_redelivery(store: JobStateStore, clock: FakeClock) -> None:
    created = clock.now()
    await store.apply([_t(clock, "d", JobState.RUNNING, created_at=created, worker_id="dead")])
    await store.apply([_t(clock, "live", JobState.RUNNING, created_at=created, worker_id="alive")])
    clock.advance(50)
    await store.apply([_t(clock, "live", JobState.RUNNING, created_at=created, worker_id="alive")])  # heartbeat
    clock.advance(20)
    assert await store.reconcile(timedelta(seconds=60)) == 1
    dead = await store.get("d")
    assert dead is not None and dead.state is JobState.RETRYING
    assert [a.outcome for a in dead.attempts] == ["abandoned"]
    live = await store.get("live")
    assert live is not None and live.state is JobState.RUNNING and live.attempts[0].outcome is None
    assert await store.reconcile(timedelta(seconds=60)) == 0  # idempotent
    await store.apply([_t(clock, "d", JobState.RUNNING, created_at=created, worker_id="next")])
    await store.apply([_t(clock, "d", JobState.SUCCEEDED, created_at=created, worker_id="next",
                          attempt_outcome="succeeded")])
    dead = await store.get("d")
    assert dead is not None and dead.state is JobState.SUCCEEDED
    assert sorted((a.worker_id, a.outcome) for a in dead.attempts) == [("dead", "abandoned"), ("next", "succeeded")]


async def test_cancelling_a_waiting_job_cancels_it_at_once_and_twice_is_idempotent(
    store: JobStateStore, clock: FakeClock
) -> None:
    await store.apply([_t(clock, "c", JobState.SCHEDULED, scheduled_for=clock.now() + timedelta(hours=1))])
    first = await store.request_cancel("c")
    assert (first.previous, first.state, first.changed) == (JobState.SCHEDULED, JobState.CANCELLED, True)
    second = await store.request_cancel("c")
    assert (second.previous, second.state, second.changed) == (JobState.CANCELLED, JobState.CANCELLED, False)
    assert await store.pending_cancels() == {"c"}  # until a worker records the end
    record = await store.get("c")
    assert record is not None and record.final and record.cancel_requested_at == clock.now()
    # The job's arrival at a worker: it records cancelled, and the cancel is no longer pending.
    await store.apply([_t(clock, "c", JobState.CANCELLED, worker_id="w", attempt_outcome="cancelled")])
    assert await store.pending_cancels() == set()


async def test_cancelling_a_running_job_marks_it_and_the_worker_records_the_end(
    store: JobStateStore, clock: FakeClock
) -> None:
    await store.apply([_t(clock, "run", JobState.RUNNING, worker_id="w")])
    result = await store.request_cancel("run")
    assert result.running and result.changed
    assert (await store.request_cancel("run")).changed is False
    assert await store.pending_cancels() == {"run"}
    await store.apply([_t(clock, "run", JobState.CANCELLED, worker_id="w", attempt_outcome="cancelled")])
    record = await store.get("run")
    assert record is not None and record.state is JobState.CANCELLED and record.attempts[0].outcome == "cancelled"
    assert await store.pending_cancels() == set()


async def test_a_cancel_outlives_a_retry_but_not_a_run_that_ended(store: JobStateStore, clock: FakeClock) -> None:
    created = clock.now()
    # Cancelled while it ran, but its worker ended it first (dead-lettered before its poll came):
    # the cancel was moot. An operator then replays the dead letter, a later generation. Its
    # worker's poll found the old cancel still pending and stopped the replay it had asked for.
    await store.apply([_t(clock, "dl", JobState.RUNNING, worker_id="w", created_at=created)])
    await store.request_cancel("dl")
    await store.apply([_t(clock, "dl", JobState.DEAD_LETTERED, worker_id="w", attempt_outcome="failed",
                          created_at=created, reason="permanent")])
    clock.advance(5)
    replayed = clock.now()
    await store.apply([_t(clock, "dl", JobState.RUNNING, worker_id="w2", created_at=created, gen=replayed)])
    assert await store.pending_cancels() == set()
    record = await store.get("dl")
    assert record is not None and record.state is JobState.RUNNING and record.cancel_requested_at is None
    assert (await store.request_cancel("dl")).changed  # the replay itself can be cancelled
    assert await store.pending_cancels() == {"dl"}
    # Cancelled while it waited for its retry: the retry copy (a later generation) must not run.
    await store.apply([_t(clock, "rt", JobState.RETRYING, worker_id="w", attempt_outcome="failed", created_at=created)])
    assert (await store.request_cancel("rt")).state is JobState.CANCELLED
    await store.apply([_t(clock, "rt", JobState.RUNNING, worker_id="w2", created_at=created, gen=clock.now())])
    assert await store.pending_cancels() == {"dl", "rt"}


async def test_the_worker_outcome_wins_over_an_operator_cancel_it_raced(store: JobStateStore, clock: FakeClock) -> None:
    # The store still says queued (the worker's running write is in its buffer) when the cancel comes.
    await store.apply([_t(clock, "race", JobState.QUEUED)])
    assert (await store.request_cancel("race")).state is JobState.CANCELLED
    await store.apply([_t(clock, "race", JobState.RUNNING, worker_id="w"),
                       _t(clock, "race", JobState.SUCCEEDED, worker_id="w", attempt_outcome="succeeded")])
    record = await store.get("race")
    assert record is not None and record.state is JobState.SUCCEEDED  # what really happened


async def test_a_cancel_of_a_finished_job_changes_nothing(store: JobStateStore, clock: FakeClock) -> None:
    await store.apply([_t(clock, "done", JobState.SUCCEEDED, worker_id="w", attempt_outcome="succeeded")])
    result = await store.request_cancel("done")
    assert (result.state, result.changed) == (JobState.SUCCEEDED, False)
    assert await store.pending_cancels() == set()


async def test_cancel_of_an_unknown_job_is_an_unknown_job_error(store: JobStateStore) -> None:
    with pytest.raises(UnknownJob) as caught:
        await store.request_cancel("nope")
    assert caught.value.reason == "unknown_job"


@pytest.mark.parametrize("bad", ["\x00", "\udcff"])
async def test_text_no_id_holds_in_an_id_type_or_key_finds_nothing_and_is_no_outage(
        store: JobStateStore, clock: FakeClock, bad: str) -> None:
    # NUL: the console's /jobs/%00 answered 503 "JobStateStoreUnavailable … try again" on
    # PostgreSQL (which refuses NUL in text): bad input passed for an outage. A lone surrogate
    # (`conveyor jobs show $'\xff'`, bytes that were not UTF-8): SQLite raised UnicodeEncodeError,
    # a traceback, and PostgreSQL called it an outage.
    await store.apply([_t(clock, "j-1", JobState.QUEUED, job_type="t.job")])
    assert await store.get(f"j-1{bad}") is None
    with pytest.raises(UnknownJob):
        await store.request_cancel(f"j-1{bad}")
    assert await store.list_jobs(job_type=f"t.job{bad}") == []
    assert await store.list_jobs(idempotency_key=bad) == []
    assert [r.job_id for r in await store.list_jobs(job_type="t.job")] == ["j-1"]


async def test_list_filters_by_state_type_and_time_newest_first(store: JobStateStore, clock: FakeClock) -> None:
    start = clock.now()
    for i in range(6):
        state = JobState.SUCCEEDED if i % 2 else JobState.QUEUED
        await store.apply([_t(clock, f"l{i}", state, job_type="a" if i < 3 else "b")])
        clock.advance(1)
    assert [r.job_id for r in await store.list_jobs()] == ["l5", "l4", "l3", "l2", "l1", "l0"]
    assert [r.job_id for r in await store.list_jobs(state=JobState.SUCCEEDED)] == ["l5", "l3", "l1"]
    assert [r.job_id for r in await store.list_jobs(job_type="a", state=JobState.QUEUED)] == ["l2", "l0"]
    assert [r.job_id for r in await store.list_jobs(since=start + timedelta(seconds=4))] == ["l5", "l4"]
    assert [r.job_id for r in await store.list_jobs(limit=2)] == ["l5", "l4"]
    assert await store.list_jobs(job_type="zzz") == []


async def test_since_at_the_ends_of_time_or_without_a_zone_is_a_filter_not_an_outage(
        store: JobStateStore, clock: FakeClock) -> None:
    # `jobs list --since 0001-01-01T00:00:00+14:00` is before year 1 in UTC: PostgreSQL refused it
    # ("date value out of range") and the CLI said the store was unavailable.
    await store.apply([_t(clock, "e-1", JobState.QUEUED)])
    first = datetime.min.replace(tzinfo=timezone(timedelta(hours=14)))
    last = datetime.max.replace(tzinfo=timezone(timedelta(hours=-14)))
    assert [r.job_id for r in await store.list_jobs(since=first)] == ["e-1"]
    assert await store.list_jobs(since=last) == []
    naive = clock.now().astimezone(UTC).replace(tzinfo=None)  # a time without a zone is UTC
    assert [r.job_id for r in await store.list_jobs(since=naive)] == ["e-1"]
    assert await store.list_jobs(since=naive + timedelta(seconds=1)) == []


async def test_every_filter_lists_exactly_the_jobs_its_matches_accepts(store: JobStateStore, clock: FakeClock) -> None:
    """The memory store filters with ``JobFilter.matches``, the SQL stores with ``JobFilter.where``:
    on every store, every combination lists what ``matches`` accepts, and no more."""
    start = clock.now()
    for i in range(8):
        state = (JobState.QUEUED, JobState.SUCCEEDED, JobState.SCHEDULED)[i % 3]
        key = {"idempotency_key": f"k{i % 2}"} if i % 4 else {}
        await store.apply([_t(clock, f"f{i}", state, job_type="a" if i < 4 else "b", **key)])
        clock.advance(1)
    everything = await store.list_jobs(limit=100)
    assert len(everything) == 8
    sizes = set()
    for state, job_type, since, key in itertools.product(
        (None, JobState.QUEUED, JobState.SUCCEEDED), (None, "a", "b"), (None, start + timedelta(seconds=3)),
        (None, "k1", "zzz"),
    ):
        selected = JobFilter(state, job_type, since, key)
        listed = await store.list_jobs(state=state, job_type=job_type, since=since, idempotency_key=key)
        assert [r.job_id for r in listed] == [r.job_id for r in everything if selected.matches(r)], selected
        sizes.add(len(listed))
    assert {0, 1, 8} <= sizes and len(sizes) > 4  # the filters really select, and differently


async def test_the_idempotency_key_is_kept_from_the_first_writer_and_lists_every_job_with_it(
    store: JobStateStore, clock: FakeClock
) -> None:
    # k1: the producer wrote it; later transitions carry none (or a different one): the first stays
    await store.apply([_t(clock, "k-a", JobState.QUEUED, idempotency_key="k1")])
    clock.advance(1)
    await store.apply([_t(clock, "k-a", JobState.RUNNING, worker_id="w")])
    await store.apply([_t(clock, "k-a", JobState.SUCCEEDED, worker_id="w", attempt_outcome="succeeded",
                          idempotency_key="other")])
    # no store-aware producer: the worker's first transition brings the key, arriving after the end
    clock.advance(1)
    done = _t(clock, "k-b", JobState.SUCCEEDED, worker_id="w", attempt_outcome="succeeded")
    await store.apply([done, _t(clock, "k-b", JobState.RUNNING, worker_id="w", idempotency_key="k1")])
    clock.advance(1)
    await store.apply([_t(clock, "k-c", JobState.QUEUED, idempotency_key="k2"), _t(clock, "k-d", JobState.QUEUED)])
    a, b, d = await store.get("k-a"), await store.get("k-b"), await store.get("k-d")
    assert a is not None and a.state is JobState.SUCCEEDED and a.idempotency_key == "k1"
    assert b is not None and b.state is JobState.SUCCEEDED and b.idempotency_key == "k1"
    assert d is not None and d.idempotency_key is None and d.to_dict()["idempotency_key"] is None
    assert [r.job_id for r in await store.list_jobs(idempotency_key="k1")] == ["k-b", "k-a"]
    assert [r.job_id for r in await store.list_jobs(idempotency_key="k1", limit=1)] == ["k-b"]
    assert [r.job_id for r in await store.list_jobs(idempotency_key="k1", state=JobState.QUEUED)] == []
    assert [r.job_id for r in await store.list_jobs(idempotency_key="k2")] == ["k-c"]
    assert await store.list_jobs(idempotency_key="other") == []
    assert await store.list_jobs(idempotency_key="nope") == []


async def test_expire_deletes_only_finished_jobs_older_than_the_cutoff(store: JobStateStore, clock: FakeClock) -> None:
    await store.apply([_t(clock, "old-done", JobState.SUCCEEDED, worker_id="w", attempt_outcome="succeeded"),
                       _t(clock, "old-waiting", JobState.QUEUED)])
    clock.advance(3600)
    await store.apply([_t(clock, "new-done", JobState.DEAD_LETTERED)])
    assert await store.expire(timedelta(minutes=30)) == 1
    assert await store.get("old-done") is None
    assert await store.get("old-waiting") is not None and await store.get("new-done") is not None
    assert await store.expire(timedelta(minutes=30)) == 0


async def test_an_operation_cancelled_at_any_step_leaves_the_store_usable(
        store: JobStateStore, clock: FakeClock) -> None:
    # A caller's timeout (``handle.result(timeout=…)``, a shutdown's bounded close) cancels a read
    # or a write wherever it is. SQLite's BEGIN runs on aiosqlite's thread and opened its
    # transaction even when the await was cancelled: every later operation on that store failed
    # "cannot start a transaction within a transaction", for the life of the process.
    await store.apply([_t(clock, "c-1", JobState.QUEUED)])
    for steps in range(25):  # every point of the operation, from before its BEGIN to after its COMMIT
        for operation in (store.get("c-1"), store.apply([_t(clock, f"c-{steps}", JobState.QUEUED)])):
            task = asyncio.ensure_future(operation)
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            record = await store.get("c-1")
            assert record is not None and record.state is JobState.QUEUED, steps
    await store.apply([_t(clock, "c-1", JobState.SUCCEEDED)])
    done = await store.get("c-1")
    assert done is not None and done.state is JobState.SUCCEEDED


def _fields(t: Transition) -> dict[str, object]:
    return {name: getattr(t, name) for name in t.__slots__}
