"""Browsing a dead-letter queue never damages it, however often an operator does it.

``conveyor dlq list``, ``dlq show`` and ``status`` read the DLQ through ``DeadLetters`` (take
each entry, give it back at the end). On RabbitMQ 4.x every way of giving a message back
counts as a delivery (measured on 4.0.5: nack, reject, a closed channel or connection, a
cancelled consumer), and a quorum queue has a default delivery limit of 20: a DLQ declared
with that default lost its entries after the 20th browse. Here an operator browses 100 times;
every entry must still be there, with its body, after each browse.
"""

from __future__ import annotations

import asyncio
import time

from conveyor.common.codec import decode_dead_letter, decode_envelope
from conveyor.common.errors import PermanentError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.base import Transport
from conveyor.consumer.ops.dead_letters import DeadLetters
from conveyor.consumer.ops.status import collect_status
from conveyor.consumer.worker import Worker
from conveyor.schemas.dead_letter import DeadLetterRecord
from tests.conformance.test_job_lifecycle import Ping, fast_config, producer_for, registry_for
from tests.conftest import wait_until
from tests.support.backends import Backend

BROWSES = 100  # well past RabbitMQ 4.x's default delivery limit (20)
ENTRIES = 3


def entry(record: DeadLetterRecord) -> tuple[str, str | None, str, bytes]:
    """What must never change while browsing: ids, reason and the original body."""
    return record.dead_letter_id, record.job_id, record.reason, record.original_body


def entries(records: list[DeadLetterRecord]) -> list[tuple[str, str | None, str, bytes]]:
    return sorted(entry(r) for r in records)


async def depth_becomes(transport: Transport, queue: str, expected: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (depth := await transport.depth(queue)) != expected:
        assert time.monotonic() < deadline, f"{queue} holds {depth} messages, not {expected}"
        await asyncio.sleep(0.05)


async def test_browsing_the_dlq_a_hundred_times_keeps_every_entry_intact(backend: Backend) -> None:
    async def doomed(payload: Ping, ctx: JobContext) -> None:
        raise PermanentError(f"no such account {payload.n}")

    jobs = registry_for(backend, doomed)
    producer = await producer_for(backend, jobs)
    sent = {(await producer.publish("test.ping", Ping(n=n))).job_id: n for n in range(ENTRIES)}
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == ENTRIES, what="the dead letters")

    operator = await backend.transport()  # what `conveyor dlq …` and `status` use
    dead = DeadLetters(operator, backend.queue)
    first = await dead.list()
    assert {r.job_id: decode_envelope(r.original_body).payload.data["n"] for r in first} == sent
    expected = entries(first)
    for browse in range(1, BROWSES + 1):
        assert entries(await dead.list()) == expected, f"browse {browse} changed the DLQ"
        if browse % 25 == 0:
            job_id = sorted(sent)[browse // 25 % ENTRIES]
            shown = await dead.show(job_id)
            assert shown is not None and shown.job_id == job_id, f"dlq show {job_id} after {browse} browses"
            # Status browses only a DLQ whose depth it sees, and depth is a snapshot: a message
            # given back a moment ago (here by `show`) may not count yet on RabbitMQ.
            await depth_becomes(operator, operator.dead_letter_queue(backend.queue), ENTRIES)
            [row] = (await collect_status(operator, [backend.queue], interval=0)).queues
            assert (row.dead_letters_scanned, row.dead_letters_by_reason) == (ENTRIES, {"permanent": ENTRIES})

    # Still all there for a reader that takes them: every record and its body byte for byte.
    reader = await backend.transport()
    taken = []
    while (delivery := await reader.get(reader.dead_letter_queue(backend.queue))) is not None:
        taken.append(decode_dead_letter(delivery.body))
        await delivery.ack()
    assert entries(taken) == expected


async def dead_letter(backend: Backend, count: int) -> JobRegistry:
    """``count`` jobs of a handler that always fails, dead-lettered; its registry (to run it again)."""
    async def doomed(payload: Ping, ctx: JobContext) -> None:
        raise PermanentError("doomed")

    jobs = registry_for(backend, doomed)
    producer = await producer_for(backend, jobs)
    for n in range(count):
        await producer.publish("test.ping", Ping(n=n))
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == count, what="the dead letters")
    return jobs


async def test_right_after_a_browse_the_depth_is_whole_and_a_replay_takes_every_entry(backend: Backend) -> None:
    """A browse waits until the broker counts what it gave back: RabbitMQ 4.0.5 answered a depth
    query right after one with fewer entries (21 times in 30), and a replay bounds its snapshot by
    that depth, so a replay right after a browse (the console's list page, then its replay button)
    took too few."""
    await dead_letter(backend, ENTRIES)
    dead = DeadLetters(await backend.transport(), backend.queue)
    for browse in range(10):
        assert len(await dead.list()) == ENTRIES
        assert await dead.depth() == ENTRIES, f"the depth right after browse {browse}"
        report = await dead.replay(dry_run=True)
        assert report.matched == ENTRIES, f"a replay right after browse {browse} saw {report.matched}"


async def test_a_dead_letter_arriving_after_a_replay_is_not_held_by_the_replayer(backend: Backend) -> None:
    """A replay that republished every entry it took ended its scan early with nothing given back;
    on Pulsar its reader stayed open and its prefetch took the next dead letter to arrive, unseen
    by other readers and not counted, for as long as the process lived (a console's does)."""
    jobs = await dead_letter(backend, 1)
    replayer = DeadLetters(await backend.transport(), backend.queue)  # kept open, like a console's
    assert (await replayer.replay()).replayed == 1
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="the dead letter again")
    other = await backend.transport()
    await depth_becomes(other, other.dead_letter_queue(backend.queue), 1)
    assert len(await DeadLetters(other, backend.queue).list()) == 1
