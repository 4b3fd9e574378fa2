"""SendQueue and PulsarTransport.publish over it: a loop turn's sends reach the client back to
back, each keeps its own receipt, and a cancelled, refused or failed send touches no other."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import _pulsar
import pytest
from pulsar.asyncio import PulsarException

from conveyor.common.errors import PublishNotConfirmed, PublishOutcomeUnknown
from conveyor.common.tasks import Slots as SendWindow
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.pulsar import PulsarTransport
from conveyor.common.transport.pulsar.consumer import MESSAGE_ID_PROPERTY
from conveyor.common.transport.pulsar.sends import BURST, SendQueue

OK = _pulsar.Result.Ok


class FakeProducer:
    """pulsar-client's native producer, its broker played by the test: keeps each send and its
    callback; ``answer`` calls them back, from a thread of its own like the client's I/O thread."""

    def __init__(self, *, broken: set[int] | None = None) -> None:
        self.sent: list[tuple[Any, Any]] = []
        self.broken = broken or set()  # sends (by index) whose send_async raises

    def send_async(self, message: Any, callback: Any) -> None:
        index = len(self.sent)
        self.sent.append((message, callback))
        if index in self.broken:
            raise RuntimeError("the client refused the call")

    def answer(self, results: dict[int, Any] | None = None, *, start: int = 0) -> None:
        results = results or {}

        def run() -> None:
            for i, (_, callback) in enumerate(self.sent[start:], start):
                if i not in self.broken:
                    callback(results.get(i, OK), f"id-{i}")

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()


async def test_a_turns_sends_reach_the_client_together_after_the_turn_in_order() -> None:
    queue, native = SendQueue.here(), FakeProducer()
    receipts = [queue.send(native, f"m{i}") for i in range(10)]
    assert native.sent == []  # nothing handed over while the turn runs
    await asyncio.sleep(0)
    assert [message for message, _ in native.sent] == [f"m{i}" for i in range(10)]
    native.answer()
    assert await asyncio.gather(*receipts) == [f"id-{i}" for i in range(10)]


async def test_a_long_turn_hands_over_every_burst_as_it_fills() -> None:
    queue, native = SendQueue.here(), FakeProducer()
    receipts = [queue.send(native, i) for i in range(2 * BURST + 3)]
    assert len(native.sent) == 2 * BURST  # two full bursts went at once, in the turn
    await asyncio.sleep(0)
    assert [message for message, _ in native.sent] == list(range(2 * BURST + 3))
    native.answer()
    assert len(await asyncio.gather(*receipts)) == 2 * BURST + 3


async def test_a_send_cancelled_before_its_burst_is_never_handed_to_the_client() -> None:
    queue, native = SendQueue.here(), FakeProducer()
    kept, gone, last = queue.send(native, "kept"), queue.send(native, "gone"), queue.send(native, "last")
    gone.cancel()
    await asyncio.sleep(0)
    assert [message for message, _ in native.sent] == ["kept", "last"]
    native.answer()
    assert await kept == "id-0" and await last == "id-1"


async def test_a_send_the_client_refuses_at_once_fails_alone() -> None:
    queue, native = SendQueue.here(), FakeProducer(broken={1})
    receipts = [queue.send(native, i) for i in range(3)]
    await asyncio.sleep(0)
    native.answer()
    results = await asyncio.gather(*receipts, return_exceptions=True)
    assert results[0] == "id-0" and results[2] == "id-2"
    assert isinstance(results[1], RuntimeError)


async def test_the_broker_refusing_one_of_many_in_flight_fails_only_that_one() -> None:
    queue, native = SendQueue.here(), FakeProducer()
    receipts = [queue.send(native, i) for i in range(200)]
    await asyncio.sleep(0)
    native.answer({77: _pulsar.Result.MessageTooBig})
    results = await asyncio.gather(*receipts, return_exceptions=True)
    assert isinstance(results[77], PulsarException) and results[77].error() == _pulsar.Result.MessageTooBig
    assert [r for i, r in enumerate(results) if i != 77] == [f"id-{i}" for i in range(200) if i != 77]


# -- PulsarTransport.publish over the queue (a cached sender: no broker needed) ----------------


def _transport(native: FakeProducer, window: int = 1000) -> PulsarTransport:
    transport = PulsarTransport("pulsar://127.0.0.1:1")
    transport._senders["q"] = (native, SendWindow(window))
    return transport


def _message(i: int) -> OutgoingMessage:
    return OutgoingMessage(body=b"{}", message_id=f"job-{i}", headers={"h": str(i)})


async def test_publish_returns_only_once_its_own_receipt_came() -> None:
    native = FakeProducer()
    transport = _transport(native)
    publishes = [asyncio.create_task(transport.publish("q", _message(i))) for i in range(5)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(native.sent) == 5 and not any(p.done() for p in publishes)
    native.answer()
    await asyncio.gather(*publishes)
    first = native.sent[0][0]
    assert first.properties() == {"h": "0", MESSAGE_ID_PROPERTY: "job-0"}  # one message per job, its id on it


async def test_a_publish_cancelled_before_it_was_sent_sends_nothing_and_frees_its_slot() -> None:
    native = FakeProducer()
    transport = _transport(native, window=1)
    window = transport._senders["q"][1]
    first = asyncio.create_task(transport.publish("q", _message(0)))
    await asyncio.sleep(0)  # the task took the slot and queued its send; the turn's end is next
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert native.sent == [] and window.free == 1
    second = asyncio.create_task(transport.publish("q", _message(1)))
    for _ in range(3):
        await asyncio.sleep(0)
    native.answer()
    await second
    assert [m.properties()[MESSAGE_ID_PROPERTY] for m, _ in native.sent] == ["job-1"]


async def test_a_publish_cancelled_mid_send_frees_its_slot_and_a_late_receipt_is_ignored() -> None:
    native = FakeProducer()
    transport = _transport(native, window=1)
    window = transport._senders["q"][1]
    publish = asyncio.create_task(transport.publish("q", _message(0)))
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(native.sent) == 1  # handed to the client, no receipt yet
    publish.cancel()
    with pytest.raises(asyncio.CancelledError):
        await publish
    assert window.free == 1
    native.answer()  # the receipt arrives for nobody
    await asyncio.sleep(0)


async def test_a_refused_and_a_lost_send_among_many_in_flight_fail_alone_and_no_slot_is_lost() -> None:
    native = FakeProducer()
    transport = _transport(native, window=50)
    window = transport._senders["q"][1]
    publishes = [asyncio.create_task(transport.publish("q", _message(i))) for i in range(120)]
    answered = 0
    while answered < 120:  # the window lets 50 through at a time; the broker answers each batch
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(native.sent) - answered <= 50
        native.answer({7: _pulsar.Result.TopicTerminated, 93: _pulsar.Result.Timeout}, start=answered)
        answered = len(native.sent)
    results = await asyncio.gather(*publishes, return_exceptions=True)
    assert isinstance(results[7], PublishNotConfirmed)
    assert isinstance(results[93], PublishOutcomeUnknown)
    assert all(r is None for i, r in enumerate(results) if i not in (7, 93))
    assert window.free == 50
