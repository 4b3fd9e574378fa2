"""Job time limits against RabbitMQ's consumer timeout (issue 13, defect 7), on RabbitMQ 4.0.5.

A delivery kept unacknowledged past the queue's consumer timeout makes the broker close the
whole channel: every job in flight on it is redelivered. The worker declares its work queues with
``x-consumer-timeout`` (24 h) and refuses to start a job that might outlast the timeout it can
vouch for. The broker's default is 30 minutes; the last test lowers the node's default for the
few seconds in which its workers open their channels (a channel keeps the node's value from
when it opened: measured), so a job can outlast it in about a minute (the broker checks once
per 60 s channel tick).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import time
from collections.abc import AsyncIterator

import aio_pika
import pytest
from pydantic import BaseModel

from conveyor.common.errors import ConfigurationError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from conveyor.common.transport.rabbitmq.topology import CONSUMER_TIMEOUT, Topology
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from tests.support.rabbitmq_admin import rabbitmqctl

pytestmark = pytest.mark.rabbitmq

TIERS = (1.0,)


class Empty(BaseModel):
    pass


def jobs_for(queue: str, timeout: float, handler: object = None, job_type: str = "report.build") -> JobRegistry:
    jobs = JobRegistry()
    jobs.job(job_type, queue=queue, timeout=timeout, model=Empty)(handler or (lambda payload, ctx: None))
    return jobs


def transport_for(url: str, **kwargs: object) -> RabbitMQTransport:
    return RabbitMQTransport(url, delay_tiers=TIERS, connect_timeout=5.0, **kwargs)  # type: ignore[arg-type]


async def declare_as_an_earlier_version(url: str, queue: str) -> None:
    """The work queue as Conveyor declared it before it set x-consumer-timeout."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        arguments = Topology.create(TIERS, 20).legacy_work_queue_arguments(queue, f"{queue}.dlq")
        await channel.declare_queue(queue, durable=True, arguments=arguments)
    finally:
        await connection.close()


async def queue_arguments(queue: str) -> str:
    for line in (await rabbitmqctl("list_queues", "name", "arguments", "--no-table-headers")).splitlines():
        name, _, arguments = line.partition("\t")
        if name == queue:
            return arguments
    raise AssertionError(f"no queue {queue!r}")


@pytest.fixture
async def cleanup(amqp_url: str) -> AsyncIterator[list[str]]:
    queues: list[str] = []
    yield queues
    async with transport_for(amqp_url) as transport:
        for queue in queues:
            await transport.delete(queue)


async def test_a_job_that_may_outlast_an_existing_queues_consumer_timeout_stops_the_worker_at_start(
    amqp_url: str, queue_name: str, cleanup: list[str]
) -> None:
    cleanup.append(queue_name)
    await declare_as_an_earlier_version(amqp_url, queue_name)
    async with transport_for(amqp_url) as transport:
        worker = Worker(transport, jobs_for(queue_name, timeout=3600), config=WorkerConfig(concurrency=2))
        with pytest.raises(ConfigurationError) as raised:
            await worker.start()
        await worker.stop()
        assert (await transport.stats(queue_name)).consumers == 0  # it never consumed
    text = str(raised.value)
    assert "\n" not in text
    assert f"job 'report.build' (timeout 3600s) may keep a delivery of queue '{queue_name}'" in text
    assert "RabbitMQ's consumer timeout for it (1800s)" in text
    policy = re.search(r"rabbitmqctl (set_policy .*?'\{.*?\}')", text)
    assert policy is not None, text
    # The fix it names works: the policy, and the worker told about it.
    await rabbitmqctl(*shlex.split(policy.group(1)))
    try:
        assert f"conveyor-consumer-timeout-{queue_name}" in await rabbitmqctl("list_policies")
        async with transport_for(amqp_url, consumer_timeout=CONSUMER_TIMEOUT) as transport:
            async with Worker(transport, jobs_for(queue_name, timeout=3600), config=WorkerConfig(concurrency=2)):
                assert (await transport.stats(queue_name)).consumers == 1
    finally:
        await rabbitmqctl("clear_policy", f"conveyor-consumer-timeout-{queue_name}")


