"""Operators' job actions, shared by the CLI (``conveyor jobs``) and any console: cancel.

``cancel_job`` records the cancel in the job-state store first (durable: a worker that starts
later, or misses the broadcast, finds it there on arrival or by its poll), then broadcasts it
on the broker's control channel so the worker running the job stops it now.
"""

from __future__ import annotations

from conveyor.common.job_state.base import CancelResult, JobStateStore
from conveyor.common.transport.base import CONTROL_CHANNEL, Transport
from conveyor.consumer.middleware.job_state import cancel_message

__all__ = ["cancel_job"]


async def cancel_job(
    store: JobStateStore, job_id: str, *, control: Transport | None = None, channel: str = CONTROL_CHANNEL
) -> tuple[CancelResult, bool]:
    """Cancel ``job_id``; returns the store's verdict and whether it was broadcast.

    Idempotent: a second cancel changes nothing (``changed`` False) and is broadcast again
    only while the job still runs. ``UnknownJob`` (reason ``unknown_job``) for an unknown id."""
    result = await store.request_cancel(job_id)
    broadcast = control is not None and (result.changed or result.running)
    if broadcast:
        assert control is not None
        await control.broadcast(channel, cancel_message(job_id))
    return result, broadcast
