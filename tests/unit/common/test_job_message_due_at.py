"""Which job messages carry ``x-conveyor-due-at``: those due at another time than their
envelope's ``created_at`` (common.messages); a new undelayed job carries no header at all."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import BaseModel

from conveyor.common import headers as h
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.messages import job_message
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.producer.producer import Producer
from conveyor.schemas.envelope import Envelope


class Ping(BaseModel):
    n: int


def _registry() -> JobRegistry:
    jobs = JobRegistry()
    jobs.job("t.ping", model=Ping, queue="due-at")(lambda payload, ctx: None)
    return jobs


def _envelope() -> Envelope:
    return Producer.for_registry(None, _registry()).build_envelope("t.ping", Ping(n=1))  # type: ignore[arg-type]


def test_due_at_none_means_no_header_and_other_headers_unchanged() -> None:
    message = job_message(_envelope(), b"{}", due_at=None, carried={"baggage": "b"}, extra={"traceparent": "00-x"})
    assert message.headers == {"baggage": "b", "traceparent": "00-x"}
    assert h.due_timestamp(message.headers) is None  # the worker measures from created_at


@pytest.mark.parametrize("late", [timedelta(0), timedelta(microseconds=-1), timedelta(minutes=3)])
def test_a_stated_due_time_is_always_sent_whatever_it_is(late: timedelta) -> None:
    envelope = _envelope()
    due = envelope.created_at + late
    message = job_message(envelope, b"{}", due_at=due, kind="retry")
    assert message.headers == {h.DUE_AT: h.format_due_at(due)}
    assert h.due_timestamp(message.headers) == pytest.approx(due.timestamp(), abs=0.001)


async def test_the_producer_sends_undelayed_jobs_without_and_delayed_ones_with_their_due_time() -> None:
    broker = MemoryBroker()
    transport = MemoryTransport(broker)
    sent: list[tuple[float, dict[str, str]]] = []
    publish = transport.publish

    async def spy(queue: str, message: object) -> None:
        sent.append((message.delay, dict(message.headers)))  # type: ignore[attr-defined]
        await publish(queue, message)  # type: ignore[arg-type]

    transport.publish = spy  # type: ignore[method-assign]
    async with Producer.for_registry(transport, _registry()) as producer:
        for n in range(3):
            await producer.publish("t.ping", Ping(n=n))
        await producer.publish("t.ping", Ping(n=9), delay=30)
    assert [headers for _, headers in sent[:3]] == [{}, {}, {}]
    delay, headers = sent[3]
    assert delay == 30 and h.DUE_AT in headers
