"""A Pulsar topic past its backlog quota (policy ``producer_exception``) against a real broker:
README Guarantees says such a refusal is a nack (``PublishNacked``), retried with the same job
id, and the job is taken once the consumers catch up.

The broker refuses a new producer at once when the topic is over its quota; a producer created
before goes on until the broker's periodic quota check (60 s by default), too slow for CI, so
the test makes the refusal at producer creation: the backlog is written by one client, the
publish comes from another."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator

import pytest

from conveyor.common.errors import PublishNacked
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.pulsar import PulsarTransport
from conveyor.producer.producer import Producer

pytestmark = pytest.mark.pulsar

def _admin(base: str, method: str, path: str, body: object = None) -> int:
    """One call to the broker's admin API (``base``: the transport's ``admin_url``)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}/admin/v2{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from None


@pytest.fixture
def admin_url(pulsar_url: str) -> str:
    return PulsarTransport(pulsar_url).admin_url


@pytest.fixture
async def namespace(admin_url: str) -> AsyncIterator[str]:
    """A namespace of its own whose topics take at most 10 KiB of backlog, then refuse producers."""
    name = f"quota-{uuid.uuid4().hex[:10]}"
    await asyncio.to_thread(_admin, admin_url, "PUT", f"/namespaces/public/{name}", {})
    await asyncio.to_thread(
        _admin, admin_url, "POST", f"/namespaces/public/{name}/backlogQuota?backlogQuotaType=destination_storage",
        {"limitSize": 10240, "limitTime": -1, "policy": "producer_exception"},
    )
    yield name
    await asyncio.to_thread(_admin, admin_url, "DELETE", f"/namespaces/public/{name}?force=true")  # with its topics


async def test_a_topic_past_its_backlog_quota_nacks_and_takes_the_job_once_consumers_catch_up(
    pulsar_url: str, admin_url: str, namespace: str
) -> None:
    queue = "jobs"
    async with PulsarTransport(pulsar_url, namespace=namespace) as filler:
        await filler.declare(queue)  # the subscription whose backlog counts
        for _ in range(20):
            await filler.publish(queue, OutgoingMessage(body=b"x" * 1024, message_id=uuid.uuid4().hex))
    async with PulsarTransport(pulsar_url, namespace=namespace) as transport:
        producer = Producer(transport, allow_unregistered=True, publish_tries=3)
        with pytest.raises(PublishNacked, match="ProducerBlockedQuotaExceeded"):
            await producer.publish("quota.job", {"n": 1}, queue=queue)
        assert (await transport.stats(queue)).ready == 20  # the refused job is not on the topic

        # The consumers catch up (here: the operator skips the backlog).
        await asyncio.to_thread(
            _admin, admin_url, "POST", f"/persistent/public/{namespace}/{queue}/subscription/{transport.subscription}/skip_all"
        )
        receipt = await producer.publish("quota.job", {"n": 2}, queue=queue)
        delivery = None
        for _ in range(20):
            delivery = await transport.get(queue)
            if delivery is not None:
                break
        assert delivery is not None and receipt.job_id.encode() in delivery.body
        await delivery.ack()
