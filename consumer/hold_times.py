"""How long a worker may keep a delivery unacknowledged: what the broker's consumer timeout must allow.

RabbitMQ closes a consumer's whole channel when one delivery on it stays unacknowledged past the
queue's consumer timeout, and every job in flight on that channel is redelivered (run twice).
So the worker checks at start, per queue, that its longest hold fits
(``Transport.check_consumer_timeout``). A delivery is held from the moment the broker hands it
over until it is settled:

* **waiting for a slot**: the consumers of the worker's ``n`` queues hold up to ``n × prefetch``
  deliveries for ``concurrency`` slots, so one may wait ``ceil((n × prefetch − concurrency) /
  concurrency)`` rounds of the worker's longest job (none with one queue and the default
  prefetch, which equals the concurrency);
* **its run**: at most its job's timeout. An async handler is cut there; a sync one keeps its
  message until its thread returns (``consumer.threads``), and a thread that never returns is
  what the broker's timeout ends, as the one backstop left;
* **the rest** (``HOLD_MARGIN``): fetching a claim check, middleware, settling (confirms, the
  pause after a failed settlement, a paused queue's wait for its consumer to detach).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.common.jobs.registry import JobSpec

__all__ = ["HOLD_MARGIN", "Hold", "holds"]

HOLD_MARGIN = 300.0  # seconds; see the module docs


@dataclass(frozen=True)
class Hold:
    """The longest a delivery of ``queue`` stays unacknowledged; ``spec``: the queue's longest job."""

    queue: str
    seconds: float
    spec: JobSpec

    def describe(self) -> str:
        return (f"job {self.spec.job_type!r} (timeout {self.spec.timeout:g}s) may keep a delivery of queue "
                f"{self.queue!r} unacknowledged for up to {self.seconds:g}s")


def holds(specs: Sequence[JobSpec], *, concurrency: int, prefetch: int) -> list[Hold]:
    """One ``Hold`` per queue of ``specs``, for a worker with this concurrency and prefetch."""
    if not specs:
        return []
    queues = sorted({spec.queue for spec in specs})
    rounds = max(0, math.ceil((len(queues) * prefetch - concurrency) / concurrency))
    slot_wait = rounds * max(spec.timeout for spec in specs)
    result = []
    for queue in queues:
        longest = max((spec for spec in specs if spec.queue == queue), key=lambda spec: spec.timeout)
        result.append(Hold(queue, slot_wait + longest.timeout + HOLD_MARGIN, longest))
    return result
