"""The RabbitMQ queue layout and delay routing (pure; no broker needed)."""

from __future__ import annotations

import pytest

from common.errors import ConfigurationError
from common.transport.rabbitmq_topology import Topology, tier_queue

TOPOLOGY = Topology.create((30, 1, 5), delivery_limit=7)


def test_tiers_are_sorted_and_named_by_their_delay() -> None:
    assert TOPOLOGY.delay_tiers == (1.0, 5.0, 30.0)
    assert tier_queue("jobs", 5) == "jobs.retry.5s"
    assert tier_queue("jobs", 0.25) == "jobs.retry.250ms"


@pytest.mark.parametrize(
    ("delay", "target", "ttl_ms"),
    [
        (0.0, "jobs", None),
        (0.2, "jobs.retry.1s", 200),
        (1.0, "jobs.retry.1s", 1000),
        (1.0004, "jobs.retry.5s", 1001),  # rounded up: late by < 1 ms, never early
        (4.2, "jobs.retry.5s", 4200),
        (30.0, "jobs.retry.30s", 30000),
        (90.0, "jobs.retry.30s", 30000),  # beyond the largest tier: clamped to it
    ],
)
def test_a_delay_goes_to_the_smallest_tier_that_holds_it(delay: float, target: str, ttl_ms: int | None) -> None:
    assert TOPOLOGY.route("jobs", delay) == (target, ttl_ms)


def test_declarations_put_dead_letter_targets_first() -> None:
    plan = dict(TOPOLOGY.declarations("jobs", "jobs.dlq"))
    names = [name for name, _ in TOPOLOGY.declarations("jobs", "jobs.dlq")]
    assert names == ["jobs.dlq", "jobs", "jobs.retry.1s", "jobs.retry.5s", "jobs.retry.30s"]
    assert plan["jobs.dlq"] == {"x-queue-type": "quorum"}  # no delivery limit: browsing never drops
    work = plan["jobs"]
    assert work["x-queue-type"] == "quorum"
    assert work["x-delivery-limit"] == 7
    assert (work["x-dead-letter-exchange"], work["x-dead-letter-routing-key"]) == ("", "jobs.dlq")
    tier = plan["jobs.retry.5s"]
    assert tier["x-message-ttl"] == 5000
    assert (tier["x-dead-letter-exchange"], tier["x-dead-letter-routing-key"]) == ("", "jobs")
    assert tier["x-dead-letter-strategy"] == "at-least-once"
    assert tier["x-overflow"] == "reject-publish"


@pytest.mark.parametrize(("tiers", "limit"), [((), 5), ((0, 5), 5), ((-1,), 5), ((1,), 0)])
def test_bad_settings_are_configuration_errors(tiers: tuple[float, ...], limit: int) -> None:
    with pytest.raises(ConfigurationError):
        Topology.create(tiers, limit)
