from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel, ValidationError

from conveyor.common.clock import FakeClock, SystemClock
from conveyor.common.errors import (
    ConfigurationError,
    InvalidPayload,
    MalformedMessage,
    MessageTooLarge,
    PublishNacked,
    PublishNotConfirmed,
    UnknownJobType,
)
from conveyor.common.headers import DUE_AT
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.producer.producer import Producer


class Email(BaseModel):
    to: str


def jobs() -> JobRegistry:
    registry = JobRegistry()
    registry.job("email.send")(_handler)
    return registry


async def _handler(payload: Email, ctx: object) -> None:
    return None


class FlakyConfirm(MemoryTransport):
    """The first publish is stored but its confirm is lost (the outcome is unknown)."""

    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__(broker)
        self.sent: list[str] = []

    async def publish(self, queue: str, message: OutgoingMessage) -> None:
        self.sent.append(message.message_id)
        await super().publish(queue, message)
        if len(self.sent) == 1:
            await asyncio.sleep(10)


async def test_invalid_payload_is_rejected_before_anything_is_sent() -> None:
    broker = MemoryBroker()
    async with Producer.for_registry(MemoryTransport(broker), jobs()) as producer:
        with pytest.raises(InvalidPayload):
            await producer.publish("email.send", {"too": "x"})
        with pytest.raises(UnknownJobType):
            await producer.publish("email.unknown", {"to": "x"})
    assert broker.queue_names() == []


async def test_unknown_confirm_is_retried_with_the_same_job_id() -> None:
    broker = MemoryBroker()
    transport = FlakyConfirm(broker)
    async with Producer.for_registry(transport, jobs(), confirm_timeout=0.05) as producer:
        receipt = await producer.publish("email.send", Email(to="a@example.com"))
    assert receipt.tries == 2
    assert transport.sent == [receipt.job_id, receipt.job_id]


async def test_unroutable_publish_raises_and_is_not_retried() -> None:
    broker = MemoryBroker()
    async with Producer.for_registry(MemoryTransport(broker), jobs(), declare_queues=False) as producer:
        with pytest.raises(PublishNotConfirmed):
            await producer.publish("email.send", Email(to="a@example.com"))


class Nacking(MemoryTransport):
    """The broker nacks the first ``nacks`` publishes (a full queue), then takes them."""

    def __init__(self, broker: MemoryBroker, nacks: int) -> None:
        super().__init__(broker)
        self.nacks, self.sent = nacks, []

    async def publish(self, queue: str, message: OutgoingMessage) -> None:
        self.sent.append(message.message_id)
        if self.nacks:
            self.nacks -= 1
            raise PublishNacked(f"broker refused the message for {queue!r} (nack)")
        await super().publish(queue, message)


async def test_a_nack_is_retried_under_the_same_job_id() -> None:
    transport = Nacking(MemoryBroker(), nacks=2)
    async with Producer.for_registry(transport, jobs()) as producer:
        receipt = await producer.publish("email.send", Email(to="a@example.com"))
    assert receipt.tries == 3 and transport.sent == [receipt.job_id] * 3


async def test_a_nack_every_time_raises_after_the_tries_without_looping() -> None:
    transport = Nacking(MemoryBroker(), nacks=10**6)
    async with Producer.for_registry(transport, jobs(), publish_tries=2) as producer:
        with pytest.raises(PublishNacked, match="nack"):
            await producer.publish("email.send", Email(to="a@example.com"))
    assert len(transport.sent) == 2


async def test_oversize_job_is_refused_at_the_producer() -> None:
    async with Producer.for_registry(MemoryTransport(), jobs(), max_message_bytes=2048) as producer:
        with pytest.raises(MessageTooLarge):
            await producer.publish("email.send", Email(to="x" * 4000))


async def test_envelope_carries_keys_and_routing() -> None:
    broker = MemoryBroker()
    async with Producer.for_registry(MemoryTransport(broker), jobs()) as producer:
        receipt = await producer.publish(
            "email.send", Email(to="a@b.c"), idempotency_key="order-1", correlation_id="req-9", headers={"tenant": "t"}
        )
    reader = MemoryTransport(broker)
    await reader.connect()
    delivery = await reader.get(DEFAULT_QUEUE)
    assert delivery is not None
    from conveyor.common.codec import decode_envelope

    envelope = decode_envelope(delivery.body)
    assert (envelope.job_id, envelope.idempotency_key, envelope.correlation_id) == (receipt.job_id, "order-1", "req-9")
    assert envelope.headers == {"tenant": "t"} and envelope.attempt == 1


