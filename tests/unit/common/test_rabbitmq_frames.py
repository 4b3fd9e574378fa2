"""rabbitmq.frames writes exactly the bytes aiormq/pamqp write for a publish, and the aiormq
attributes FrameWriter relies on exist (aiormq is pinned; a release that renames them fails here)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import aiormq.channel
import pytest
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from conveyor.common.transport.rabbitmq.frames import FrameWriter, content_frames, publish_frame
from conveyor.common.transport.rabbitmq.properties import JobProperties

PROPERTIES = JobProperties(delivery_mode=2, message_id="m-1", headers={"x-conveyor-job-type": "a.b"})


def _pamqp(channel: int, exchange: str, routing_key: str, body: bytes, max_body_frame: int) -> bytes:
    frames: list[Any] = [Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True),
                         ContentHeader(properties=PROPERTIES, body_size=len(body))]
    frames += [ContentBody(body[i:i + max_body_frame]) for i in range(0, len(body), max_body_frame)]
    return ChannelFrame.marshall(channel_number=channel, frames=frames).payload


@pytest.mark.parametrize("size", [0, 1, 200, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 5])
@pytest.mark.parametrize(("channel", "exchange", "routing_key"),
                         [(1, "q.jobs", "q"), (65535, "", "é" * 127), (7, "x" * 127, "")])
def test_the_same_bytes_as_aiormq(size: int, channel: int, exchange: str, routing_key: str) -> None:
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    ours = publish_frame(channel, exchange, routing_key, mandatory=True) + content_frames(
        channel, PROPERTIES.marshal(), body, 4096
    )
    assert ours == _pamqp(channel, exchange, routing_key, body, 4096)


def test_a_name_longer_than_a_short_string_is_refused() -> None:
    with pytest.raises(ValueError, match="short string"):
        publish_frame(1, "x" * 256, "q", mandatory=True)


def test_the_aiormq_attributes_it_uses_exist() -> None:
    # Set in Channel.__init__ (instance attributes) or defined on the class.
    init = inspect.getsource(aiormq.channel.Channel.__init__)
    for name in ("delivery_tag", "confirmations", "message_id_delivery_tag", "write_queue", "max_content_size",
                 "publisher_confirms", "number"):
        assert f"self.{name}" in init, name
    for name in ("create_future", "is_closed", "_confirm_delivery", "_on_return_frame"):
        assert hasattr(aiormq.channel.Channel, name), name
    assert {field for field in ChannelFrame.__dataclass_fields__} >= {"payload", "should_close", "drain_future"}


class FakeChannel:
    """What FrameWriter touches on an aiormq channel; the queue is aiormq's writer's (size 10)."""

    publisher_confirms = True
    number = 3
    max_content_size = 4096

    def __init__(self) -> None:
        self.delivery_tag = 0
        self.confirmations: dict[int, asyncio.Future[Any]] = {}
        self.message_id_delivery_tag: dict[str, int] = {}
        self.write_queue: asyncio.Queue[ChannelFrame] = asyncio.Queue(maxsize=10)
        self.is_closed = False

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def ack_all(self) -> None:
        for tag in list(self.confirmations):
            self.confirmations.pop(tag).set_result(Basic.Ack(delivery_tag=tag))


def _frame(tag_body: bytes) -> bytes:
    return publish_frame(3, "q.jobs", "q", mandatory=True) + content_frames(3, PROPERTIES.marshal(), tag_body, 4096)


async def test_the_publishes_of_one_loop_turn_leave_as_one_write_in_tag_order() -> None:
    channel = FakeChannel()
    writer = FrameWriter(channel)  # type: ignore[arg-type]
    sends = [asyncio.create_task(writer.publish("q.jobs", "q", PROPERTIES.marshal(), b"%d" % i, f"m{i}"))
             for i in range(50)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert channel.write_queue.qsize() == 1
    assert channel.write_queue.get_nowait().payload == b"".join(_frame(b"%d" % i) for i in range(50))
    assert sorted(channel.confirmations) == list(range(1, 51))
    assert channel.message_id_delivery_tag == {f"m{i}": i + 1 for i in range(50)}
    channel.ack_all()
    results = await asyncio.gather(*sends)
    assert [r.delivery_tag for r in results] == list(range(1, 51))
    assert channel.message_id_delivery_tag == {}  # forgotten once answered


async def test_a_full_writer_queue_keeps_the_order_and_loses_nothing() -> None:
    channel = FakeChannel()
    writer = FrameWriter(channel)  # type: ignore[arg-type]
    for _ in range(10):
        channel.write_queue.put_nowait(ChannelFrame(payload=b"other", should_close=False))
    sends = []
    for turn in range(3):  # three loop turns while aiormq's writer is stuck
        sends += [asyncio.create_task(writer.publish("q.jobs", "q", PROPERTIES.marshal(), b"%d-%d" % (turn, i),
                                                     f"m{turn}-{i}")) for i in range(4)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    written = []
    while len(written) < 10 or not channel.write_queue.empty() or writer._blocked is not None:
        written.append(channel.write_queue.get_nowait().payload if not channel.write_queue.empty() else b"")
        await asyncio.sleep(0)
    assert b"".join(p for p in written if p != b"other") == b"".join(
        _frame(b"%d-%d" % (turn, i)) for turn in range(3) for i in range(4)
    )
    channel.ack_all()
    assert len(await asyncio.gather(*sends)) == 12


async def test_a_closed_channel_sends_nothing() -> None:
    channel = FakeChannel()
    writer = FrameWriter(channel)  # type: ignore[arg-type]
    send = asyncio.create_task(writer.publish("q.jobs", "q", PROPERTIES.marshal(), b"x", "m"))
    await asyncio.sleep(0)  # queued, not yet flushed
    channel.is_closed = True  # aiormq rejects the confirms of a channel that closes
    for future in channel.confirmations.values():
        future.set_exception(aiormq.exceptions.ChannelClosed(None, None))
    with pytest.raises(aiormq.exceptions.ChannelClosed):
        await send
    assert channel.write_queue.empty()
    assert not writer.serves(channel)  # type: ignore[arg-type]
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await writer.publish("q.jobs", "q", PROPERTIES.marshal(), b"y", "m2")


def test_a_channel_without_confirms_is_refused() -> None:
    channel = FakeChannel()
    channel.publisher_confirms = False  # type: ignore[misc]
    with pytest.raises(ValueError, match="publisher confirms"):
        FrameWriter(channel)  # type: ignore[arg-type]
