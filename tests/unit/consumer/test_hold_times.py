"""The longest a worker keeps a delivery unacknowledged, per queue (what a consumer timeout must allow)."""

from __future__ import annotations

from pydantic import BaseModel

from conveyor.common.jobs.registry import JobRegistry
from conveyor.consumer.hold_times import HOLD_MARGIN, holds


class Empty(BaseModel):
    pass


def registry(*jobs: tuple[str, str, float]) -> JobRegistry:
    registry = JobRegistry()
    for job_type, queue, timeout in jobs:
        registry.job(job_type, queue=queue, timeout=timeout, model=Empty)(lambda payload, ctx: None)
    return registry


def test_one_queue_at_the_default_prefetch_holds_a_delivery_for_its_longest_job_plus_the_margin() -> None:
    specs = registry(("a.short", "q", 10), ("a.long", "q", 600)).specs()
    [hold] = holds(specs, concurrency=16, prefetch=16)
    assert (hold.queue, hold.seconds, hold.spec.job_type) == ("q", 600 + HOLD_MARGIN, "a.long")
    assert hold.describe() == (f"job 'a.long' (timeout 600s) may keep a delivery of queue 'q' unacknowledged "
                               f"for up to {600 + HOLD_MARGIN:g}s")


def test_a_delivery_may_wait_for_a_slot_behind_the_longest_job_of_any_queue() -> None:
    specs = registry(("a.quick", "fast", 5), ("b.slow", "slow", 3600)).specs()
    by_queue = {hold.queue: hold.seconds for hold in holds(specs, concurrency=4, prefetch=4)}
    # Two queues × prefetch 4 for 4 slots: one round of waiting behind the 3600 s job.
    assert by_queue == {"fast": 3600 + 5 + HOLD_MARGIN, "slow": 3600 + 3600 + HOLD_MARGIN}
    # Prefetch 8 for 2 slots on one queue: three rounds.
    [hold] = holds(registry(("c.job", "q", 100)).specs(), concurrency=2, prefetch=8)
    assert hold.seconds == 3 * 100 + 100 + HOLD_MARGIN
