"""Read back what was published to a queue on a real broker: the message ids, then delete the queue."""

from __future__ import annotations

from conveyor.common.transport.factory import transport_from_url

__all__ = ["drain_ids"]


async def drain_ids(url: str, queue: str, expected: int, *, polls: int = 400) -> list[str]:
    """Every message id in ``queue`` (at least ``expected`` unless ``polls`` empty polls run out), acked;
    the queue is deleted after."""
    ids: list[str] = []
    async with transport_from_url(url) as transport:
        for _ in range(polls):
            delivery = await transport.get(queue)
            if delivery is None:
                if len(ids) >= expected:
                    break
                continue
            ids.append(delivery.message_id)
            await delivery.ack()
        await transport.delete(queue)
    return ids
