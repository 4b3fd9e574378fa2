"""Prometheus metrics, on a registry owned by each worker or producer (no global state).

Labels are bounded sets: job types registered with the worker (anything else is
``unknown``), closed reason codes, queue names from configuration. Never job ids or error
messages, which would create a series per job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from consumer.outcome import Outcome

__all__ = ["WorkerMetrics"]

UNKNOWN = "unknown"
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.published = Counter("conveyor_jobs_published", "Jobs published (confirmed)", ["job_type"], registry=r)
        self.succeeded = Counter("conveyor_jobs_succeeded", "Jobs that succeeded", ["job_type"], registry=r)
        self.failed = Counter(
            "conveyor_jobs_failed", "Failed attempts, by reason", ["job_type", "reason"], registry=r
        )
        self.retried = Counter("conveyor_jobs_retried", "Retry copies published", ["job_type"], registry=r)
        self.deferred = Counter("conveyor_jobs_deferred", "Jobs deferred (schema too new)", ["job_type"], registry=r)
        self.released = Counter("conveyor_jobs_released", "Deliveries given back untouched", ["job_type"], registry=r)
        self.dead_lettered = Counter(
            "conveyor_jobs_dead_lettered", "Jobs dead-lettered, by reason", ["job_type", "reason"], registry=r
        )
        self.duration = Histogram(
            "conveyor_job_duration_seconds", "Handler duration", ["job_type"], buckets=_DURATION_BUCKETS, registry=r
        )
        self.in_flight = Gauge("conveyor_jobs_in_flight", "Jobs being handled now", ["queue"], registry=r)
        self.breaker_state = Gauge(
            "conveyor_breaker_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)", ["breaker"], registry=r
        )
        self.consumers_attached = Gauge(
            "conveyor_consumers_attached", "Queues with an attached consumer", registry=r
        )
        self._known: set[str] = set()

    def know_job_types(self, job_types: list[str]) -> None:
        self._known.update(job_types)

    def label(self, job_type: str | None) -> str:
        return job_type if job_type in self._known else UNKNOWN

    def settled(self, job_type: str | None, action: str, outcome: Outcome) -> None:
        label = self.label(job_type)
        if outcome.duration:
            self.duration.labels(label).observe(outcome.duration)
        if outcome.error_type and outcome.reason:
            self.failed.labels(label, outcome.reason).inc()
        match action:
            case "succeeded":
                self.succeeded.labels(label).inc()
            case "retried":
                self.retried.labels(label).inc()
            case "deferred":
                self.deferred.labels(label).inc()
            case "released":
                self.released.labels(label).inc()

    def dead_letter(self, job_type: str | None, reason: str) -> None:
        self.dead_lettered.labels(self.label(job_type), reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