async def test_an_existing_queue_still_runs_jobs_that_fit_the_brokers_default_timeout(
    amqp_url: str, queue_name: str, cleanup: list[str]
) -> None:
    cleanup.append(queue_name)
    await declare_as_an_earlier_version(amqp_url, queue_name)
    async with transport_for(amqp_url) as transport:
        async with Worker(transport, jobs_for(queue_name, timeout=600), config=WorkerConfig(concurrency=2)):
            assert (await transport.stats(queue_name)).consumers == 1
    assert "x-consumer-timeout" not in await queue_arguments(queue_name)  # kept as it was


async def test_a_job_longer_than_conveyors_own_consumer_timeout_is_refused_at_start(
    amqp_url: str, queue_name: str, cleanup: list[str]
) -> None:
    cleanup.append(queue_name)
    async with transport_for(amqp_url) as transport:
        worker = Worker(transport, jobs_for(queue_name, timeout=24 * 3600), config=WorkerConfig(concurrency=2))
        with pytest.raises(ConfigurationError, match="lower the job's timeout"):
            await worker.start()
        await worker.stop()
    assert f'"x-consumer-timeout",{round(CONSUMER_TIMEOUT * 1000)}' in await queue_arguments(queue_name)


async def test_a_job_running_past_the_brokers_default_consumer_timeout_is_not_redelivered(
    amqp_url: str, queue_name: str, cleanup: list[str]
) -> None:
    """Two workers open their channels while the node's default is 20 s: one on a queue an earlier
    version declared (the control: the broker takes its job back), one on a queue it declares.
    Each job runs 65 s, past the first 60 s tick at which the broker checks."""
    legacy_queue = f"{queue_name}.legacy"
    cleanup += [queue_name, legacy_queue]
    await declare_as_an_earlier_version(amqp_url, legacy_queue)
    runs: dict[str, list[int]] = {queue_name: [], legacy_queue: []}

    async def long_job(payload: Empty, ctx: JobContext) -> None:
        runs[ctx.queue].append(ctx.attempt)
        await asyncio.sleep(65)

    transports = [transport_for(amqp_url) for _ in range(3)]
    workers = [Worker(transports[i], jobs_for(queue, timeout=120, handler=long_job), config=WorkerConfig(concurrency=1))
               for i, queue in enumerate((queue_name, legacy_queue))]
    default = (await rabbitmqctl("eval", "application:get_env(rabbit, consumer_timeout).")).strip()
    assert default == "{ok,1800000}", f"the test broker's consumer_timeout is {default}"
    await rabbitmqctl("eval", "application:set_env(rabbit, consumer_timeout, 20000).")
    try:
        for transport, worker in zip(transports, workers, strict=False):
            await transport.connect()
            await worker.start()
    finally:
        await rabbitmqctl("eval", "application:set_env(rabbit, consumer_timeout, 1800000).")
    try:
        await transports[2].connect()
        for queue in (queue_name, legacy_queue):
            producer = Producer.for_registry(transports[2], jobs_for(queue, timeout=120), manage_transport=False)
            await producer.publish("report.build", {})
        started = time.monotonic()
        while time.monotonic() - started < 80 and not (workers[0].counts["succeeded"] and len(runs[legacy_queue]) > 1):
            await asyncio.sleep(0.5)
    finally:
        for worker in workers:
            await worker.stop(grace_period=0)
        for transport in transports:
            await transport.close()
    assert len(runs[legacy_queue]) > 1, "control: the node's 20 s default did not take the legacy queue's job back"
    assert runs[queue_name] == [1], f"the job on a queue Conveyor declared ran {len(runs[queue_name])} times"
    assert workers[0].counts["succeeded"] == 1
    assert json.dumps("x-consumer-timeout")[1:-1] in await queue_arguments(queue_name)
