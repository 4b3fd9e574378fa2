"""The console's handlers on real brokers (aiohttp's test client, no browser): as RabbitMQ's
least-privilege operator user, and on Pulsar. A hundred browses (25 on Pulsar, where one browse
takes about half a second: its empty-queue check waits) leave every dead letter in place; a replay and a purge through the console reach the broker."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer

from conveyor.common.codec import encode_model
from conveyor.common.transport.base import OutgoingMessage, Transport
from conveyor.common.transport.factory import transport_from_url
from conveyor.consumer.ops.console import ConsoleConfig, ConsoleState, OverviewHistory, build_app
from conveyor.consumer.ops.console.state import STATE
from conveyor.consumer.ops.dead_letters import DeadLetters
from conveyor.producer.producer import Producer
from conveyor.schemas.dead_letter import DeadLetterRecord
from tests.integration.test_rabbitmq_permissions import QUEUE, Broker, broker  # noqa: F401 (a fixture)


async def plant(transport: Transport, queue: str, count: int) -> list[str]:
    """Dead letters whose originals are real jobs (so they can be replayed); their ids, in order."""
    producer = Producer(transport, allow_unregistered=True, manage_transport=False, declare_queues=False)
    ids = []
    for n in range(count):
        envelope = producer.build_envelope("console.job", {"n": n})
        record = DeadLetterRecord(
            dead_letter_id=f"dl-{uuid.uuid4()}", queue=queue, reason="permanent", error_type="ValueError",
            error_message="boom", dead_lettered_at=datetime.now(UTC), worker_id="it", job_id=envelope.job_id,
            job_type="console.job", attempt=1, original_body_b64=DeadLetterRecord.encode_body(encode_model(envelope)))
        await transport.publish(transport.dead_letter_queue(queue),
                                OutgoingMessage(body=encode_model(record), message_id=record.dead_letter_id,
                                                kind="dead_letter"))
        ids.append(record.dead_letter_id)
    return ids


async def console_for(transport: Transport, queue: str) -> TestClient:  # type: ignore[type-arg]
    config = ConsoleConfig(queues=(queue,), refresh=0.5)
    state = ConsoleState(config=config, transport=transport, history=OverviewHistory(60))
    client = TestClient(TestServer(build_app(state)))
    await client.start_server()
    return client


async def exercise(client: TestClient, queue: str, planted: list[str], letters: DeadLetters,  # type: ignore[type-arg]
                   browses: int) -> None:
    overview = await (await client.get("/api/overview")).json()
    assert overview["queues"][0]["dead_letters"] == len(planted), overview
    for _ in range(browses):
        page = await client.get(f"/dead-letters?queue={queue}")
        assert page.status == 200
    html = await page.text()
    shown = re.findall(r'name="ids" value="([^"]+)"', html)
    listed = [r.dead_letter_id for r in await letters.list()]
    # Every entry, none twice. Not in order: both brokers may put back what a scan gave back in
    # another order (RabbitMQ 4.0.5 and Pulsar 4.0.6 both did here).
    assert sorted(shown) == sorted(listed) == sorted(planted) and len(set(shown)) == len(planted)
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert token
    origin = f"http://{client.host}:{client.port}"
    replayed = await client.post(f"/dead-letters/{queue}/replay", headers={"Origin": origin}, allow_redirects=False,
                                 data={"csrf_token": token.group(1), "ids": planted[0], "confirm": "replay"})
    assert replayed.status == 303 and replayed.headers["Location"].startswith("/replays/")
    run = client.server.app[STATE].replays.get(replayed.headers["Location"].rsplit("/", 1)[1])
    assert run is not None and run.task is not None
    await run.task  # a background replay
    assert (run.report.matched, run.report.replayed, run.error) == (1, 1, None)
    purged = await client.post(f"/dead-letters/{queue}/purge", headers={"Origin": origin}, allow_redirects=False,
                               data={"csrf_token": token.group(1), "ids": planted[1], "confirm": "purge"})
    assert purged.status == 303 and "purged+1+entries" in purged.headers["Location"]
    # The rest stay.
    assert sorted(r.dead_letter_id for r in await letters.list()) == sorted(planted[2:])


@pytest.mark.rabbitmq
async def test_the_console_as_rabbitmqs_operator_user(broker: Broker) -> None:  # noqa: F811
    async with broker.transport(broker.admin) as admin:
        planted = await plant(admin, QUEUE, 4)
    try:
        async with broker.transport(broker.operator) as operator:
            client = await console_for(operator, QUEUE)
            try:
                await exercise(client, QUEUE, planted, DeadLetters(operator, QUEUE), browses=100)
            finally:
                await client.close()
        async with broker.transport(broker.admin) as admin:
            job = await admin.get(QUEUE)  # the replayed job, in the work queue
            assert job is not None and b"console.job" in job.body
            await job.ack()
    finally:
        async with broker.transport(broker.admin) as admin:
            while (left := await admin.get(f"{QUEUE}.dlq")) is not None:
                await left.ack()


@pytest.fixture
async def pulsar_queue(pulsar_url: str) -> AsyncIterator[tuple[Transport, str]]:
    queue = f"it.console.{uuid.uuid4().hex[:10]}"
    async with transport_from_url(pulsar_url) as transport:
        await transport.declare(queue)
        try:
            yield transport, queue
        finally:
            await transport.delete(queue)


@pytest.mark.pulsar
async def test_the_console_on_pulsar(pulsar_queue: tuple[Transport, str]) -> None:
    transport, queue = pulsar_queue
    planted = await plant(transport, queue, 4)
    client = await console_for(transport, queue)
    try:
        await exercise(client, queue, planted, DeadLetters(transport, queue), browses=25)
    finally:
        await client.close()
    assert await transport.depth(queue) == 1  # the replayed job
