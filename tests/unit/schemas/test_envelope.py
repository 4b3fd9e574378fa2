"""Envelope helpers."""

from __future__ import annotations


def test_job_ids_are_distinct_canonical_uuid4_strings() -> None:
    import uuid

    from conveyor.schemas.envelope import new_job_id

    ids = [new_job_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for job_id in ids[:200]:
        parsed = uuid.UUID(job_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, job_id)


def test_job_ids_from_many_threads_never_repeat() -> None:
    # Ids come from a pool refilled 256 at a time: threads racing on refills must still each
    # get ids nobody else got.
    from concurrent.futures import ThreadPoolExecutor

    from conveyor.schemas.envelope import new_job_id

    def many(_: int) -> list[str]:
        return [new_job_id() for _ in range(3000)]

    with ThreadPoolExecutor(8) as pool:
        ids = [job_id for batch in pool.map(many, range(8)) for job_id in batch]
    assert len(set(ids)) == len(ids) == 24_000


def test_a_forked_child_does_not_reuse_the_parents_pending_ids() -> None:
    import os

    from conveyor.schemas.envelope import new_job_id

    new_job_id()  # the pool now holds ids the parent has not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report a few ids and leave without running pytest's exit handlers
        os.write(write, "\n".join(new_job_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split("\n"))
    os.waitpid(pid, 0)
    parent = {new_job_id() for _ in range(300)}
    assert len(child) == 10
    assert not child & parent


def _envelope(**changes: object):
    from datetime import UTC, datetime

    from conveyor.schemas.envelope import Envelope, InlinePayload

    fields: dict[str, object] = dict(job_id="j-1", idempotency_key="j-1", job_type="test.ping", schema_version=1,
                                     correlation_id="j-1", created_at=datetime.now(UTC),
                                     payload=InlinePayload(data={"n": 1}))
    return Envelope(**{**fields, **changes})


def _record(attempt: int, outcome: str = "retried"):
    from datetime import UTC, datetime

    from conveyor.schemas.envelope import AttemptRecord

    now = datetime.now(UTC)
    return AttemptRecord(attempt=attempt, worker_id="w", started_at=now, finished_at=now, outcome=outcome)


def test_a_forged_attempt_is_bounded_by_the_history_it_carries() -> None:
    assert _envelope(attempt=999).bounded_by_history().attempt == 1
    assert _envelope(attempt=999, history=(_record(1), _record(2))).bounded_by_history().attempt == 3
    assert _envelope(attempt=2).bounded_by_history().attempt == 1


def test_every_envelope_conveyor_writes_keeps_its_attempt() -> None:
    """Retries, deferrals, a replay (attempt 1, history kept) and a history past its cap."""
    from conveyor.schemas.envelope import MAX_HISTORY

    envelope = _envelope()
    for n in range(3 * MAX_HISTORY):
        if n % 3 == 1:
            envelope = envelope.with_history(_record(envelope.attempt, "deferred"))
        else:
            envelope = envelope.next_attempt(_record(envelope.attempt))
        if n == MAX_HISTORY:  # a replay: a fresh budget, the same history
            envelope = envelope.model_copy(update={"attempt": 1})
        assert envelope.bounded_by_history() is envelope, (n, envelope.attempt, len(envelope.history))
    assert len(envelope.history) == MAX_HISTORY and envelope.attempt > MAX_HISTORY + 1


def test_a_full_forged_history_bounds_the_attempt_by_its_newest_record() -> None:
    from conveyor.schemas.envelope import MAX_HISTORY

    history = tuple(_record(1) for _ in range(MAX_HISTORY))
    assert _envelope(attempt=999, history=history).bounded_by_history().attempt == 2
    history = (*history[1:], _record(700))
    assert _envelope(attempt=999, history=history).bounded_by_history().attempt == 701


def test_validating_json_never_caches_a_messages_string_values() -> None:
    # pydantic-core's default caches every short string value process-wide (16,384 entries): a
    # process reading many envelopes (the outbox relay) would hold ~1.3 MiB of ids and times no
    # later message reuses (issue 18). The worker's one pass has its own test.
    import orjson

    from conveyor.schemas.envelope import Envelope
    from tests.unit.schemas.test_schema_agrees_with_worker import BASE

    body = orjson.dumps({**BASE, "headers": {"tenant": "acme"}})
    first, second = Envelope.model_validate_json(body), Envelope.model_validate_json(body)
    assert first == second
    assert first.job_id is not second.job_id and first.headers["tenant"] is not second.headers["tenant"]
