from __future__ import annotations

import asyncio

from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.clock import FakeClock
from conveyor.common.codec import encode_envelope
from conveyor.common.errors import PermanentError, RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.ops.dead_letters import DeadLetterFilter, DeadLetters
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer


class Job(BaseModel):
    n: int


async def populated() -> tuple[MemoryBroker, JobRegistry, dict[str, bool]]:
    """A DLQ with 3 exhausted, 2 permanent and 1 malformed entry."""
    broker = MemoryBroker()
    state = {"fixed": False}
    jobs = JobRegistry()

    @jobs.job("t.job", retry=RetryPolicy(max_attempts=1))
    async def handler(payload: Job, ctx: JobContext) -> None:
        if payload.n < 0:
            raise PermanentError("negative")
        if not state["fixed"]:
            raise RetryableError("down")

    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer, Worker(transport, jobs):
        for n in (1, 2, 3, -1, -2):
            await producer.publish("t.job", Job(n=n))
        await producer.transport.publish(DEFAULT_QUEUE, OutgoingMessage(body=b"garbage", message_id="p"))
        await broker.join(DEFAULT_QUEUE)
    return broker, jobs, state


async def dlq(broker: MemoryBroker) -> DeadLetters:
    transport = MemoryTransport(broker)
    await transport.connect()
    return DeadLetters(transport, DEFAULT_QUEUE, clock=FakeClock())


async def test_list_filters_and_leaves_entries_in_place() -> None:
    broker, _, _ = await populated()
    letters = await dlq(broker)
    assert len(await letters.list()) == 6
    assert {r.reason for r in await letters.list(DeadLetterFilter(reason="permanent"))} == {"permanent"}
    assert len(await letters.list(DeadLetterFilter(reason="exhausted"), limit=2)) == 2
    assert await letters.depth() == 6


async def test_dry_run_changes_nothing() -> None:
    broker, _, _ = await populated()
    letters = await dlq(broker)
    report = await letters.replay(DeadLetterFilter(reason="exhausted"), dry_run=True)
    assert (report.matched, report.replayed) == (3, 0)
    assert await letters.depth() == 6
    assert broker.depth(DEFAULT_QUEUE) == 0


async def test_replay_republishes_with_fresh_budget_same_id_and_history() -> None:
    broker, jobs, state = await populated()
    letters = await dlq(broker)
    [before] = await letters.list(DeadLetterFilter(reason="exhausted"), limit=1)
    state["fixed"] = True
    seen: list[tuple[str, int, int]] = []

    @jobs.job("t.audit", queue="unused")
    async def _unused(payload: Job, ctx: JobContext) -> None:
        return None

    report = await letters.replay(DeadLetterFilter(reason="exhausted"), limit=2)
    assert (report.matched, report.replayed) == (2, 2)
    assert await letters.depth() == 4
    transport = MemoryTransport(broker)
    await transport.connect()
    from conveyor.common.codec import decode_envelope

    while (delivery := await transport.get(DEFAULT_QUEUE)) is not None:
        env = decode_envelope(delivery.body)
        seen.append((env.job_id, env.attempt, len(env.history)))
        await delivery.ack()
    assert before.job_id in {s[0] for s in seen}
    assert all(attempt == 1 and history == 1 for _, attempt, history in seen)


async def test_malformed_entries_are_kept_not_replayed() -> None:
    broker, _, _ = await populated()
    letters = await dlq(broker)
    report = await letters.replay(DeadLetterFilter(reason="malformed"))
    assert (report.matched, report.replayed, report.skipped_unreplayable) == (1, 0, 1)
    assert await letters.depth() == 6


async def test_purge_removes_only_matching_entries() -> None:
    broker, _, _ = await populated()
    letters = await dlq(broker)
    assert await letters.purge(DeadLetterFilter(reason="permanent")) == 2
    assert sorted(r.reason for r in await letters.list()) == ["exhausted"] * 3 + ["malformed"]