async def test_published_counts_an_unregistered_type_as_unknown_until_it_is_registered() -> None:
    # The producer caches its metric children; a type registered later must get its own label,
    # not stay counted as "unknown".
    from prometheus_client import generate_latest

    from conveyor.schemas.registry import SchemaRegistry

    schemas = SchemaRegistry()
    async with Producer(MemoryTransport(MemoryBroker()), schemas=schemas, allow_unregistered=True) as producer:
        await producer.publish("late.type", {"to": "x"})
        schemas.register("late.type", 1, Email)
        await producer.publish("late.type", {"to": "y"})
        await producer.publish("late.type", {"to": "z"})
        text = generate_latest(producer.metrics.registry).decode()
    assert 'conveyor_jobs_published_total{job_type="unknown"} 1.0' in text
    assert 'conveyor_jobs_published_total{job_type="late.type"} 2.0' in text
    assert 'conveyor_publish_confirm_seconds_count{kind="job"} 3.0' in text


class EmailV2(BaseModel):
    to: str
    subject: str


async def test_a_version_registered_after_the_producer_started_is_the_one_validated_and_sent() -> None:
    broker = MemoryBroker()
    registry = jobs()
    async with Producer.for_registry(MemoryTransport(broker), registry) as producer:
        first = producer.build_envelope("email.send", {"to": "a@example.com"})
        registry.schemas.register("email.send", 2, EmailV2)
        with pytest.raises(InvalidPayload, match=r"email.send v2 payload invalid: subject: missing"):
            producer.build_envelope("email.send", {"to": "a@example.com"})
        second = producer.build_envelope("email.send", {"to": "a@example.com", "subject": "hi"})
        old = producer.build_envelope("email.send", {"to": "a@example.com"}, version=1)  # still v1's schema
        with pytest.raises(InvalidPayload, match=r"email.send v1 payload invalid"):
            producer.build_envelope("email.send", {"subject": "hi"}, version=1)
    assert (first.schema_version, second.schema_version, old.schema_version) == (1, 2, 1)


@pytest.mark.parametrize("delay", [0.0, 90.5])
async def test_due_at_is_when_the_job_becomes_due_on_the_system_clock_and_a_fake_one(delay: float) -> None:
    sent: list[OutgoingMessage] = []

    class Recording(MemoryTransport):
        async def publish(self, queue: str, message: OutgoingMessage) -> None:
            sent.append(message)
            await super().publish(queue, message)

    start = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    for clock in (SystemClock(), FakeClock(start)):
        before = time.time()
        async with Producer.for_registry(Recording(MemoryBroker()), jobs(), clock=clock) as producer:
            await producer.publish("email.send", {"to": "a@example.com"}, delay=delay)
        after = time.time()
        if not delay:  # undelayed: due at the envelope's created_at, no header (h-drain3)
            assert DUE_AT not in sent[-1].headers
            continue
        due = float(sent[-1].headers[DUE_AT])
        if isinstance(clock, SystemClock):  # milliseconds, rounded either way
            assert before + delay - 0.001 <= due <= after + delay + 0.001
        else:
            assert sent[-1].headers[DUE_AT] == f"{start.timestamp() + delay:.3f}"


@pytest.mark.parametrize("version", [True, 1.0, 1])
def test_a_version_of_another_type_is_judged_as_before_the_latest_version_shortcut(version: object) -> None:
    """``True`` is no schema version (the envelope refuses it); ``1.0`` is 1, as JSON has it."""
    producer = Producer.for_registry(MemoryTransport(MemoryBroker()), jobs())
    if version is True:
        with pytest.raises((ValidationError, MalformedMessage)):  # build_envelope may wrap pydantic's error
            producer.build_envelope("email.send", {"to": "a@example.com"}, version=version)  # type: ignore[arg-type]
    else:
        envelope = producer.build_envelope("email.send", {"to": "a@example.com"}, version=version)  # type: ignore[arg-type]
        assert envelope.schema_version == 1 and type(envelope.schema_version) is int


class Counted(MemoryTransport):
    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__(broker)
        self.publishes = 0

    async def publish(self, queue: str, message: OutgoingMessage) -> None:
        self.publishes += 1
        await super().publish(queue, message)


async def test_a_producer_used_after_its_close_says_so_at_once_and_sends_nothing() -> None:
    # Its transport's "not connected" was a TransportError, retried as an outage: 4 tries, ~1.7 s.
    transport = Counted(MemoryBroker())
    producer = Producer.for_registry(transport, jobs())
    async with producer:
        await producer.publish("email.send", {"to": "x"})
    for publish in (lambda: producer.publish("email.send", {"to": "y"}),
                    lambda: producer.publish_envelope(producer.build_envelope("email.send", {"to": "z"}))):
        with pytest.raises(ConfigurationError, match="closed"):
            await publish()
    assert transport.publishes == 1
    async with producer:  # opened again, it publishes again
        await producer.publish("email.send", {"to": "w"})
    assert transport.publishes == 2
