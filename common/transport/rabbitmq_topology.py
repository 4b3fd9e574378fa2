"""RabbitMQ topology of one work queue: names, queue arguments, and where a delay goes.

Pure (no I/O, no broker client), so the rules are readable and testable on their own::

    publish(q, delay=0) ─────────────────────────────► q         quorum, x-delivery-limit
    publish(q, delay=d) ─► q.retry.<tier>s ─expired──►  │         └─ over the limit ─► q.dlq
                           quorum, x-message-ttl=tier                                 quorum
                           + per-message expiration=d

* **The default exchange, no named exchange.** A publish names a queue, which is exactly what
  the default exchange routes on: nothing to declare or bind (no binding to forget or to
  restore after a reconnect). A ``mandatory`` publish to an undeclared queue comes back
  *returned* (→ ``PublishNotConfirmed``), whereas publishing to a missing *named* exchange would
  close the channel (404) under every concurrent publish. Dead-lettering routes through the
  default exchange too (``x-dead-letter-exchange: ""`` + ``x-dead-letter-routing-key``).
* **Delays are tier queues**: never held in worker memory, no delayed-message plugin (not in
  Debian's 3.10, unmaintained). A delay goes to the smallest tier ≥ delay with a per-message
  ``expiration`` = delay. TTL expires only at a queue's head, so in a tier a message waits at
  least its own delay and at most the tier's TTL (head-of-line blocking is bounded by the tier),
  and a short delay never waits behind a long one in another tier. A delay above the largest
  tier is clamped to it (and logged): choose tiers that cover your longest backoff.
* **Every queue is a durable quorum queue, tiers included.** Measured on RabbitMQ 3.10.8:
  quorum queues honour per-message TTL (``expiration``) as well as ``x-message-ttl`` (the lower
  wins) and expire at the head only, exactly like classic queues, so the tiers do not need
  classic queues. A tier holds the *only* copy of a retried job (the original was acked once
  the copy was confirmed), so it gets the work queue's durability (replicated, fsynced) and
  **at-least-once dead-lettering** (``x-dead-letter-strategy``, which needs
  ``x-overflow: reject-publish``; quorum-only, 3.10+): an expired message leaves the tier only
  once the work queue has confirmed it. Classic queues dead-letter at-most-once. The work queue
  uses the same strategy for its ``x-delivery-limit`` crash-loop backstop: nothing vanishes.
  The DLQ has no delivery limit: browsing it (get + release) must never drop a record.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigurationError

__all__ = ["DEFAULT_DELAY_TIERS", "Topology", "tier_queue"]

log = logging.getLogger(__name__)

DEFAULT_DELAY_TIERS: tuple[float, ...] = (1, 5, 30, 120, 600, 3600)

_AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def tier_queue(queue: str, tier: float) -> str:
    """``orders.retry.5s`` (``orders.retry.500ms`` for sub-second tiers)."""
    if float(tier).is_integer():
        return f"{queue}.retry.{int(tier)}s"
    return f"{queue}.retry.{round(tier * 1000)}ms"


@dataclass(frozen=True)
class Topology:
    delay_tiers: tuple[float, ...]
    delivery_limit: int

    @classmethod
    def create(cls, delay_tiers: Sequence[float], delivery_limit: int) -> Topology:
        tiers = tuple(sorted({float(t) for t in delay_tiers}))
        if not tiers or tiers[0] < 0.001:
            raise ConfigurationError("delay_tiers must hold at least one delay, each ≥ 0.001 s")
        if delivery_limit < 1:
            raise ConfigurationError("delivery_limit must be ≥ 1")
        return cls(tiers, delivery_limit)

    @property
    def max_delay(self) -> float:
        """The longest delay honoured exactly; longer ones are clamped to it."""
        return self.delay_tiers[-1]

    def declarations(self, queue: str, dlq: str) -> list[tuple[str, dict[str, Any]]]:
        """Queues to declare for ``queue`` with their arguments, dead-letter targets first."""
        plan: list[tuple[str, dict[str, Any]]] = [
            (dlq, {"x-queue-type": "quorum"}),
            (
                queue,
                {
                    "x-queue-type": "quorum",
                    "x-delivery-limit": self.delivery_limit,
                    **_dead_letter_to(dlq),
                },
            ),
        ]
        for tier in self.delay_tiers:
            arguments = {"x-queue-type": "quorum", "x-message-ttl": round(tier * 1000), **_dead_letter_to(queue)}
            plan.append((tier_queue(queue, tier), arguments))
        return plan

    def route(self, queue: str, delay: float) -> tuple[str, int | None]:
        """Where a message for ``queue`` goes, and its per-message TTL in ms (None: no delay)."""
        if delay <= 0:
            return queue, None
        tier = next((t for t in self.delay_tiers if t >= delay), self.max_delay)
        if delay > tier:
            log.warning(
                "delay %.1fs exceeds the largest delay tier; clamped to %gs", delay, tier, extra={"queue": queue}
            )
            delay = tier
        # Round up: a message may arrive a little late, never early.
        return tier_queue(queue, tier), max(1, math.ceil(delay * 1000 - 1e-6))


def _dead_letter_to(target: str) -> dict[str, Any]:
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": target, **_AT_LEAST_ONCE}
