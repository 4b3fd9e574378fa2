"""At most so many sends in flight per producer: the client's own queue never fills.

The window is ``common.tasks.Slots`` (the worker's per-delivery slots are the same thing): a
send that finds a free slot takes it with a decrement and no await; only a send that finds
the window full waits, in FIFO order, and a slot a waiter is handed but can no longer use
(it was cancelled meanwhile) goes to the next one, never lost.
"""

from __future__ import annotations

from conveyor.common.tasks import Slots

__all__ = ["SendWindow"]

SendWindow = Slots
