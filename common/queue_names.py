"""The queue names every broker takes as they are.

RabbitMQ's AMQP names and Pulsar's topic names share letters, digits and ``_ . : -``; RabbitMQ
bounds the length (a queue lends its name to its ``<queue>.retry`` exchange, at most 127 bytes).
``amq.`` starts the names RabbitMQ reserves, and ``.dlq`` / ``-DLQ`` end the dead-letter queues
of RabbitMQ (and the in-memory broker) and Pulsar. A job registered with a name outside this
rule is refused when it is registered, and the in-memory broker refuses one when it is declared,
so what runs in a unit test runs on either real broker instead of failing at its first publish
in production.
"""

from __future__ import annotations

import re

from conveyor.common.errors import ConfigurationError

__all__ = ["MAX_QUEUE_NAME", "check_portable_queue_name"]

MAX_QUEUE_NAME = 127 - len(".retry")
_PORTABLE = re.compile(r"[A-Za-z0-9_.:-]+")
_DEAD_LETTER_SUFFIXES = (".dlq", "-DLQ")


def check_portable_queue_name(queue: object, *, what: str = "queue") -> str:
    """``queue`` if every broker takes it as a work queue's name; else a one-line ConfigurationError."""
    if not (type(queue) is str and _PORTABLE.fullmatch(queue) and len(queue) <= MAX_QUEUE_NAME):
        shown = queue[:80] if isinstance(queue, str) else queue
        raise ConfigurationError(
            f"{what} {shown!r}: use 1 to {MAX_QUEUE_NAME} of letters, digits and _ . : - (the names every broker takes)"
        )
    if queue.startswith("amq."):
        raise ConfigurationError(f"{what} {queue!r}: names starting with 'amq.' are reserved by RabbitMQ")
    if queue.endswith(_DEAD_LETTER_SUFFIXES):
        raise ConfigurationError(f"{what} {queue!r}: names ending in '.dlq' or '-DLQ' are dead-letter queues")
    return queue
