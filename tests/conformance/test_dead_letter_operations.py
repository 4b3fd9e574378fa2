"""Operators acting on one DLQ at once, and a replay with nowhere to go.

``conveyor dlq replay`` and ``dlq purge`` run as separate processes, and a console beside them:
two replays, or a replay and a purge, on the same DLQ at the same time must leave every job in
exactly one place (its work queue, still in the DLQ, or purged), none lost, none twice. A
replay whose job's queue is not on the broker stops with ``queue_not_found`` and keeps the entry.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from datetime import UTC, datetime

import pytest

from conveyor.common.codec import decode_envelope, encode_model
from conveyor.common.errors import QueueNotFound
from conveyor.common.transport.base import OutgoingMessage, Transport
from conveyor.consumer.ops.dead_letters import DeadLetters
from conveyor.schemas.dead_letter import DeadLetterRecord
from conveyor.schemas.envelope import new_envelope
from tests.support.backends import Backend

ENTRIES = 30


async def plant(transport: Transport, dlq_of: str, count: int, *, queue: str | None = None) -> list[str]:
    """``count`` replayable dead letters in ``dlq_of``'s DLQ whose records name ``queue`` (default:
    ``dlq_of``), as a worker writes them; their job ids."""
    job_ids = []
    for n in range(count):
        envelope = new_envelope(job_id=None, job_type="test.ping", schema_version=1, created_at=datetime.now(UTC),
                                data={"n": n}, headers={})
        record = DeadLetterRecord(
            dead_letter_id=f"dl-{uuid.uuid4()}", queue=queue or dlq_of, reason="permanent", error_type="ValueError",
            error_message="boom", dead_lettered_at=datetime.now(UTC), worker_id="conformance",
            job_id=envelope.job_id, job_type="test.ping", attempt=1,
            original_body_b64=DeadLetterRecord.encode_body(encode_model(envelope)),
        )
        await transport.publish(transport.dead_letter_queue(dlq_of), OutgoingMessage(
            body=encode_model(record), message_id=record.dead_letter_id, kind="dead_letter"))
        job_ids.append(envelope.job_id)
    return job_ids


async def where(transport: Transport, queue: str) -> tuple[list[str], list[str]]:
    """The job ids in ``queue`` (taken) and in its DLQ (every entry, given back)."""
    work = []
    while (delivery := await transport.get(queue)) is not None:
        work.append(decode_envelope(delivery.body).job_id)
        await delivery.ack()
    left = [str(record.job_id) for record in await DeadLetters(transport, queue).list(limit=10 * ENTRIES)]
    return work, left


@pytest.mark.parametrize("second", ["replay", "purge"])
async def test_a_replay_racing_a_replay_or_a_purge_leaves_every_job_in_exactly_one_place(backend: Backend,
                                                                                        second: str) -> None:
    setup = await backend.transport()
    await setup.declare(backend.queue)
    sent = await plant(setup, backend.queue, ENTRIES)
    first = DeadLetters(await backend.transport(), backend.queue)  # each its own connection, as a process
    other = DeadLetters(await backend.transport(), backend.queue)
    replayed, outcome = await asyncio.gather(first.replay(), other.replay() if second == "replay" else other.purge())
    purged = outcome if isinstance(outcome, int) else 0
    work, left = await where(await backend.transport(), backend.queue)
    assert not [job for job, n in collections.Counter(work + left).items() if n > 1], "a job in two places"
    assert set(work) | set(left) <= set(sent)
    assert len(work) + len(left) + purged == ENTRIES, (len(work), len(left), purged)
    again = 0 if isinstance(outcome, int) else outcome.replayed
    assert len(work) == replayed.replayed + again, "each replayed entry is in its work queue once"


async def test_a_replay_whose_queue_is_not_on_the_broker_stops_with_queue_not_found_and_keeps_the_entry(
        backend: Backend) -> None:
    # The replay declared the queue its record names: a queue no worker consumes was created and
    # the job waited there, reported replayed (a work queue deleted and its DLQ kept; a record
    # naming another queue).
    setup = await backend.transport()
    await setup.declare(backend.queue)
    gone = f"{backend.queue}.gone"
    sent = await plant(setup, backend.queue, 2, queue=gone)
    try:
        with pytest.raises(QueueNotFound) as raised:
            await DeadLetters(await backend.transport(), backend.queue).replay()
        assert raised.value.reason == "queue_not_found" and repr(gone) in str(raised.value)
        with pytest.raises(QueueNotFound):
            await setup.depth(gone)  # nothing created on the way
        _, left = await where(await backend.transport(), backend.queue)
        assert sorted(left) == sorted(sent), "both entries stay in the DLQ"
    finally:
        with_ghost = await backend.transport()
        try:
            await with_ghost.depth(gone)
        except QueueNotFound:
            pass
        else:  # the old behaviour made it: remove it
            await with_ghost.delete(gone)
