"""RabbitMQ topology of one work queue: names, arguments, bindings, and where a message goes.

Pure (no I/O, no broker client), so the rules are readable and testable on their own::

    producer, replay ─► q.jobs ──┬─ key q ─────────────────────────────► q     quorum, x-delivery-limit
     (kind "job")                └─ key q.retry.<t>s ─┐                  ▲ │
    worker retry, defer ─► q.retry ┬─ key q.retry.<t>s ┴► q.retry.<t>s ──┘ │  expired: broker → q.retry, key q
     (kind "retry")                └─ key q ───────────────────────────► q │
    worker dead letter ─► q.dlx ── key q.dlq ──────────────────────────► q.dlq   quorum, no delivery limit
     (kind "dead_letter")    ▲                                             │
                             └───────── over x-delivery-limit: broker ─────┘

* **One durable direct exchange per sender, named after the queue**, so least-privilege users
  are three regexes on names (README, "Least-privilege RabbitMQ users"). RabbitMQ checks a
  publish's ``write`` permission against the *exchange*; with the default exchange
  (``amq.default``) anyone allowed to publish at all could publish to every queue.

  ========================  =====================================  ==============================
  exchange                  who publishes                          bound to (routing key = queue)
  ========================  =====================================  ==============================
  ``<q>.jobs``              producers, ``conveyor dlq replay``     ``<q>`` and every delay tier
  ``<q>.retry``             workers (retries, deferrals); the      ``<q>`` and every delay tier
                            broker when a tier's TTL expires
  ``<q>.dlx``               workers (dead letters); the broker     ``<q>.dlq``
                            over the work queue's delivery limit
  ========================  =====================================  ==============================

  Suffixes rather than a shared prefix: a regex anchored on ``<q>`` covers one queue's
  names and nothing of another queue's, and no exchange has a queue's name (a permission
  regex matches queues and exchanges alike: binding queue ``<q>`` needs ``write`` on it,
  which must not become ``write`` on an exchange a worker may not publish to). Broker-side
  dead-lettering needs no permission when it happens, but *declaring* a queue with a
  dead-letter exchange needs ``write`` on that exchange, so the tiers dead-letter through
  ``<q>.retry`` and the work queue through ``<q>.dlx`` (both the worker writes anyway), not
  the default exchange (that would give the declarer ``write`` on ``amq.default``).
* **A publish names a queue and a kind; the transport picks the exchange**; the routing key
  is the target queue's name. A dead letter is recognised by its target (``<q>.dlq``,
  never delayed). A ``mandatory`` publish no binding routes is *returned*
  (``PublishNotConfirmed``). A missing exchange, or one the user may not write to, closes
  the channel (404 / 403): the transport sends the first publish to each exchange on a
  channel of its own (see ``rabbitmq_publisher``).
* **Delays are tier queues**: never held in worker memory, no delayed-message plugin (not in
  Debian's RabbitMQ packages, unmaintained). A delay goes to the smallest tier ≥ delay with a
  per-message ``expiration`` = delay. TTL expires only at a queue's head, so in a tier a
  message waits at least its own delay and at most the tier's TTL (head-of-line blocking is
  bounded by the tier), and a short delay never waits behind a long one in another tier.
* **A delay longer than the largest tier goes round again**, up to ``MAX_DELAY`` (30 days):
  it waits the largest tier's TTL and carries the rest in milliseconds
  (``REMAINING_DELAY``); the consumer that receives it sends it on through the tiers for the
  rest (a copy through ``<q>.retry``, confirmed, then the ack; no handler sees it, no attempt
  is spent) until nothing remains. Relative, not a due time: a message leaves a tier only
  after its TTL, so the waits add up to at least the delay whatever the clocks of producer
  and worker say (late by the hops' publish time, never early). The header is trusted only
  to wait longer (capped at ``MAX_DELAY``): a publisher could ask for that delay anyway.
* **Every queue is a durable quorum queue, tiers included.** Measured on RabbitMQ 3.10.8 and
  again on 4.0.5: quorum queues honour per-message TTL (``expiration``) as well as
  ``x-message-ttl`` (the lower wins) and expire at the head only, exactly like classic queues
  (4.0.5: a 100 ms message behind an 800 ms one left the tier with it, at 0.83 s), so the
  tiers do not need classic queues. A tier holds the *only* copy of a retried job (the
  original was acked once the copy was confirmed), so it gets the work queue's durability
  (replicated, fsynced) and **at-least-once dead-lettering** (``x-dead-letter-strategy``,
  which needs ``x-overflow: reject-publish``; quorum-only, 3.10+): an expired message leaves
  the tier only once the work queue has confirmed it. Classic queues dead-letter at-most-once.
  The work queue uses the same strategy for its ``x-delivery-limit`` crash-loop backstop:
  nothing vanishes.
* **The DLQ has no delivery limit** (``x-delivery-limit: -1``): browsing it (``conveyor dlq
  list``, ``show``, ``status``: get, then give back) must never drop a record. Measured on
  RabbitMQ 4.0.5: every way of giving a message back raises its ``x-delivery-count`` (nack or
  reject with requeue, closing the channel or the connection, cancelling the consumer), and a
  quorum queue declared without the argument has a default limit of 20, so the 21st browse
  dropped every entry (a DLQ has nowhere to dead-letter them). ``-1`` turns the limit off; a
  ``delivery-limit`` *policy* still wins over it (the lower limit applies), so no policy with
  one may match ``*.dlq``. A DLQ an earlier version declared without the argument keeps its
  arguments (they cannot change); ``declare`` keeps it and logs the policy that lifts its
  limit (``LEGACY_DLQ_ARGUMENTS``, ``legacy_dlq_advice``).
* **The work queue lets a consumer hold a delivery for 24 hours** (``x-consumer-timeout``,
  ``CONSUMER_TIMEOUT``), not RabbitMQ's 30 minutes: a job allowed to run longer than the
  broker's consumer timeout gets its whole channel closed, and every job in flight on it is
  redelivered. Measured on RabbitMQ 4.0.5: the queue argument works on quorum queues and
  overrides the node's ``consumer_timeout`` either way (a channel opened under a 5 s node
  timeout kept a delivery 80 s on a queue with 300 s); a ``consumer-timeout`` *policy* works
  too, alone, and with both the lower wins (argument 300 s + policy 5 s: closed), so no policy
  can raise the argument; ``x-consumer-timeout`` as a ``basic.consume`` argument is ignored
  (5 s: held 90 s); the broker checks once per channel tick (60 s: a 5 s timeout closed the
  channel after 60 s). The argument is neither compared on a redeclare nor changed by one
  (an existing queue keeps what it had, whatever a declare says), and AMQP 0-9-1 cannot read
  a queue's arguments, a policy or the node's setting. So the work queue also carries
  ``x-single-active-consumer: false`` (``CONSUMER_TIMEOUT_MARK``), RabbitMQ's default, which
  changes nothing but *is* compared: a queue declared with it has our timeout; one an
  earlier version declared fails that comparison, is kept with its old arguments
  (``Topology.legacy_work_queue_arguments``), and the node's timeout (or a policy) applies to it, which
  the transport can only be told (``consumer_timeout``, default RabbitMQ's 1800 s). The worker
  checks at start that every job fits (``consumer_timeout_advice`` says how to make it fit).
* **Upgrading from the default-exchange layout** (earlier 0.1 builds): the queues' dead-letter
  arguments changed, so ``declare`` of an old queue is a ``ConfigurationError``
  ("exists with other settings"). Drain the old queues (stop producers, let workers finish,
  ``conveyor dlq list`` to check the DLQ is empty or replayed), delete them, start the new
  workers.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.common import bounds
from conveyor.common.backoff import MAX_DELAY, check_delay
from conveyor.common.errors import ConfigurationError
from conveyor.common.queue_names import MAX_QUEUE_NAME

__all__ = [
    "CONSUMER_TIMEOUT",
    "CONSUMER_TIMEOUT_MARK",
    "DEFAULT_CONSUMER_TIMEOUT",
    "DEFAULT_DELAY_TIERS",
    "DIRECT",
    "DLQ_ARGUMENTS",
    "DLQ_SUFFIX",
    "LEGACY_DLQ_ARGUMENTS",
    "REMAINING_DELAY",
    "ROLES",
    "Binding",
    "Permissions",
    "Target",
    "Topology",
    "check_queue_name",
    "consumer_timeout_advice",
    "dead_letter_exchange",
    "jobs_exchange",
    "legacy_dlq_advice",
    "permissions",
    "retry_exchange",
    "tier_queue",
]

DEFAULT_DELAY_TIERS: tuple[float, ...] = (1, 5, 30, 120, 600, 3600)
DLQ_SUFFIX = ".dlq"
DIRECT = "direct"

_AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
# The DLQ: no delivery limit (RabbitMQ 4.x: -1 is off; without it a quorum queue's limit is 20).
DLQ_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum", "x-delivery-limit": -1}
# What earlier versions declared the DLQ with: on 4.x, the default limit of 20 applies.
LEGACY_DLQ_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}
# How long a consumer may keep a delivery of a work queue unacknowledged (x-consumer-timeout).
CONSUMER_TIMEOUT = 24 * 3600.0
# RabbitMQ's default consumer_timeout: what applies to a queue declared without the argument.
DEFAULT_CONSUMER_TIMEOUT = 1800.0
# RabbitMQ's default, said out loud: compared on a redeclare, so it marks a queue declared with
# CONSUMER_TIMEOUT (x-consumer-timeout itself is not compared; see the module docs).
CONSUMER_TIMEOUT_MARK: dict[str, Any] = {"x-single-active-consumer": False}
_CONSUMER_TIMEOUT_ARGUMENTS = {"x-consumer-timeout": round(CONSUMER_TIMEOUT * 1000), **CONSUMER_TIMEOUT_MARK}
# On a message in a delay tier: milliseconds it must still wait after the tier (a delay longer
# than the largest tier). Set by the transport only; the consumer sends such a message on.
REMAINING_DELAY = "x-conveyor-remaining-delay-ms"


def tier_queue(queue: str, tier: float) -> str:
    """``orders.retry.5s`` (``orders.retry.500ms`` for sub-second tiers)."""
    if float(tier).is_integer():
        return f"{queue}.retry.{int(tier)}s"
    return f"{queue}.retry.{round(tier * 1000)}ms"


def jobs_exchange(queue: str) -> str:
    """New jobs and replays for ``queue``: the only exchange a producer may write to."""
    return f"{queue}.jobs"


def retry_exchange(queue: str) -> str:
    """Retry and deferral copies, and expired delay tiers, back into ``queue``."""
    return f"{queue}.retry"


def dead_letter_exchange(queue: str) -> str:
    """Dead letters of ``queue``, into ``<queue>.dlq``."""
    return f"{queue}.dlx"


@dataclass(frozen=True, slots=True)
class Binding:
    exchange: str
    queue: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class Target:
    """Where one publish goes: exchange, routing key, per-message TTL in ms (None: no delay),
    and the milliseconds still to wait after that TTL (None: none; see ``REMAINING_DELAY``)."""

    exchange: str
    routing_key: str
    ttl_ms: int | None
    remaining_ms: int | None = None


@dataclass(frozen=True)
class Topology:
    delay_tiers: tuple[float, ...]
    delivery_limit: int

    @classmethod
    def create(cls, delay_tiers: Sequence[float], delivery_limit: int) -> Topology:
        tiers = tuple(sorted({bounds.seconds("delay_tiers", float(t), at_most=MAX_DELAY) for t in delay_tiers}))
        if not tiers or tiers[0] < 0.001:
            raise ConfigurationError("delay_tiers must hold at least one delay, each ≥ 0.001 s")
        return cls(tiers, bounds.count("delivery_limit", delivery_limit))

    @property
    def max_delay(self) -> float:
        """The largest tier: the longest delay one pass through the tiers waits."""
        return self.delay_tiers[-1]

    def exchanges(self, queue: str) -> list[str]:
        """The exchanges of ``queue`` (durable, direct), declared before its queues."""
        _check_work_queue(queue)
        return [jobs_exchange(queue), retry_exchange(queue), dead_letter_exchange(queue)]

    def declarations(self, queue: str, dlq: str) -> list[tuple[str, dict[str, Any]]]:
        """Queues to declare for ``queue`` with their arguments, dead-letter targets first."""
        _check_work_queue(queue)
        plan: list[tuple[str, dict[str, Any]]] = [
            (dlq, dict(DLQ_ARGUMENTS)),
            (queue, {**self.legacy_work_queue_arguments(queue, dlq), **_CONSUMER_TIMEOUT_ARGUMENTS}),
        ]
        for tier in self.delay_tiers:
            arguments = {
                "x-queue-type": "quorum",
                "x-message-ttl": round(tier * 1000),
                **_dead_letter_to(retry_exchange(queue), queue),
            }
            plan.append((tier_queue(queue, tier), arguments))
        return plan

    def legacy_work_queue_arguments(self, queue: str, dlq: str) -> dict[str, Any]:
        """The work queue as earlier versions declared it: without our consumer timeout."""
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            **_dead_letter_to(dead_letter_exchange(queue), dlq),
        }

    def bindings(self, queue: str, dlq: str) -> list[Binding]:
        """Every binding of ``queue``'s exchanges; the routing key is the target queue's name."""
        targets = [queue, *(tier_queue(queue, tier) for tier in self.delay_tiers)]
        plan = [Binding(exchange, target, target)
                for exchange in (jobs_exchange(queue), retry_exchange(queue)) for target in targets]
        plan.append(Binding(dead_letter_exchange(queue), dlq, dlq))
        return plan

    def route(self, queue: str, delay: float) -> tuple[str, int | None]:
        """Which queue a message for ``queue`` waits in first, and its per-message TTL in ms
        (None: no delay). A delay past the largest tier waits that tier first (``remaining``)."""
        target = self.targets(queue, "job")(delay)
        return target.routing_key, target.ttl_ms

    def remaining(self, delay: float) -> int | None:
        """Milliseconds of ``delay`` left after one pass through the largest tier (None: none)."""
        rest = delay - self.max_delay
        return math.ceil(rest * 1000 - 1e-6) if rest > 0 else None

    def target(self, queue: str, delay: float, kind: str) -> Target:
        """Exchange, routing key and TTL of a publish of ``kind`` to ``queue`` (see module docs)."""
        return self.targets(queue, kind)(delay)

    def targets(self, queue: str, kind: str) -> Callable[[float], Target]:
        """``target(queue, delay, kind)`` as a function of the delay, with the exchange and the
        tier queues' names worked out once: a transport keeps one per queue and kind, and every
        retry copy is a delayed publish (its target cost about as much as the rest of the copy)."""
        if queue.endswith(DLQ_SUFFIX):  # a dead letter: never delayed, whoever sends it
            dead = Target(dead_letter_exchange(queue[: -len(DLQ_SUFFIX)]), queue, None)
            return lambda delay: dead
        if kind == "dead_letter":
            raise ConfigurationError(f"a dead letter must go to a dead-letter queue (*{DLQ_SUFFIX}), not {queue!r}")
        exchange = retry_exchange(queue) if kind == "retry" else jobs_exchange(queue)
        tiers, remaining = self.delay_tiers, self.remaining
        names, last = tuple(tier_queue(queue, tier) for tier in tiers), len(tiers) - 1

        def target(delay: float) -> Target:
            if delay <= 0:
                return Target(exchange, queue, None)
            check_delay(delay)
            index = min(bisect.bisect_left(tiers, delay), last)  # the smallest tier ≥ delay
            # Round up: a message may arrive a little late, never early. Past the largest tier,
            # the rest is waited after it (``remaining``).
            ttl_ms = max(1, math.ceil(min(delay, tiers[index]) * 1000 - 1e-6))
            return Target(exchange, names[index], ttl_ms, remaining(delay))

        return target


@dataclass(frozen=True, slots=True)
class Permissions:
    """``rabbitmqctl set_permissions`` regexes (configure, write, read) for one user."""

    configure: str
    write: str
    read: str

    def command(self, user: str, vhost: str = "/") -> str:
        return f"rabbitmqctl set_permissions -p '{vhost}' '{user}' '{self.configure}' '{self.write}' '{self.read}'"


ROLES = ("producer", "worker", "operator")
_NOTHING = "^$"
_RETRY = r"\.retry(\.[0-9]+m?s)?"  # the retry exchange and the delay tiers


def permissions(role: str, queues: Sequence[str]) -> Permissions:
    """Least-privilege permissions of ``role`` for these work queues (README has them spelled out).

    * ``producer``: write ``<q>.jobs``; nothing else (``declare`` checks passively).
    * ``worker``: declare its names; read ``<q>`` (and, for declaring and binding, the tiers
      and its exchanges); write ``<q>.retry`` and ``<q>.dlx`` (and, for binding, its queues),
      never ``<q>.jobs`` and never read ``<q>.dlq``.
    * ``operator`` (``conveyor dlq …``, ``status``): read ``<q>.dlq``, write ``<q>.jobs`` (replay).
    """
    if not queues:
        raise ConfigurationError("permissions need at least one queue")
    names = "|".join(re.escape(q) for q in queues)
    base = f"({names})" if len(queues) > 1 else names
    if role == "producer":
        return Permissions(_NOTHING, rf"^{base}\.jobs$", _NOTHING)
    if role == "worker":
        return Permissions(
            configure=rf"^{base}(\.jobs|{_RETRY}|\.dlx|\.dlq)?$",
            write=rf"^{base}({_RETRY}|\.dlx|\.dlq)?$",
            read=rf"^{base}(\.jobs|{_RETRY}|\.dlx)?$",
        )
    if role == "operator":
        return Permissions(_NOTHING, rf"^{base}\.jobs$", rf"^{base}\.dlq$")
    raise ConfigurationError(f"unknown role {role!r}; one of {', '.join(ROLES)}")


def legacy_dlq_advice(dlq: str, vhost: str) -> str:
    """What to do about a DLQ declared with ``LEGACY_DLQ_ARGUMENTS``: the policy that lifts its limit."""
    pattern = "^" + re.escape(dlq) + "$"
    return (
        f"dead-letter queue {dlq!r} was declared by an earlier Conveyor without a delivery limit of -1: on "
        "RabbitMQ 4.x it has the default limit of 20, every browse (conveyor dlq list/show, status) counts "
        "as a delivery, and after 20 browses the broker drops its dead letters. Lift the limit with a "
        f"policy: rabbitmqctl set_policy -p '{vhost}' --apply-to quorum_queues "
        f"'conveyor-dlq-{dlq}' '{pattern}' '{{\"delivery-limit\":-1}}' (policies do not merge: if another "
        "policy applies to this queue, add delivery-limit -1 to that one), or replay or purge it, delete "
        "it, and let a worker declare it again"
    )


def consumer_timeout_advice(queue: str, vhost: str, *, legacy: bool) -> str:
    """How to let a consumer of ``queue`` hold a delivery for ``CONSUMER_TIMEOUT``."""
    if not legacy:
        return ("RabbitMQ takes the lower of the queue's x-consumer-timeout and any consumer-timeout policy, so "
                "nothing raises it: lower the job's timeout (and check no policy lowers the queue's)")
    pattern = "^" + re.escape(queue) + "$"
    return (
        f"queue {queue!r} was declared by an earlier Conveyor without x-consumer-timeout, so the node's "
        "consumer_timeout applies; raise it with a policy: rabbitmqctl set_policy -p "
        f"'{vhost}' --apply-to quorum_queues 'conveyor-consumer-timeout-{queue}' '{pattern}' "
        f"'{{\"consumer-timeout\":{round(CONSUMER_TIMEOUT * 1000)}}}' (policies do not merge: if another "
        "policy applies to this queue, add consumer-timeout to that one) and tell the worker: "
        f"RabbitMQTransport(consumer_timeout={CONSUMER_TIMEOUT:g}); or drain and delete the queue and let a "
        "worker declare it again"
    )


# AMQP 0-9-1 names: these characters only, a queue's at most 256, an exchange's at most 127
# (pamqp refuses any other with a bare ValueError). A queue lends its name to its exchanges,
# the longest ``<q>.retry``; its tier queues' (``<q>.retry.<tier>s``) stay far below 256.
_NAME = re.compile(r"[a-zA-Z0-9_.:@#,/+ -]+")
_MAX_NAME = MAX_QUEUE_NAME  # the <q>.retry exchange's bound, shared with the portable-name rule


def check_queue_name(queue: str) -> None:
    """A work queue's name, or its DLQ's: one pamqp would refuse (a bare ValueError and its
    traceback from ``dlq list``, ``status``) is a ``ConfigurationError`` naming it."""
    base = queue.removesuffix(DLQ_SUFFIX)
    if not _NAME.fullmatch(base) or len(base) > _MAX_NAME:
        raise ConfigurationError(
            f"invalid RabbitMQ queue name {queue[:80]!r}: use 1 to {_MAX_NAME} of letters, digits, space "
            "and _ . : @ # , / + -"
        )


def _check_work_queue(queue: str) -> None:
    check_queue_name(queue)
    # RabbitMQ refuses to declare them; the refusal came back as an AccessRefused that blamed
    # the user's permissions.
    if queue.startswith("amq."):
        raise ConfigurationError(f"queue names starting with 'amq.' are reserved by RabbitMQ: {queue!r}")
    # "x.dlq" as a work queue would be taken for the DLQ of "x" when publishing.
    if queue.endswith(DLQ_SUFFIX):
        raise ConfigurationError(f"queue names ending in {DLQ_SUFFIX!r} are reserved for dead-letter queues: {queue!r}")


def _dead_letter_to(exchange: str, routing_key: str) -> dict[str, Any]:
    return {"x-dead-letter-exchange": exchange, "x-dead-letter-routing-key": routing_key, **_AT_LEAST_ONCE}
