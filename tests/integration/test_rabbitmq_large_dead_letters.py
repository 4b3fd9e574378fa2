"""A dead letter far larger than the message limit is listed as what the worker recorded (real RabbitMQ).

Issue 13, defect 17: a 50 MiB original over the 1 MiB limit is dead-lettered ``oversize``, and its
record (the original in base64) is 66.7 MiB; ``dlq list`` read records only up to 64 × the limit,
so it showed the entry as ``delivery_limit``, "broker dead-lettered … crash loop backstop". The
same here at 1/64 of the size: the installation's limit is 16 KiB, the original 1.2 MiB.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

import conveyor.common.codec
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from conveyor.consumer.ops.dead_letters import DeadLetterFilter, DeadLetters
from conveyor.consumer.worker import Worker, WorkerConfig
from tests.conftest import wait_until

pytestmark = pytest.mark.rabbitmq

LIMIT = 16 * 1024


class Note(BaseModel):
    blob: str


async def test_a_dead_letter_far_over_the_message_limit_is_listed_with_the_reason_the_worker_recorded(
    queue_name: str, transport: RabbitMQTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conveyor.common.codec, "DEFAULT_MAX_MESSAGE_BYTES", LIMIT)  # the installation's limit
    jobs = JobRegistry()

    @jobs.job("large.note", queue=queue_name)
    async def note(payload: Note, ctx: JobContext) -> None:  # never runs
        raise AssertionError("an oversize message must not run")

    original = b'{"job_type": "large.note", "blob": "' + b"x" * (75 * LIMIT) + b'"}'
    assert len(original) > 64 * LIMIT * 3 // 4, "its record is over 64 x the limit"
    await transport.publish(queue_name, OutgoingMessage(body=original, message_id="large-1"))
    config = WorkerConfig(concurrency=1, max_message_bytes=LIMIT, metrics_interval=0)
    async with Worker(transport, jobs, config=config) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="the oversize message in the DLQ")

    dead_letters = DeadLetters(transport, queue_name, max_message_bytes=LIMIT)
    for _ in range(3):  # browsing changes nothing
        [entry] = await dead_letters.list()
        assert (entry.reason, entry.worker_id) == ("oversize", worker.config.worker_id)
        assert entry.original_body == original
        assert "crash loop" not in (entry.error_message or "")
    assert [e.reason for e in await dead_letters.list(DeadLetterFilter(reason="oversize"))] == ["oversize"]
    assert await dead_letters.list(DeadLetterFilter(reason="delivery_limit")) == []
    for _ in range(50):
        if await dead_letters.depth() == 1:
            break
        await asyncio.sleep(0.05)
    report = await dead_letters.replay()
    assert (report.matched, report.replayed, report.skipped_unreplayable) == (1, 0, 1), "still oversize: kept"
    await asyncio.sleep(0.2)
    assert await dead_letters.depth() == 1
