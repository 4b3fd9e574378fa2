"""``conveyor dlq show | replay`` on RabbitMQ, as an operator runs them: a subprocess each."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from conveyor.common.codec import encode_model
from conveyor.common.transport.base import OutgoingMessage
from conveyor.schemas.dead_letter import DeadLetterRecord
from tests.e2e.test_cli import conveyor
from tests.support.backends import require_env


@pytest.fixture
def amqp() -> str:
    return require_env("CONVEYOR_AMQP_URL")


@pytest.fixture
async def queue(amqp: str) -> AsyncIterator[str]:
    name = f"e2e.dlq.{uuid.uuid4().hex[:10]}"
    yield name
    from conveyor.common.transport.rabbitmq import RabbitMQTransport

    async with RabbitMQTransport(amqp) as transport:
        await transport.delete(name)


async def plant_dead_letters(amqp: str, queue: str, count: int) -> list[DeadLetterRecord]:
    """Dead letters written straight into ``queue``'s DLQ, each with its own dead-letter and job id."""
    from conveyor.common.transport.rabbitmq import RabbitMQTransport

    records = [
        DeadLetterRecord(
            dead_letter_id=f"dl-{uuid.uuid4()}", queue=queue, reason="permanent", error_type="ValueError",
            error_message="boom", dead_lettered_at=datetime.now(UTC), worker_id="e2e", job_id=str(uuid.uuid4()),
            job_type="e2e.nap", attempt=1, original_body_b64=DeadLetterRecord.encode_body(b'{"n": %d}' % n),
        )
        for n in range(count)
    ]
    async with RabbitMQTransport(amqp) as transport:
        await transport.declare(queue)
        for record in records:
            await transport.publish(
                transport.dead_letter_queue(queue),
                OutgoingMessage(body=encode_model(record), message_id=record.dead_letter_id, kind="dead_letter"),
            )
    return records


async def test_dlq_show_finds_an_entry_by_dead_letter_id_and_by_job_id(amqp: str, queue: str) -> None:
    records = await plant_dead_letters(amqp, queue, 3)
    target = records[1]
    env = {"CONVEYOR_BROKER_URL": amqp}
    for entry_id in (target.dead_letter_id, target.job_id):
        assert entry_id is not None
        shown = conveyor("dlq", "show", entry_id, "--queue", queue, env=env)
        assert shown.returncode == 0, shown.stderr
        data = json.loads(shown.stdout)
        assert (data["dead_letter_id"], data["job_id"]) == (target.dead_letter_id, target.job_id)
        assert data["original_body"] == {"n": 1}
    missing = conveyor("dlq", "show", "no-such-entry", "--queue", queue, env=env)
    assert missing.returncode == 1 and "no dead letter 'no-such-entry'" in missing.stderr
    listed = conveyor("dlq", "list", "--queue", queue, "--json", env=env)
    assert len(listed.stdout.splitlines()) == 3, "showing removes nothing"
