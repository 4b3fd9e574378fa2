"""Confirmed publishes to RabbitMQ's named exchanges, without one bad exchange hurting the rest.

A publish to a named exchange that does not exist (404) or that the user may not write to
(403) is not returned like an unroutable message: the broker *closes the channel*, and every
publish in flight on it fails with it. So the first publish to each exchange goes on a
throwaway channel of its own; once the broker has accepted one publish there (confirmed, or
returned as unroutable: either way the exchange exists and we may write to it) the exchange
is *proven* and later publishes share the long-lived confirm channel, with no extra round
trip. Concurrent first publishes to one exchange wait for the one probe.

If a proven exchange goes away later (deleted, permission revoked), the shared channel still
closes under every publish in flight. Each of them then raises ``PublishOutcomeUnknown`` (the
caller retries with the same message id; nothing was lost), the exchange is forgotten, and
the retry goes through a probe again, which names the cause. The robust channel reopens on
its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterable

import aiormq.abc
from aio_pika.exceptions import (
    AMQPError,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    DeliveryError,
    PublishError,
)
from aiormq import spec
from aiormq.exceptions import ChannelAccessRefused

from conveyor.common.errors import (
    PublishNacked,
    PublishNotConfirmed,
    PublishOutcomeUnknown,
    TransportError,
)
from conveyor.common.transport.rabbitmq.frames import FrameWriter
from conveyor.common.transport.rabbitmq.topology import Target

__all__ = ["ExchangePublisher"]

_BROKER_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, OSError, asyncio.TimeoutError)


class ExchangePublisher:
    """Publish-and-confirm to named exchanges (see module docs); one per transport."""

    def __init__(
        self,
        *,
        shared_channel: Callable[[], Awaitable[aiormq.abc.AbstractChannel]],
        probe_channel: Callable[[], Awaitable[aiormq.abc.AbstractChannel]],
        scrub: Callable[[BaseException], str],
    ) -> None:
        self._shared_channel = shared_channel
        self._probe_channel = probe_channel
        self._scrub = scrub
        self._proven: set[str] = set()
        self._probes: dict[str, asyncio.Lock] = {}
        self._writer: FrameWriter | None = None

    def forget(self, names: Iterable[str]) -> None:
        """Probe these exchanges again before the next publish (they were deleted)."""
        for name in names:
            self._proven.discard(name)

    async def publish(
        self, target: Target, body: bytes, properties: spec.Basic.Properties, *, queue: str, kind: str
    ) -> None:
        try:
            await self._publish(target, body, properties, queue=queue, kind=kind)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # this publish was cancelled (a time limit, a shutdown): theirs to handle
            # aiormq rejects the confirms still awaited on a connection it closes (a missed
            # heartbeat) with its reader task's CancelledError: the caller's task was not
            # cancelled, and a CancelledError escaping here ended `conveyor dlq replay` in a
            # traceback (and would pass for a shutdown in a worker's settlement).
            raise PublishOutcomeUnknown(
                f"connection lost before the confirm for {target.routing_key!r}: the message may or may not be stored"
            ) from exc

    async def _publish(
        self, target: Target, body: bytes, properties: spec.Basic.Properties, *, queue: str, kind: str
    ) -> None:
        if target.exchange not in self._proven and await self._probe(target, body, properties, queue, kind):
            return
        # The aiormq channel under the robust one, written to as frames (rabbitmq.frames): aio-pika's
        # Message and Exchange objects, and aiormq's basic_publish, cost more CPU per publish than
        # the rest of the publish path.
        channel = await self._shared_channel()
        if channel.is_closed:
            raise TransportError("publisher channel is closed; message not sent")
        try:
            if not properties.message_id:
                # What aiormq's basic_publish would do (a return is matched by message id), done
                # here so that every publish on this channel goes through the one writer: a
                # basic_publish beside it takes its delivery tag and queues its frames at once,
                # so it could reach the socket before frames holding earlier tags, and the
                # broker's confirms would then answer the wrong publishes.
                properties.message_id = uuid.uuid4().hex
            writer = self._writer
            if writer is None or not writer.serves(channel):
                writer = self._writer = FrameWriter(channel)  # a reopened channel: a new writer
            await writer.publish(target.exchange, target.routing_key, properties.marshal(), body,
                                 properties.message_id)
        except PublishError as exc:  # basic.return: no binding for this key
            raise PublishNotConfirmed(_unroutable(target, queue)) from exc
        except DeliveryError as exc:  # basic.nack
            raise PublishNacked(f"broker refused the message for {target.routing_key!r} (nack)") from exc
        except (ChannelNotFoundEntity, ChannelAccessRefused) as exc:
            # Some publish on the shared channel hit a vanished or forbidden exchange, and the
            # broker closed the channel under all of them: which one is unknown from here.
            self._proven.discard(target.exchange)
            raise PublishOutcomeUnknown(
                f"the broker closed the publisher channel ({self._scrub(exc)}): the message for "
                f"{target.routing_key!r} may or may not be stored; the next try checks {target.exchange!r} again"
            ) from exc
        except ChannelInvalidStateError as exc:  # checked before anything was sent
            raise TransportError("publisher channel is closed; message not sent") from exc
        except _BROKER_ERRORS as exc:
            raise PublishOutcomeUnknown(
                f"connection lost before the confirm for {target.routing_key!r}: the message may or may not be stored"
            ) from exc

    async def _probe(
        self, target: Target, body: bytes, properties: spec.Basic.Properties, queue: str, kind: str
    ) -> bool:
        """Send the message on a channel of its own; False: proven meanwhile, use the shared one."""
        lock = self._probes.setdefault(target.exchange, asyncio.Lock())
        async with lock:
            if target.exchange in self._proven:
                return False
            channel = await self._probe_channel()
            try:
                await self._probe_publish(channel, target, body, properties, queue, kind)
            finally:
                if not channel.is_closed:
                    with contextlib.suppress(*_BROKER_ERRORS):
                        await channel.close()
            self._probes.pop(target.exchange, None)
            return True

    async def _probe_publish(
        self,
        channel: aiormq.abc.AbstractChannel,
        target: Target,
        body: bytes,
        properties: spec.Basic.Properties,
        queue: str,
        kind: str,
    ) -> None:
        try:
            await channel.basic_publish(
                body, exchange=target.exchange, routing_key=target.routing_key, properties=properties, mandatory=True
            )
        except PublishError as exc:  # the exchange exists and took it, but nothing is bound
            self._proven.add(target.exchange)
            raise PublishNotConfirmed(_unroutable(target, queue)) from exc
        except DeliveryError as exc:
            self._proven.add(target.exchange)
            raise PublishNacked(f"broker refused the message for {target.routing_key!r} (nack)") from exc
        except ChannelNotFoundEntity as exc:
            raise PublishNotConfirmed(
                f"no exchange {target.exchange!r}: message unroutable (declare {queue!r} first)"
            ) from exc
        except ChannelAccessRefused as exc:
            raise PublishNotConfirmed(
                f"ACCESS_REFUSED: this user may not publish {kind} messages for {queue!r} "
                f"(no write permission on exchange {target.exchange!r}): {self._scrub(exc)}"
            ) from exc
        except _BROKER_ERRORS as exc:
            raise PublishOutcomeUnknown(
                f"connection lost before the confirm for {target.routing_key!r}: the message may or may not be stored"
            ) from exc
        self._proven.add(target.exchange)


def _unroutable(target: Target, queue: str) -> str:
    return f"no queue {target.routing_key!r}: message unroutable (declare {queue!r} first)"
