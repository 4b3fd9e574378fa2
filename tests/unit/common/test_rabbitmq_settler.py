"""ChannelSettler: which ack/nack frames a loop turn's settlements become (a fake channel).

The property that matters: a ``multiple`` ack covers every unsettled tag up to it, so it may
only be sent for a run of tags that are all meant to be acked; nacks and acks outside that
run go one frame each, in tag order. The real-broker side is in
tests/integration/test_rabbitmq_transport.py.
"""

from __future__ import annotations

import asyncio

import pytest
from aio_pika.exceptions import ChannelInvalidStateError

from conveyor.common.transport.rabbitmq.consumer import ChannelSettler


class FakeChannel:
    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []
        self.is_closed = False
        self.fail: BaseException | None = None

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        if self.fail is not None:
            raise self.fail
        self.frames.append(("ack", tag, multiple))

    async def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True) -> None:
        if self.fail is not None:
            raise self.fail
        assert requeue
        self.frames.append(("nack", tag, multiple))


def settler_with(channel: FakeChannel, tags: range) -> ChannelSettler:
    settler = ChannelSettler(channel)  # type: ignore[arg-type]
    for tag in tags:
        settler.delivered(tag)
    return settler


async def test_acks_of_one_loop_turn_become_one_multiple_ack() -> None:
    channel = FakeChannel()
    settler = settler_with(channel, range(1, 6))
    waiters = [settler.settle(tag, ack=True) for tag in (3, 1, 2, 4, 5)]
    await asyncio.gather(*waiters)
    assert channel.frames == [("ack", 5, True)]


async def test_a_nack_in_the_middle_is_never_covered_by_a_multiple_ack() -> None:
    channel = FakeChannel()
    settler = settler_with(channel, range(1, 7))
    waiters = [settler.settle(1, ack=True), settler.settle(2, ack=True), settler.settle(3, ack=False),
               settler.settle(4, ack=True), settler.settle(6, ack=True)]
    await asyncio.gather(*waiters)
    # 1-2 as a run; 3 nacked alone; 4 and 6 one by one (5 is still with its handler).
    assert channel.frames == [("ack", 2, True), ("nack", 3, False), ("ack", 4, False), ("ack", 6, False)]
    # 5 is now the head: acking it alone is a single ack, never multiple over 4 or 6 again.
    await settler.settle(5, ack=True)
    assert channel.frames[-1] == ("ack", 5, False)


async def test_an_unsettled_head_keeps_later_acks_single() -> None:
    channel = FakeChannel()
    settler = settler_with(channel, range(1, 4))
    await asyncio.gather(settler.settle(2, ack=True), settler.settle(3, ack=True))
    assert channel.frames == [("ack", 2, False), ("ack", 3, False)]


async def test_settlements_made_while_a_flush_is_sending_go_out_in_the_next_one() -> None:
    channel = FakeChannel()
    settler = settler_with(channel, range(1, 5))
    first = settler.settle(1, ack=True)
    await asyncio.sleep(0)  # the flush task starts
    second = [settler.settle(2, ack=True), settler.settle(3, ack=True)]
    await asyncio.gather(first, *second)
    assert channel.frames[0] == ("ack", 1, False)
    assert channel.frames[1:] == [("ack", 3, True)]


async def test_a_closed_channel_fails_every_waiter_of_the_batch() -> None:
    channel = FakeChannel()
    settler = settler_with(channel, range(1, 4))
    channel.fail = ChannelInvalidStateError("closed")
    waiters = [settler.settle(tag, ack=True) for tag in (1, 2)]
    for waiter in waiters:
        with pytest.raises(ChannelInvalidStateError):
            await waiter
    channel.is_closed = True
    with pytest.raises(ChannelInvalidStateError):
        settler.settle(3, ack=True)
