"""What the demo tells its user to run next must run."""

from __future__ import annotations

from conveyor.common.jobs.registry import JobRegistry
from conveyor.consumer.cli.support import load_registry
from conveyor.consumer.ops.demo import WORKER_TARGET, demo_jobs


def test_the_worker_target_the_demo_suggests_loads_its_jobs() -> None:
    # It said `conveyor worker consumer.demo:demo_jobs`: "no module named 'consumer.demo'".
    registry = load_registry(WORKER_TARGET, "TARGET")
    assert isinstance(registry, JobRegistry)
    assert {s.job_type for s in registry.specs()} == {s.job_type for s in demo_jobs().specs()} != set()
