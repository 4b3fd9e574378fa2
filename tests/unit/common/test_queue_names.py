"""Queue names every broker takes: refused at registration and by the in-memory broker, so a job
that runs in a unit test runs on RabbitMQ and on Pulsar too."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from conveyor.common.errors import ConfigurationError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.queue_names import MAX_QUEUE_NAME, check_portable_queue_name
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport


class Ping(BaseModel):
    n: int


@pytest.mark.parametrize("name", ["emails", "orders.high-priority", "tenant:eu_1", "q" * MAX_QUEUE_NAME, "a.dlq.b"])
def test_portable_names_pass(name: str) -> None:
    assert check_portable_queue_name(name) == name


@pytest.mark.parametrize(("name", "why"), [
    ("", "use 1 to"),
    ("emails high", "use 1 to"),  # RabbitMQ takes a space, Pulsar does not
    ("jobs#1", "use 1 to"),
    ("orders=eu", "use 1 to"),  # Pulsar takes '=', RabbitMQ does not
    ("tâches", "use 1 to"),
    ("emails\n", "use 1 to"),
    ("q" * (MAX_QUEUE_NAME + 1), "use 1 to"),
    ("amq.jobs", "reserved by RabbitMQ"),
    ("orders.dlq", "dead-letter queues"),
    ("orders-DLQ", "dead-letter queues"),
    (None, "use 1 to"),
    (5, "use 1 to"),
])
def test_names_a_broker_would_refuse_are_one_line_configuration_errors(name: object, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why) as caught:
        check_portable_queue_name(name)
    assert "\n" not in str(caught.value)


def test_the_registry_refuses_such_a_queue_when_the_job_is_registered() -> None:
    jobs = JobRegistry()
    with pytest.raises(ConfigurationError, match="t.ping: queue 'emails high'"):
        @jobs.job("t.ping", queue="emails high")
        async def ping(payload: Ping, ctx: JobContext) -> None:
            pass
    assert jobs.queues() == []


async def test_the_memory_broker_refuses_to_declare_what_a_real_broker_would_refuse() -> None:
    broker = MemoryBroker()
    async with MemoryTransport(broker) as transport:
        with pytest.raises(ConfigurationError, match="dead-letter queues"):
            await transport.declare("orders.dlq")
        await transport.declare("orders")
    assert broker.queue_names() == ["orders", "orders.dlq"]
