"""The relay's Prometheus series, on a registry the relay owns.

==========================================  =================================================
``conveyor_outbox_backlog``                 committed rows not yet published (nor refused)
``conveyor_outbox_oldest_unsent_seconds``   age of the oldest of them (0 when there is none)
``conveyor_outbox_failed_rows``             rows refused for good (see ``last_error``): kept,
                                            never retried, never deleted by the clean-up
``conveyor_outbox_published_total``         rows published with a confirm and marked sent
``conveyor_outbox_publish_errors_total``    failed publishes by ``error`` (exception type)
``conveyor_outbox_commit_to_publish_seconds``  from the row's insert to its confirm
==========================================  =================================================

Backlog, age and failed rows are sampled from the table every ``metrics_interval`` seconds.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["OutboxMetrics"]


class OutboxMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.backlog = Gauge("conveyor_outbox_backlog", "Committed outbox rows not yet published", registry=r)
        self.oldest_unsent = Gauge(
            "conveyor_outbox_oldest_unsent_seconds", "Age of the oldest unsent outbox row", registry=r
        )
        self.failed_rows = Gauge("conveyor_outbox_failed_rows", "Outbox rows refused for good", registry=r)
        self.published = Counter("conveyor_outbox_published", "Outbox rows published and marked sent", registry=r)
        self.errors = Counter(
            "conveyor_outbox_publish_errors", "Failed outbox publishes", ["error"], registry=r
        )
        self.commit_to_publish = Histogram(
            "conveyor_outbox_commit_to_publish_seconds", "From an outbox row's insert to its confirmed publish",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=r,
        )

    def sampled(self, backlog: int, oldest_seconds: float, failed: int) -> None:
        self.backlog.set(backlog)
        self.oldest_unsent.set(oldest_seconds)
        self.failed_rows.set(failed)

    def render(self) -> bytes:
        return generate_latest(self.registry)
