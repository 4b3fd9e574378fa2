"""deliver_directly: aiormq's per-delivery task replaced by a plain call, on one channel."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import aiormq
import pytest

from conveyor.common.transport.rabbitmq.consumer import consumer_frame_buffer, deliver_directly


class FakeChannel:
    """The three names deliver_directly reads, as aiormq.Channel has them."""

    def __init__(self, consumers: dict[str, Any]) -> None:
        self.consumers = consumers
        self.reads: list[str] = []

    async def _Channel__get_content_header(self) -> str:  # aiormq's mangled name
        self.reads.append("header")
        return "header"

    async def _read_content(self, frame: Any, header: str) -> Any:
        self.reads.append("content")
        return SimpleNamespace(frame=frame, header=header)

    async def _on_deliver_frame(self, frame: Any) -> None:
        raise AssertionError("aiormq's own dispatch must not run")


def test_aiormq_still_has_the_names_deliver_directly_relies_on() -> None:
    channel = aiormq.Channel
    assert inspect.iscoroutinefunction(channel._Channel__get_content_header)  # type: ignore[attr-defined]
    assert inspect.iscoroutinefunction(channel._read_content)
    assert inspect.iscoroutinefunction(channel._on_deliver_frame)
    # The reader looks the step up on the instance for every Deliver frame.
    assert "await self._on_deliver_frame(frame)" in inspect.getsource(channel._reader)
    assert "__slots__" not in vars(channel)  # an instance attribute can shadow the method


async def test_a_delivery_for_a_registered_tag_is_handed_over_without_a_task() -> None:
    channel = FakeChannel({"tag": object()})
    got: list[Any] = []
    deliver_directly(channel, got.append)  # type: ignore[arg-type]
    await channel._on_deliver_frame(SimpleNamespace(consumer_tag="tag"))
    assert channel.reads == ["header", "content"]  # the message's frames are read either way
    assert [m.frame.consumer_tag for m in got] == ["tag"]


async def test_a_delivery_for_a_cancelled_tag_is_read_and_skipped() -> None:
    channel = FakeChannel({})
    got: list[Any] = []
    deliver_directly(channel, got.append)  # type: ignore[arg-type]
    await channel._on_deliver_frame(SimpleNamespace(consumer_tag="gone"))
    assert channel.reads == ["header", "content"]  # the reader stays in step with the frames
    assert got == []


async def test_a_callback_that_raises_does_not_stop_the_channel_reader(caplog: pytest.LogCaptureFixture) -> None:
    channel = FakeChannel({"tag": object()})
    calls = 0

    def broken(message: Any) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad properties")

    deliver_directly(channel, broken)  # type: ignore[arg-type]
    for _ in range(3):
        await channel._on_deliver_frame(SimpleNamespace(consumer_tag="tag"))  # never raises into the reader
    assert calls == 3
    assert "could not take a delivery" in caplog.text


def test_a_consumer_channel_has_room_for_its_whole_prefetch_window() -> None:
    """Three frames per delivery (deliver, header, body): aiormq's default of 10 frames held a
    worker to 3 deliveries per loop turn (see consumer_frame_buffer)."""
    assert consumer_frame_buffer(1) >= aiormq.Connection.FRAME_BUFFER_SIZE
    for prefetch in (1, 64, 200, 1000):
        assert consumer_frame_buffer(prefetch) >= 3 * prefetch + aiormq.Connection.FRAME_BUFFER_SIZE
