"""What the DLQ tooling makes of each kind of entry: a worker's record of any size, a worker's
record this version cannot read, and a job message the broker itself dead-lettered."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from pydantic import BaseModel

from conveyor.common.codec import DEFAULT_MAX_MESSAGE_BYTES, encode_model
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.ops.dead_letters import DeadLetters
from conveyor.producer.producer import Producer
from conveyor.schemas.dead_letter import DeadLetterRecord

DLQ = DEFAULT_QUEUE + ".dlq"


class Job(BaseModel):
    n: int


def record(original: bytes, reason: str = "oversize") -> DeadLetterRecord:
    return DeadLetterRecord(
        dead_letter_id="dl-1", queue=DEFAULT_QUEUE, reason=reason, dead_lettered_at=datetime.now(UTC),
        worker_id="w1", original_body_b64=DeadLetterRecord.encode_body(original),
    )


async def entries(*messages: OutgoingMessage) -> list[DeadLetterRecord]:
    broker = MemoryBroker()
    transport = MemoryTransport(broker)
    await transport.connect()
    await transport.declare(DEFAULT_QUEUE)
    for message in messages:
        await transport.publish(DLQ, message)
    return await DeadLetters(transport, DEFAULT_QUEUE).list()


async def test_a_record_of_any_size_is_read_as_the_worker_wrote_it() -> None:
    original = b"x" * (48 * DEFAULT_MAX_MESSAGE_BYTES)  # its record: 64 MiB and more
    body = encode_model(record(original))
    assert len(body) > 64 * DEFAULT_MAX_MESSAGE_BYTES
    [entry] = await entries(OutgoingMessage(body=body, message_id="dl-1", headers={"x-conveyor-reason": "oversize"}))
    assert (entry.reason, entry.worker_id, len(entry.original_body)) == ("oversize", "w1", len(original))


async def test_a_record_this_version_cannot_read_keeps_the_reason_the_worker_gave_it() -> None:
    newer = orjson.loads(encode_model(record(b"{}", reason="exhausted")))
    newer |= {"record_version": 2, "replay_hint": "a field this version does not know"}
    [entry] = await entries(OutgoingMessage(body=orjson.dumps(newer), message_id="dl-1",
                                            headers={"x-conveyor-reason": "exhausted", "x-conveyor-job-type": "t.job"}))
    assert (entry.reason, entry.job_type, entry.dead_letter_id) == ("exhausted", "t.job", "dl-1")
    assert "cannot read" in (entry.error_message or "")
    assert entry.original_body == orjson.dumps(newer), "nothing is lost: the record's own bytes"


async def test_a_job_the_broker_dead_lettered_is_its_delivery_limit_whatever_its_headers_claim() -> None:
    envelope = Producer.for_registry(None, JobRegistry(), allow_unregistered=True).build_envelope(  # type: ignore[arg-type]
        "t.job", Job(n=1))
    forged = {"x-conveyor-reason": "exhausted"}  # any publisher can set it on a job
    [entry] = await entries(OutgoingMessage(body=encode_model(envelope), message_id=envelope.job_id, headers=forged))
    assert (entry.reason, entry.job_id, entry.worker_id) == ("delivery_limit", envelope.job_id, "broker")


async def test_a_replay_never_runs_what_was_labelled_for_another_reader() -> None:
    envelope = Producer.for_registry(None, JobRegistry(), allow_unregistered=True).build_envelope(  # type: ignore[arg-type]
        "t.job", Job(n=1))
    pickled = DeadLetterRecord(
        dead_letter_id="dl-1", queue=DEFAULT_QUEUE, reason="unsupported_content_type", dead_lettered_at=datetime.now(UTC),
        worker_id="w1", original_headers={"content-type": "application/x-python-serialize"},
        original_body_b64=DeadLetterRecord.encode_body(encode_model(envelope)),
    )
    broker = MemoryBroker()
    transport = MemoryTransport(broker)
    await transport.connect()
    await transport.declare(DEFAULT_QUEUE)
    await transport.publish(DLQ, OutgoingMessage(body=encode_model(pickled), message_id="dl-1"))
    report = await DeadLetters(transport, DEFAULT_QUEUE).replay()
    assert (report.matched, report.replayed, report.skipped_unreplayable) == (1, 0, 1)
    assert broker.depth(DEFAULT_QUEUE) == 0 and broker.depth(DLQ) == 1, "kept for inspection, not run"
