"""A dead-letter queue an earlier version declared on a real RabbitMQ 4.x (quorum, with the
default delivery limit of 20) is kept, and the log names the policy that lifts the limit, which
then keeps browsing from dropping anything. (A new DLQ has no limit: see
tests/conformance/test_dead_letter_browsing.py.)"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aio_pika
import pytest
import yarl

from conveyor.common.codec import encode_model
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from conveyor.consumer.ops.dead_letters import DeadLetters
from conveyor.schemas.dead_letter import DeadLetterRecord
from tests.support.rabbitmq_admin import add_scratch_vhost, delete_vhost, rabbitmqctl, user_url

pytestmark = pytest.mark.rabbitmq

BROWSES = 30  # past the default delivery limit of 20


@pytest.fixture
async def vhost_url(amqp_url: str) -> AsyncIterator[str]:
    """A vhost of its own: the test sets a policy there."""
    vhost = await add_scratch_vhost(amqp_url, "conveyor-dlq")
    url = yarl.URL(amqp_url)
    try:
        yield user_url(amqp_url, url.user or "guest", url.password or "guest", vhost)
    finally:
        await delete_vhost(vhost)


async def plant(transport: RabbitMQTransport, queue: str, count: int) -> list[str]:
    """Dead letters as a worker writes them; their dead-letter ids."""
    ids = []
    for n in range(count):
        record = DeadLetterRecord(
            dead_letter_id=f"dl-{uuid.uuid4()}", queue=queue, reason="permanent", error_type="ValueError",
            error_message="boom", dead_lettered_at=datetime.now(UTC), worker_id="test", job_id=str(uuid.uuid4()),
            job_type="test.job", attempt=1, original_body_b64=DeadLetterRecord.encode_body(b'{"n": %d}' % n),
        )
        await transport.publish(transport.dead_letter_queue(queue), OutgoingMessage(
            body=encode_model(record), message_id=record.dead_letter_id, kind="dead_letter"))
        ids.append(record.dead_letter_id)
    return ids


async def test_a_dlq_declared_with_the_default_delivery_limit_is_kept_and_the_log_names_the_policy_that_lifts_it(
    vhost_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = f"test.legacy.{uuid.uuid4().hex[:10]}"
    dlq = f"{queue}.dlq"
    connection = await aio_pika.connect(vhost_url)
    async with connection:  # as an earlier Conveyor declared it: quorum, no x-delivery-limit
        channel = await connection.channel()
        await channel.declare_queue(dlq, durable=True, arguments={"x-queue-type": "quorum"})

    vhost = yarl.URL(vhost_url).path[1:]
    async with RabbitMQTransport(vhost_url) as transport:
        with caplog.at_level(logging.ERROR, logger="conveyor.common.transport.rabbitmq"):
            await transport.declare(queue)  # neither refused nor replaced: it holds dead letters
        [advice] = [r.getMessage() for r in caplog.records if dlq in r.getMessage()]
        assert "default limit of 20" in advice
        ids = await plant(transport, queue, 3)

        # The advice, run as written, lifts the limit: 30 browses drop nothing.
        command = re.search(r"rabbitmqctl (set_policy .*?) \(policies", advice)
        assert command is not None, advice
        assert f"-p '{vhost}'" in advice
        await rabbitmqctl(*shlex.split(command.group(1)))
        await policy_applies(vhost, dlq)
        dead = DeadLetters(transport, queue)
        for browse in range(1, BROWSES + 1):
            assert sorted(r.dead_letter_id for r in await dead.list()) == sorted(ids), f"browse {browse}"


async def policy_applies(vhost: str, queue: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        listing = await rabbitmqctl("list_queues", "-p", vhost, "name", "policy", "--no-table-headers")
        if any(line.split("\t")[0] == queue and line.split("\t")[1].strip() for line in listing.splitlines()
               if "\t" in line):
            return
        assert time.monotonic() < deadline, f"no policy on {queue}: {listing}"
        await asyncio.sleep(0.2)
