"""Least-privilege RabbitMQ users, exactly as the README sets them up, against a real broker.

A fresh vhost per module holds three users with ``permissions(role, [QUEUE])`` (the regexes the
README prints): the producer may only publish new jobs, the worker may read its queue and
publish only retries and dead letters, the operator may read the DLQ and replay. A neighbour
queue whose name extends ours (``mail.out.urgent``) checks that the regexes are anchored.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yarl
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import AccessRefused, PermanentError, PublishNotConfirmed
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.base import Delivery, OutgoingMessage
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from conveyor.common.transport.rabbitmq.topology import permissions
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from tests.conftest import wait_until
from tests.support.backends import TEST_DELAY_TIERS
from tests.support.rabbitmq_admin import add_scratch_vhost, delete_vhost, rabbitmqctl, user_url

pytestmark = pytest.mark.rabbitmq
ROOT = Path(__file__).resolve().parents[2]
QUEUE = "mail.out"
NEIGHBOUR = "mail.out.urgent"  # another team's queue: its name starts with ours
UNDECLARED = "mail.later"  # the producer may publish here, but nobody declared it yet


@dataclass
class Broker:
    admin: str
    producer: str
    worker: str
    operator: str

    def transport(self, url: str) -> RabbitMQTransport:
        return RabbitMQTransport(url, delay_tiers=TEST_DELAY_TIERS, connect_timeout=5)


@pytest.fixture(scope="module")
def broker(amqp_url: str) -> Iterator[Broker]:
    """The vhost, the three users, and the topology the workers (and another team) declared."""
    tag = uuid.uuid4().hex[:8]
    users = {"producer": [QUEUE, UNDECLARED], "worker": [QUEUE], "operator": [QUEUE]}
    admin_url = yarl.URL(amqp_url)

    async def setup() -> Broker:
        urls: dict[str, str] = {}
        for role, queues in users.items():
            user, password = f"conveyor-{role}-{tag}", uuid.uuid4().hex
            await rabbitmqctl("add_user", user, password)
            rights = permissions(role, queues)  # what the README tells operators to run
            await rabbitmqctl("set_permissions", "-p", vhost, user, rights.configure, rights.write, rights.read)
            urls[role] = user_url(amqp_url, user, password, vhost)
        env = Broker(admin=user_url(amqp_url, admin_url.user or "guest", admin_url.password or "guest", vhost),
                     **urls)
        async with env.transport(env.worker) as worker:  # workers declare their queues at start
            await worker.declare(QUEUE)
        async with env.transport(env.admin) as admin:
            await admin.declare(NEIGHBOUR)
        return env

    async def teardown() -> None:
        await delete_vhost(vhost)
        for role in users:
            await rabbitmqctl("delete_user", f"conveyor-{role}-{tag}")

    vhost = asyncio.run(add_scratch_vhost(amqp_url, "conveyor-perms"))
    try:
        yield asyncio.run(setup())
    finally:
        asyncio.run(teardown())


def job(kind: str = "job", queue: str = QUEUE, delay: float = 0.0) -> OutgoingMessage:
    # Valid-looking bytes are not needed: these are refused before anyone reads them.
    return OutgoingMessage(body=b"{}", message_id=uuid.uuid4().hex, kind=kind, delay=delay)  # type: ignore[arg-type]


async def drain(broker: Broker, queue: str) -> list[Delivery]:
    """Take every message out of ``queue`` (as the admin); returns them, acked."""
    taken = []
    async with broker.transport(broker.admin) as admin:
        while (delivery := await admin.get(queue)) is not None:
            await delivery.ack()
            taken.append(delivery)
    return taken


class Step(BaseModel):
    name: str


def registry(log: list[tuple[str, int]], fixed: dict[str, bool]) -> JobRegistry:
    jobs = JobRegistry()
    fast = RetryPolicy(max_attempts=3, base=0.2, factor=1, cap=0.2, jitter=0)

    @jobs.job("perm.flaky", queue=QUEUE, retry=fast)
    async def flaky(payload: Step, ctx: JobContext) -> None:
        log.append((payload.name, ctx.attempt))
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")

    @jobs.job("perm.doomed", queue=QUEUE, retry=fast)
    async def doomed(payload: Step, ctx: JobContext) -> None:
        log.append((payload.name, ctx.attempt))
        if not fixed.get("yes"):
            raise PermanentError("not until the fix is deployed")

    return jobs


# -- producer ----------------------------------------------------------------------------------


async def test_producer_publishes_new_jobs_without_declaring(broker: Broker) -> None:
    async with broker.transport(broker.producer) as transport:
        # No configure permission: declare() checks the topology the worker created instead.
        await transport.declare(QUEUE)
        with pytest.raises(AccessRefused, match=f"must declare '{UNDECLARED}' first"):
            await transport.declare(UNDECLARED)
        async with Producer(transport, allow_unregistered=True, manage_transport=False) as producer:
            receipt = await producer.publish("perm.flaky", {"name": "p"}, queue=QUEUE)
            delayed = await producer.publish("perm.flaky", {"name": "later"}, queue=QUEUE, delay=0.2)
    taken = await _eventually_drain(broker, QUEUE, want=2)  # the delayed one after its tier
    assert {d.message_id for d in taken} == {receipt.job_id, delayed.job_id}


async def test_producer_may_not_publish_retries_dead_letters_or_to_other_queues(broker: Broker) -> None:
    async with broker.transport(broker.producer) as transport:
        for message, queue, exchange in [
            (job("retry", delay=0.2), QUEUE, f"{QUEUE}.retry"),
            (job("retry"), QUEUE, f"{QUEUE}.retry"),
            (job("dead_letter"), f"{QUEUE}.dlq", f"{QUEUE}.dlx"),
            (job(), NEIGHBOUR, f"{NEIGHBOUR}.jobs"),
        ]:
            with pytest.raises(PublishNotConfirmed, match="ACCESS_REFUSED") as refused:
                await transport.publish(queue, message)
            assert f"exchange '{exchange}'" in str(refused.value)
        with pytest.raises(AccessRefused, match="may not consume"):
            await transport.consume(QUEUE, _never, prefetch=1)
        with pytest.raises(AccessRefused, match="may not read"):
            await transport.get(f"{QUEUE}.dlq")
        # None of that broke the transport: a new job still goes through.
        await transport.publish(QUEUE, job())
    assert len(await _eventually_drain(broker, QUEUE, want=1)) == 1
    assert await drain(broker, NEIGHBOUR) == []


# -- worker ------------------------------------------------------------------------------------


async def test_worker_runs_jobs_and_publishes_retries_and_dead_letters_only(broker: Broker) -> None:
    log: list[tuple[str, int]] = []
    async with broker.transport(broker.producer) as transport:
        async with Producer(transport, allow_unregistered=True, manage_transport=False) as producer:
            await producer.publish("perm.flaky", {"name": "flaky"}, queue=QUEUE)
            doomed = await producer.publish("perm.doomed", {"name": "doomed"}, queue=QUEUE)
    worker_transport = broker.transport(broker.worker)
    config = WorkerConfig(concurrency=4, grace_period=5, metrics_interval=0.2)
    async with worker_transport, Worker(worker_transport, registry(log, {}), config=config) as worker:
        await wait_until(lambda: ("flaky", 2) in log and worker.counts["dead_lettered"] == 1, timeout=20,
                         what="a retry and a dead letter")
        assert worker.counts["retried"] == 1
        with pytest.raises(PublishNotConfirmed, match="ACCESS_REFUSED") as refused:
            await worker_transport.publish(QUEUE, job())  # a new job: the producer's exchange
        assert f"exchange '{QUEUE}.jobs'" in str(refused.value)
        with pytest.raises(PublishNotConfirmed, match="ACCESS_REFUSED"):
            await worker_transport.publish(NEIGHBOUR, job("retry"))
        with pytest.raises(AccessRefused, match="may not consume"):
            await worker_transport.consume(NEIGHBOUR, _never, prefetch=1)
        with pytest.raises(AccessRefused, match="may not read"):
            await worker_transport.get(f"{QUEUE}.dlq")  # dead letters are the operator's
        await asyncio.sleep(0.5)  # a stats sample ran with the worker's rights, too
    assert sorted(log) == [("doomed", 1), ("flaky", 1), ("flaky", 2)]
    dead = await drain(broker, f"{QUEUE}.dlq")
    assert len(dead) == 1 and json.loads(dead[0].body)["job_id"] == doomed.job_id


# -- operator ----------------------------------------------------------------------------------


def conveyor(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONVEYOR_BROKER_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "conveyor", *args, "--queue", QUEUE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


async def test_operator_lists_and_replays_dead_letters_and_nothing_more(broker: Broker) -> None:
    log: list[tuple[str, int]] = []
    fixed: dict[str, bool] = {}
    async with broker.transport(broker.producer) as transport:
        async with Producer(transport, allow_unregistered=True, manage_transport=False) as producer:
            doomed = await producer.publish("perm.doomed", {"name": "doomed"}, queue=QUEUE)
    worker_transport = broker.transport(broker.worker)
    config = WorkerConfig(concurrency=2, grace_period=5, metrics_interval=0)
    async with worker_transport, Worker(worker_transport, registry(log, fixed), config=config) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, timeout=20, what="a dead letter")
        listed = await asyncio.to_thread(conveyor, "dlq", "list", "--json", url=broker.operator)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout.splitlines()[0])["job_id"] == doomed.job_id
        fixed["yes"] = True
        replayed = await asyncio.to_thread(conveyor, "dlq", "replay", url=broker.operator)
        assert replayed.returncode == 0, replayed.stderr
        assert "replayed 1 of 1" in replayed.stdout
        await wait_until(lambda: ("doomed", 1) in log[1:], timeout=20, what="the replayed job to run")
    assert worker.counts["succeeded"] == 1
    async with broker.transport(broker.operator) as operator:
        assert await operator.depth(f"{QUEUE}.dlq") == 0
        with pytest.raises(PublishNotConfirmed, match="ACCESS_REFUSED"):
            await operator.publish(QUEUE, job("retry"))
        with pytest.raises(PublishNotConfirmed, match="ACCESS_REFUSED"):
            await operator.publish(f"{QUEUE}.dlq", job("dead_letter"))
        with pytest.raises(AccessRefused, match="may not consume"):
            await operator.consume(QUEUE, _never, prefetch=1)


# -- helpers -----------------------------------------------------------------------------------


async def _never(delivery: Delivery) -> None:  # pragma: no cover - never called: consume is refused
    raise AssertionError("a refused consumer received a message")


async def _eventually_drain(broker: Broker, queue: str, *, want: int, timeout: float = 10.0) -> list[Delivery]:
    taken: list[Delivery] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(taken) < want:
        assert asyncio.get_running_loop().time() < deadline, f"{queue}: {len(taken)} of {want} messages arrived"
        taken += await drain(broker, queue)
        await asyncio.sleep(0.05)
    return taken