async def test_show_finds_an_entry_by_its_dead_letter_id_and_by_its_job_id() -> None:
    broker, _, _ = await populated()
    letters = await dlq(broker)
    entries = await letters.list(DeadLetterFilter(reason="exhausted"))
    target = entries[1]
    assert target.job_id is not None and target.job_id != target.dead_letter_id
    by_dead_letter_id = await letters.show(target.dead_letter_id)
    by_job_id = await letters.show(target.job_id)
    assert by_dead_letter_id is not None and by_dead_letter_id.dead_letter_id == target.dead_letter_id
    assert by_job_id is not None and by_job_id.dead_letter_id == target.dead_letter_id
    assert await letters.show("no-such-id") is None
    assert await letters.depth() == 6, "showing removes nothing"


async def test_replay_while_the_bug_is_live_replays_each_entry_once_and_ends() -> None:
    broker, jobs, _ = await populated()  # the handler still fails: replayed jobs come straight back
    transport = MemoryTransport(broker)
    await transport.connect()
    before = {r.job_id for r in await (await dlq(broker)).list(DeadLetterFilter(reason="exhausted"))}
    async with Worker(transport, jobs):
        # a real clock: the rate's pauses let the worker fail each replayed job during the replay
        replayer = MemoryTransport(broker)
        await replayer.connect()
        letters = DeadLetters(replayer, DEFAULT_QUEUE)
        report = await asyncio.wait_for(letters.replay(DeadLetterFilter(reason="exhausted"), rate=200), 10)
        await broker.join(DEFAULT_QUEUE)
    assert (report.matched, report.replayed) == (3, 3)
    after = await (await dlq(broker)).list(DeadLetterFilter(reason="exhausted"))
    assert sorted(r.job_id or "" for r in after) == sorted(j or "" for j in before), "each dead-lettered again, once"
    assert all(len(r.history) == 2 for r in after), "one replayed attempt each"


async def test_a_replay_whose_confirm_never_comes_stops_with_an_unknown_outcome_and_keeps_the_entry() -> None:
    # A black-holed broker: `conveyor dlq replay` sat silent for 3.5 minutes (until the AMQP
    # heartbeat closed the connection), then ended in a traceback.
    from conveyor.common.errors import PublishOutcomeUnknown

    broker, _, _ = await populated()

    class Silent(MemoryTransport):
        async def publish(self, queue: str, message: OutgoingMessage) -> None:
            if queue == DEFAULT_QUEUE:
                await asyncio.Event().wait()  # no confirm, ever
            await super().publish(queue, message)

    transport = Silent(broker)
    await transport.connect()
    letters = DeadLetters(transport, DEFAULT_QUEUE, clock=FakeClock(), confirm_timeout=0.01)
    try:
        await letters.replay(DeadLetterFilter(reason="permanent"))
    except PublishOutcomeUnknown as exc:
        assert "may or may not be republished" in str(exc)
    else:
        raise AssertionError("the replay returned without its confirm")
    assert await letters.depth() == 6  # every entry still there, the one in flight included
    assert broker.depth(DEFAULT_QUEUE) == 0


