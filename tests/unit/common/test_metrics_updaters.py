"""WorkerMetrics' direct updaters write exactly what prometheus-client's own inc() and
observe() write: same buckets (bounds included), same sums and counts, hostile values too."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram

from conveyor.common.metrics import WorkerMetrics

_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
VALUES = [0.0, -1.0, 0.005, 0.0050001, 0.00499, 1, 1.0, 300, 300.0001, 1e300, -0.0, 2.5, 59.999, 1e-12, math.inf]


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect() for s in metric.samples if not s.name.endswith("_created")}


@pytest.mark.parametrize("values", [VALUES, [0.001 * n for n in range(2000)], []])
def test_the_fast_observer_matches_prometheus_observe(values: list[float]) -> None:
    mine, theirs = CollectorRegistry(), CollectorRegistry()
    ours = Histogram("h_seconds", "x", ["job_type"], buckets=_BOUNDS, registry=mine)
    reference = Histogram("h_seconds", "x", ["job_type"], buckets=_BOUNDS, registry=theirs)
    metrics = WorkerMetrics(registry=CollectorRegistry())
    observe = metrics.observer(ours, "a")
    assert observe is metrics.observer(ours, "a"), "bound once, then looked up"
    reference.labels("a")
    for value in values:
        observe(value)
        reference.labels("a").observe(value)
    assert _samples(mine) == _samples(theirs)
