"""AMQP's own content labels (real RabbitMQ): a body labelled as something other than JSON never runs.

Producers of other frameworks label what they send in the AMQP message properties (kombu's
pickle: ``content_type="application/x-python-serialize"``; a compressing client:
``content_encoding="gzip"``). A valid Conveyor envelope under such a label is still bytes meant
for another reader: it is dead-lettered unread with the reason, and the record shows the label.
"""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from pydantic import BaseModel

from conveyor.common.codec import decode_dead_letter, encode_model
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from conveyor.common.transport.rabbitmq.topology import jobs_exchange
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from tests.conftest import wait_until

pytestmark = pytest.mark.rabbitmq


class Note(BaseModel):
    text: str


async def publish_labelled(amqp_url: str, queue: str, body: bytes, message_id: str, **labels: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(jobs_exchange(queue), ensure=False)
        message = aio_pika.Message(body, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                   **labels)  # type: ignore[arg-type]
        await exchange.publish(message, routing_key=queue, mandatory=True)
    finally:
        await connection.close()


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"content_type": "application/x-python-serialize", "content_encoding": "binary"}, "unsupported_content_type"),
        ({"content_type": "application/json", "content_encoding": "gzip"}, "unsupported_content_encoding"),
    ],
    ids=["kombu pickle", "gzip"],
)
async def test_a_valid_envelope_under_an_amqp_label_for_another_content_is_dead_lettered_unread(
    amqp_url: str, queue_name: str, transport: RabbitMQTransport, labels: dict[str, str], reason: str
) -> None:
    ran: list[str] = []
    jobs = JobRegistry()

    @jobs.job("labels.note", queue=queue_name)
    async def note(payload: Note, ctx: JobContext) -> None:
        ran.append(payload.text)

    producer = Producer.for_registry(transport, jobs, manage_transport=False)
    labelled = producer.build_envelope("labels.note", Note(text="labelled"))
    plain = producer.build_envelope("labels.note", Note(text="plain"))
    body = encode_model(labelled)
    await publish_labelled(amqp_url, queue_name, body, labelled.job_id, **labels)
    # What kombu sends with its JSON serializer (charset in content_encoding) runs.
    await publish_labelled(amqp_url, queue_name, encode_model(plain), plain.job_id,
                           content_type="application/json", content_encoding="utf-8")
    async with Worker(transport, jobs, config=WorkerConfig(concurrency=2, metrics_interval=0)) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1 and worker.counts["succeeded"] == 1,
                         what="the labelled message in the DLQ and the plain one run")
        await asyncio.sleep(0.3)
        assert worker.counts["released"] == 0
    assert ran == ["plain"]
    dead = await transport.get(transport.dead_letter_queue(queue_name))
    assert dead is not None
    record = decode_dead_letter(dead.body)
    await dead.ack()
    assert (record.reason, record.original_body) == (reason, body)
    assert record.original_headers["content-type"] == labels["content_type"]
    assert record.original_headers["content-encoding"] == labels["content_encoding"]
    assert "content-type" not in dead.headers, "the record is Conveyor's JSON, not the original's label"