async def test_a_limit_of_zero_lists_and_replays_nothing_and_a_negative_one_or_a_rate_that_is_no_rate_is_refused() -> None:
    # `dlq list --limit 0` listed one entry, `dlq replay --limit -5` replayed one, `--rate nan` hung.
    import math

    import pytest

    from conveyor.common.errors import ConfigurationError

    broker, _, _ = await populated()
    letters = await dlq(broker)
    assert await letters.list(limit=0) == []
    assert (await letters.replay(limit=0)).replayed == 0
    for bad in ({"limit": -5}, {"rate": math.nan}, {"rate": math.inf}, {"rate": 0.0}, {"rate": -1.0}, {"rate": 1e-300}):
        with pytest.raises(ConfigurationError):
            await letters.replay(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        await letters.list(limit=-1)
    assert await letters.depth() == 6 and broker.depth(DEFAULT_QUEUE) == 0


async def test_purge_takes_the_entries_present_when_it_starts_and_ends_while_the_dlq_is_fed() -> None:
    # A purge read until the DLQ was empty: fed by a live bug faster than it deleted, it never
    # ended, and it deleted entries written after the operator looked.
    broker, _, _ = await populated()
    fed: list[str] = []

    class Fed(MemoryTransport):
        async def get(self, queue: str):  # type: ignore[no-untyped-def]
            if queue.endswith(".dlq") and len(fed) < 1000:  # a new dead letter before every read
                await super().publish(queue, OutgoingMessage(body=b"late", message_id=f"late-{len(fed)}"))
                fed.append(queue)
            return await super().get(queue)

    transport = Fed(broker)
    await transport.connect()
    letters = DeadLetters(transport, DEFAULT_QUEUE, clock=FakeClock())
    assert await letters.purge() == 6  # the six present at the start, and it ended
    assert len(fed) < 1000
    assert await letters.depth() == len(fed)  # every later entry kept


async def test_entries_another_reader_holds_are_left_for_the_next_replay() -> None:
    # README, dlq replay: entries a `dlq list` or a console page holds when a replay starts are
    # left for the next run (the broker's depth counts only ready messages), never lost.
    broker, _, state = await populated()
    state["fixed"] = True
    letters = await dlq(broker)
    browser = MemoryTransport(broker)
    await browser.connect()
    held = [await browser.get(letters.dlq) for _ in range(2)]
    first = await letters.replay()
    assert first.matched == 4 and await letters.depth() == 1  # the malformed entry stays
    for delivery in held:
        assert delivery is not None
        await delivery.release()
    second = await letters.replay()
    assert second.matched == 3 and first.replayed + second.replayed == 5


async def test_a_job_sent_at_the_limit_is_retried_dead_lettered_replayed_and_edited_whole() -> None:
    # Its retry copy came back "oversize" (the copy's history counted against the job limit),
    # replay skipped it as undecodable, and an edit of the same size was refused.
    broker = MemoryBroker()
    runs: list[int] = []
    fixed = {"now": False}
    jobs = JobRegistry()

    @jobs.job("t.big", retry=RetryPolicy(max_attempts=2, base=0.01, jitter=0))
    async def handler(payload: Text, ctx: JobContext) -> None:
        runs.append(ctx.attempt)
        if not fixed["now"]:
            raise RetryableError("e" * 1000)

    limit = 64 * 1024
    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs, max_message_bytes=limit) as producer:
        empty = len(encode_envelope(producer.build_envelope("t.big", Text(text=""))))
        await producer.publish("t.big", Text(text="a" * (limit - empty)))
        await producer.publish("t.big", Text(text="b" * (limit - empty)))
        async with Worker(transport, jobs, config=WorkerConfig(max_message_bytes=limit)):
            await broker.join(DEFAULT_QUEUE)
            assert sorted(runs) == [1, 1, 2, 2]
            reader = MemoryTransport(broker)
            await reader.connect()
            letters = DeadLetters(reader, DEFAULT_QUEUE, clock=FakeClock(), max_message_bytes=limit)
            records = await letters.list()
            assert [r.reason for r in records] == ["exhausted", "exhausted"]
            fixed["now"] = True
            first, second = records
            assert await letters.replay_edited(first.dead_letter_id, {"text": "c" * (limit - empty)}) is not None
            report = await letters.replay(DeadLetterFilter(dead_letter_id=second.dead_letter_id))
            assert (report.replayed, report.skipped_unreplayable) == (1, 0)
            await broker.join(DEFAULT_QUEUE)
    assert runs[4:] == [1, 1] and await letters.depth() == 0


class Text(BaseModel):
    text: str
