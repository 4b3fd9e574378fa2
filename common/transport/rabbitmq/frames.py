"""Confirmed publishes written as ready AMQP frames, several publishes per socket write.

aiormq's ``basic_publish`` is general: per message it builds pamqp frame objects and encodes
each one generically, enters three context managers and a lock, makes a drain future and waits
for the writer task to have written that one message (an extra trip through the event loop)
before waiting for the confirm; and every message is a ``send`` system call of its own. That
was most of the CPU a publish cost (issue 18). ``FrameWriter`` does what a publish needs on a
confirm channel and no more: it writes the ``basic.publish`` method frame (fixed per exchange
and routing key), the content header (``JobProperties``' bytes) and the body frames straight
into one ``bytes``, and the publishes made in one turn of the event loop go to aiormq's writer
as *one* write. Delivery tags are taken in that same order, so the broker's confirm numbering
matches. Everything else stays aiormq's: its confirm bookkeeping (acks, nacks, ``multiple``),
``basic.return`` for mandatory messages (matched by message id), and the futures it rejects
when the channel or the connection closes, so each outcome surfaces exactly as with
``basic_publish``. ``tests/unit/common/test_rabbitmq_frames.py`` holds the bytes to pamqp's
and pins the aiormq attributes used here (aiormq is pinned in ``constraints.txt``).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import aiormq.abc
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError

__all__ = ["FrameWriter", "publish_frame", "content_frames"]

_METHOD, _HEADER, _BODY, _END = 1, 2, 3, b"\xce"
_FRAME_HEAD = struct.Struct(">BHI")
_PUBLISH_HEAD = struct.pack(">HHH", 60, 40, 0)  # basic.publish, reserved ticket 0
_CONTENT_HEAD = struct.Struct(">HHQ")  # class basic, weight 0, body size
_FRAME_OVERHEAD = 8  # what a frame adds to its payload: type, channel, size, end octet


def _shortstr(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"{text[:40]!r}… is longer than an AMQP short string (255 bytes)")
    return bytes((len(raw),)) + raw


def publish_frame(channel: int, exchange: str, routing_key: str, *, mandatory: bool) -> bytes:
    """The whole ``basic.publish`` method frame: the same for every message to one target."""
    payload = _PUBLISH_HEAD + _shortstr(exchange) + _shortstr(routing_key) + bytes((int(mandatory),))
    return _FRAME_HEAD.pack(_METHOD, channel, len(payload)) + payload + _END


def content_frames(channel: int, properties: bytes, body: bytes, max_body_frame: int) -> bytes:
    """The content header frame and the body frames of one message (none for an empty body)."""
    header = _CONTENT_HEAD.pack(60, 0, len(body)) + properties
    parts = [_FRAME_HEAD.pack(_HEADER, channel, len(header)), header, _END]
    for start in range(0, len(body), max_body_frame):
        chunk = body[start:start + max_body_frame]
        parts += (_FRAME_HEAD.pack(_BODY, channel, len(chunk)), chunk, _END)
    return b"".join(parts)


class FrameWriter:
    """Publish-and-confirm on one open aiormq confirm channel (see module docs).

    One per aiormq channel: the robust channel reopens as a new aiormq channel, and the caller
    makes a new writer for it (``serves``).
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        raw: Any = channel  # aiormq's Channel: its bookkeeping is not on the abstract class
        if not raw.publisher_confirms:
            raise ValueError("FrameWriter needs a channel with publisher confirms")
        self.channel = raw
        self._number: int = raw.number
        self._queue: asyncio.Queue[ChannelFrame] = raw.write_queue
        self._max_body_frame: int = raw.max_content_size
        self._targets: dict[tuple[str, str], bytes] = {}
        self._pending: list[bytes] = []
        self._scheduled = False
        self._blocked: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    def serves(self, channel: aiormq.abc.AbstractChannel) -> bool:
        return channel is self.channel and not channel.is_closed

    async def publish(self, exchange: str, routing_key: str, properties: bytes, body: bytes, message_id: str) -> Any:
        """The broker's answer: ``basic.ack`` (returned), or aiormq's exception for a nack
        (``DeliveryError``), a return (``PublishError``) or a closed channel or connection."""
        channel = self.channel
        if channel.is_closed:
            raise ChannelInvalidStateError(f"{channel!r} closed")
        method = self._targets.get((exchange, routing_key))
        if method is None:
            method = self._targets[(exchange, routing_key)] = publish_frame(
                self._number, exchange, routing_key, mandatory=True
            )
        frames = method + content_frames(self._number, properties, body, self._max_body_frame)
        # From the tag to the buffer without a suspension: frames leave in tag order.
        tag = channel.delivery_tag + 1
        channel.delivery_tag = tag
        confirmation = channel.create_future()  # rejected by aiormq if the channel closes
        channel.confirmations[tag] = confirmation
        returns = channel.message_id_delivery_tag
        returns[message_id] = tag  # how aiormq finds the publish a basic.return answers
        self._pending.append(frames)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        try:
            return await confirmation
        finally:
            if returns.get(message_id) == tag:
                del returns[message_id]

    def _flush(self) -> None:
        self._scheduled = False
        if self._blocked is not None:
            return  # the waiting put sends these right after its own, in order
        payload = self._take()
        if payload:
            try:
                self._queue.put_nowait(ChannelFrame(payload=payload, should_close=False))
            except asyncio.QueueFull:  # aiormq's writer is behind: wait for room, keep the order
                self._blocked = self._loop.create_task(self._put_later(payload))

    def _take(self) -> bytes:
        pending, self._pending = self._pending, []
        if self.channel.is_closed:
            return b""  # never sent: aiormq rejected their confirms when the channel closed
        return b"".join(pending)

    async def _put_later(self, payload: bytes) -> None:
        try:
            while payload:
                await self._queue.put(ChannelFrame(payload=payload, should_close=False))
                payload = self._take()
        finally:
            self._blocked = None
