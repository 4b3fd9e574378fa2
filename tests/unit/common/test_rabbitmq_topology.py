"""The RabbitMQ queue layout and delay routing (pure; no broker needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conveyor.common.backoff import MAX_DELAY
from conveyor.common.errors import ConfigurationError
from conveyor.common.transport.rabbitmq.consumer import remaining_delay
from conveyor.common.transport.rabbitmq.topology import (
    REMAINING_DELAY,
    ROLES,
    Binding,
    Target,
    Topology,
    permissions,
    tier_queue,
)

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
        (90.0, "jobs.retry.30s", 30000),  # beyond the largest tier: that tier first, then round again
    ],
)
def test_a_delay_goes_to_the_smallest_tier_that_holds_it(delay: float, target: str, ttl_ms: int | None) -> None:
    assert TOPOLOGY.route("jobs", delay) == (target, ttl_ms)


@pytest.mark.parametrize(
    ("delay", "remaining_ms"),
    [(0.0, None), (29.9, None), (30.0, None), (30.0004, 1), (90.0, 60000), (86400.0, 86370000)],
)
def test_a_delay_past_the_largest_tier_carries_the_rest_never_less(delay: float, remaining_ms: int | None) -> None:
    target = TOPOLOGY.target("jobs", delay, "job")
    assert target.remaining_ms == remaining_ms
    # The two legs add up to at least the delay: never early.
    assert ((target.ttl_ms or 0) + (remaining_ms or 0)) / 1000 >= delay


@pytest.mark.parametrize(("delay", "says"), [(MAX_DELAY + 1, "longest Conveyor honours"),
                                              (float("inf"), "longest Conveyor honours"), (float("nan"), "not NaN")])
def test_a_delay_past_the_maximum_is_refused_not_shortened(delay: float, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        TOPOLOGY.target("jobs", delay, "retry")


def test_declarations_put_dead_letter_targets_first() -> None:
    plan = dict(TOPOLOGY.declarations("jobs", "jobs.dlq"))
    names = [name for name, _ in TOPOLOGY.declarations("jobs", "jobs.dlq")]
    assert names == ["jobs.dlq", "jobs", "jobs.retry.1s", "jobs.retry.5s", "jobs.retry.30s"]
    # No delivery limit (-1: off; RabbitMQ 4.x's default is 20, and every browse counts).
    assert plan["jobs.dlq"] == {"x-queue-type": "quorum", "x-delivery-limit": -1}
    work = plan["jobs"]
    assert work["x-queue-type"] == "quorum"
    assert work["x-delivery-limit"] == 7
    # Named exchanges, never the default one: declaring a queue with a dead-letter exchange
    # needs write permission on it, and write on amq.default would mean "publish anywhere".
    assert (work["x-dead-letter-exchange"], work["x-dead-letter-routing-key"]) == ("jobs.dlx", "jobs.dlq")
    tier = plan["jobs.retry.5s"]
    assert tier["x-message-ttl"] == 5000
    assert (tier["x-dead-letter-exchange"], tier["x-dead-letter-routing-key"]) == ("jobs.retry", "jobs")
    assert tier["x-dead-letter-strategy"] == "at-least-once"
    assert tier["x-overflow"] == "reject-publish"


@pytest.mark.parametrize(("tiers", "limit"), [((), 5), ((0, 5), 5), ((-1,), 5), ((1,), 0)])
def test_bad_settings_are_configuration_errors(tiers: tuple[float, ...], limit: int) -> None:
    with pytest.raises(ConfigurationError):
        Topology.create(tiers, limit)


def test_each_sender_has_its_own_exchange_named_after_the_queue() -> None:
    assert TOPOLOGY.exchanges("jobs") == ["jobs.jobs", "jobs.retry", "jobs.dlx"]
    assert TOPOLOGY.target("jobs", 0, "job") == Target("jobs.jobs", "jobs", None)
    assert TOPOLOGY.target("jobs", 4.2, "job") == Target("jobs.jobs", "jobs.retry.5s", 4200)
    assert TOPOLOGY.target("jobs", 4.2, "retry") == Target("jobs.retry", "jobs.retry.5s", 4200)
    assert TOPOLOGY.target("jobs", 0, "retry") == Target("jobs.retry", "jobs", None)
    assert TOPOLOGY.target("jobs.dlq", 0, "dead_letter") == Target("jobs.dlx", "jobs.dlq", None)
    # A dead letter is recognised by its target and never delayed, whoever sends it.
    assert TOPOLOGY.target("jobs.dlq", 5, "job") == Target("jobs.dlx", "jobs.dlq", None)


def test_bindings_route_by_target_queue_name() -> None:
    bindings = TOPOLOGY.bindings("jobs", "jobs.dlq")
    for exchange in ("jobs.jobs", "jobs.retry"):
        assert {(b.queue, b.routing_key) for b in bindings if b.exchange == exchange} == {
            ("jobs", "jobs"), ("jobs.retry.1s", "jobs.retry.1s"), ("jobs.retry.5s", "jobs.retry.5s"),
            ("jobs.retry.30s", "jobs.retry.30s"),
        }
    assert [b for b in bindings if b.exchange == "jobs.dlx"] == [Binding("jobs.dlx", "jobs.dlq", "jobs.dlq")]
    # Every queue an expired tier or the delivery limit dead-letters into is bound for that key.
    for name, arguments in TOPOLOGY.declarations("jobs", "jobs.dlq"):
        if "x-dead-letter-exchange" in arguments:
            expected = Binding(arguments["x-dead-letter-exchange"], arguments["x-dead-letter-routing-key"],
                               arguments["x-dead-letter-routing-key"])
            assert expected in bindings, name


def test_dead_letters_only_go_to_a_dead_letter_queue_and_dlq_names_are_reserved() -> None:
    with pytest.raises(ConfigurationError):
        TOPOLOGY.target("jobs", 0, "dead_letter")
    with pytest.raises(ConfigurationError, match="reserved"):
        TOPOLOGY.declarations("orders.dlq", "orders.dlq.dlq")
    with pytest.raises(ConfigurationError, match="'amq.' are reserved by RabbitMQ"):
        TOPOLOGY.declarations("amq.orders", "amq.orders.dlq")  # it was an AccessRefused blaming permissions


def test_the_broker_docs_show_the_permissions_the_code_computes() -> None:
    readme = (Path(__file__).resolve().parents[3] / "docs" / "brokers.md").read_text(encoding="utf-8")
    for role in ROLES:
        assert permissions(role, ["emails"]).command(f"emails-{role}", "prod") in readme, role


def test_permission_regexes_cover_exactly_the_names_each_role_needs() -> None:
    names = ["emails", "emails.jobs", "emails.retry", "emails.retry.5s", "emails.retry.250ms", "emails.dlx",
             "emails.dlq", "emails.urgent", "emails.urgent.jobs", "emails.retry.x", "other.jobs", "amq.default"]

    def allowed(pattern: str) -> set[str]:
        return {n for n in names if re.search(pattern, n)}

    producer, worker, operator = (permissions(role, ["emails"]) for role in ROLES)
    assert allowed(producer.configure) == allowed(producer.read) == set()
    assert allowed(producer.write) == {"emails.jobs"}
    own = {"emails", "emails.jobs", "emails.retry", "emails.retry.5s", "emails.retry.250ms", "emails.dlx", "emails.dlq"}
    assert allowed(worker.configure) == own
    assert allowed(worker.write) == own - {"emails.jobs"}  # never new jobs
    assert allowed(worker.read) == own - {"emails.dlq"}  # dead letters are the operator's
    assert (allowed(operator.configure), allowed(operator.write), allowed(operator.read)) == (
        set(), {"emails.jobs"}, {"emails.dlq"})
    several = permissions("producer", ["emails", "sms.out"])
    assert {n for n in ["emails.jobs", "sms.out.jobs", "smsXout.jobs"] if re.search(several.write, n)} == {
        "emails.jobs", "sms.out.jobs"}


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None), ("2500", 2.5), (b"2500", 2.5), (2500, 2.5),  # as we write it; bytes and ints from others
        ("0", None), ("-5", None), ("1.5", None), ("²", None), ("abc", None), (True, None), ("", None),
        ("9" * 17, None),  # past 16 digits: not a delay anyone asked for
        (str(int(MAX_DELAY * 1000) * 10), MAX_DELAY),  # trusted only up to the maximum
    ],
)
def test_a_remaining_delay_header_is_read_only_as_a_positive_wait_up_to_the_maximum(
    header: object, seconds: float | None
) -> None:
    headers = None if header is None else {REMAINING_DELAY: header}
    assert remaining_delay(headers) == seconds


def test_routing_picks_the_smallest_tier_holding_the_delay_for_every_delay_and_queue() -> None:
    topology = Topology.create((0.05, 0.5, 5, 30), delivery_limit=20)
    delays = [0.001, 0.0499, 0.05, 0.0501, 0.3, 0.5, 0.50001, 4.99, 5.0, 29.0, 30.0, 31.0, 3600.0]
    for queue in ["q", "orders", "a.b-c_d"]:
        for delay in delays:
            tier = next((t for t in topology.delay_tiers if t >= delay), topology.max_delay)
            assert topology.route(queue, delay)[0] == tier_queue(queue, tier)


@pytest.mark.parametrize("queue", ["", "orders.ünï", "emoji.\U0001f600", "q" * 122, "tab\there"])
def test_a_queue_name_amqp_cannot_carry_is_a_configuration_error_not_pamqps_value_error(queue: str) -> None:
    # `conveyor dlq list --queue é` printed pamqp's "ValueError: Invalid value for queue" traceback.
    with pytest.raises(ConfigurationError, match="invalid RabbitMQ queue name"):
        TOPOLOGY.declarations(queue, f"{queue}.dlq")
    with pytest.raises(ConfigurationError, match="invalid RabbitMQ queue name"):
        TOPOLOGY.exchanges(queue)


def test_every_name_of_the_longest_queue_fits_an_amqp_frame() -> None:
    from pamqp import commands

    queue = "q" * 121
    longest = Topology.create((0.25, 1, 2_592_000), delivery_limit=7)
    for name, _ in longest.declarations(queue, f"{queue}.dlq"):
        commands.Queue.Declare(queue=name)  # raises ValueError past 256 or for another character
    for exchange in longest.exchanges(queue):
        commands.Exchange.Declare(exchange=exchange)


def _target_as_written_before(topology: Topology, queue: str, delay: float, kind: str) -> Target:
    """``Topology.target`` before ``targets`` (issue 18): every name and number worked out per call."""
    import bisect
    import math

    from conveyor.common.backoff import check_delay
    from conveyor.common.transport.rabbitmq.topology import dead_letter_exchange, jobs_exchange, retry_exchange

    if queue.endswith(".dlq"):
        return Target(dead_letter_exchange(queue[: -len(".dlq")]), queue, None)
    if kind == "dead_letter":
        raise ConfigurationError("a dead letter must go to a dead-letter queue")
    if delay <= 0:
        routing_key, ttl_ms = queue, None
    else:
        check_delay(delay)
        index = min(bisect.bisect_left(topology.delay_tiers, delay), len(topology.delay_tiers) - 1)
        tier = topology.delay_tiers[index]
        routing_key, ttl_ms = tier_queue(queue, tier), max(1, math.ceil(min(delay, tier) * 1000 - 1e-6))
    rest = delay - topology.max_delay
    remaining = math.ceil(rest * 1000 - 1e-6) if rest > 0 else None
    exchange = retry_exchange(queue) if kind == "retry" else jobs_exchange(queue)
    return Target(exchange, routing_key, ttl_ms, remaining)


@pytest.mark.parametrize("tiers", [(30, 1, 5), (0.05, 0.5, 5.0), (0.001,), (3600, 86400)])
def test_a_delayed_target_from_names_worked_out_once_is_the_one_worked_out_per_call(tiers: tuple[float, ...]) -> None:
    """The same target for every delay (tiers exactly, between, past the largest, tiny, zero,
    negative), every kind and a dead-letter queue; the same refusals (too long, NaN, a dead
    letter to a work queue), and a function asked many times never drifts."""
    import random

    topology = Topology.create(tiers, delivery_limit=7)
    rng = random.Random(18)
    delays = [*topology.delay_tiers, *(t + 1e-9 for t in topology.delay_tiers), *(t - 1e-9 for t in topology.delay_tiers),
              0.0, -1.0, 1e-9, 0.0005, 0.0015, MAX_DELAY, MAX_DELAY - 0.0001, *(rng.uniform(0, 200_000) for _ in range(300)),
              *(rng.uniform(0, 2) for _ in range(300))]
    for queue in ("orders", "orders.dlq"):
        for kind in ("job", "retry", "dead_letter"):
            if kind == "dead_letter" and queue == "orders":
                with pytest.raises(ConfigurationError):
                    topology.targets(queue, kind)
                continue
            targets = topology.targets(queue, kind)
            for delay in delays * 2:
                assert targets(delay) == _target_as_written_before(topology, queue, delay, kind), (queue, kind, delay)
                assert topology.target(queue, delay, kind) == targets(delay)
            if queue == "orders":
                for refused in (MAX_DELAY + 1, float("nan"), float("inf")):
                    with pytest.raises(ConfigurationError):
                        targets(refused)
