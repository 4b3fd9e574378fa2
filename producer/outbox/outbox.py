"""``outbox.add(connection, job_type, payload)``: a job written in the application's own transaction.

The job becomes a row of the outbox table in the same transaction as the application's rows:
committed together, or rolled back together. A relay (``conveyor outbox relay``) publishes
committed rows later, with confirms, under the job id assigned here, so a row published twice
(a relay killed between the confirm and its commit) is one job to a consumer with the
idempotency store.

The envelope is built and validated by the producer's own code (``Producer.build_envelope``):
an invalid payload, an unknown job type or a bad delay raises here, inside the transaction,
never later in the relay.

Connections: ``add`` takes a psycopg 3 connection or cursor, Django's ``connection`` (any
DB-API connection with ``%s`` parameters), or a SQLAlchemy ``Session``/``Connection``;
``add_async`` takes an asyncpg connection, a psycopg 3 ``AsyncConnection`` or async cursor, or a
SQLAlchemy ``AsyncSession``/``AsyncConnection``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Unpack

from pydantic import BaseModel

from conveyor.common.backoff import check_delay
from conveyor.common.clock import Clock
from conveyor.common.codec import DEFAULT_MAX_MESSAGE_BYTES, encode_model
from conveyor.common.errors import ConfigurationError, MessageTooLarge
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.queue_names import check_portable_queue_name
from conveyor.common.transport.memory import MemoryTransport
from conveyor.producer.options import EnvelopeOptions, OutboxOptions
from conveyor.producer.outbox.schema import DEFAULT_TABLE, table_name
from conveyor.producer.producer import Producer
from conveyor.schemas.registry import SchemaRegistry

__all__ = ["Outbox", "OutboxRow"]

_FIELDS = ("job_id", "job_type", "queue", "delay_seconds", "ordering_key", "envelope")


@dataclass(frozen=True)
class OutboxRow:
    """One row to insert: the job, its target queue, its delay and ordering key."""

    job_id: str
    job_type: str
    queue: str
    delay_seconds: float
    ordering_key: str | None
    envelope: str

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)


class Outbox:
    def __init__(
        self,
        *,
        jobs: JobRegistry | None = None,
        schemas: SchemaRegistry | None = None,
        routes: Mapping[str, str] | None = None,
        default_queue: str = DEFAULT_QUEUE,
        table: str = DEFAULT_TABLE,
        allow_unregistered: bool = False,
        clock: Clock | None = None,
        max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        """``max_message_bytes``: a larger job is refused at ``add`` (the relay could never send
        it); ``None`` when the relay offloads large payloads to a store (``--payload-store``)."""
        self.table = table_name(table)
        self._max_bytes = max_message_bytes
        if jobs is not None:
            schemas = jobs.schemas
            routes = {**{spec.job_type: spec.queue for spec in jobs.specs()}, **(routes or {})}
        self._routes = dict(routes or {})
        self._default_queue = default_queue
        # Only its envelope builder is used: the transport is never connected, nothing is sent.
        self._builder = Producer(MemoryTransport(), schemas=schemas, routes=self._routes, default_queue=default_queue,
                                 allow_unregistered=allow_unregistered, clock=clock)
        columns = ", ".join(_FIELDS)
        self._insert_dbapi = f"INSERT INTO {self.table} ({columns}) VALUES ({', '.join(['%s'] * len(_FIELDS))})"
        self._insert_asyncpg = (
            f"INSERT INTO {self.table} ({columns}) VALUES ({', '.join(f'${n}' for n in range(1, len(_FIELDS) + 1))})"
        )
        self._insert_named = f"INSERT INTO {self.table} ({columns}) VALUES ({', '.join(f':{f}' for f in _FIELDS)})"

    def row(
        self,
        job_type: str,
        payload: BaseModel | Mapping[str, Any],
        *,
        queue: str | None = None,
        delay: float = 0.0,
        ordering_key: str | None = None,
        **envelope_options: Unpack[EnvelopeOptions],
    ) -> OutboxRow:
        """The validated row for a job (nothing written): what ``add`` inserts. ``envelope_options``
        as ``Producer.build_envelope``'s (``idempotency_key``, ``headers``, ``deadline`` …)."""
        check_delay(delay)
        envelope = self._builder.build_envelope(job_type, payload, **envelope_options)
        encoded = encode_model(envelope)
        if self._max_bytes is not None and len(encoded) > self._max_bytes:
            raise MessageTooLarge(
                f"encoded job is {len(encoded)} bytes, limit is {self._max_bytes} (max_message_bytes=None "
                "if the relay offloads large payloads)"
            )
        # Checked here, in the application's transaction, as the job registry checks its queues:
        # a queue no broker takes (or a dead-letter queue's name) was written, and then refused
        # by the relay (a failed row for an operator) or, on RabbitMQ, sent into a DLQ.
        target = check_portable_queue_name(queue or self._routes.get(job_type, self._default_queue))
        return OutboxRow(
            job_id=envelope.job_id,
            job_type=job_type,
            queue=target,
            delay_seconds=max(0.0, delay),
            ordering_key=_checked_key(ordering_key),
            envelope=encoded.decode(),
        )

    def add(
        self, connection: Any, job_type: str, payload: BaseModel | Mapping[str, Any], **options: Unpack[OutboxOptions]
    ) -> str:
        """Insert the job in ``connection``'s current transaction; its job id. Options as ``row``."""
        row = self.row(job_type, payload, **options)
        if _is_sqlalchemy(connection):
            _check_transactional(connection)
            if _is_async(connection):
                raise ConfigurationError("an async SQLAlchemy session: use 'await outbox.add_async(...)'")
            from sqlalchemy import text

            connection.execute(text(self._insert_named), dict(zip(_FIELDS, row.values(), strict=True)))
        elif _awaits(connection):  # asyncpg, psycopg's async connection or cursor: execute is a coroutine
            raise ConfigurationError(f"an async {type(connection).__name__}: use 'await outbox.add_async(...)'")
        elif hasattr(connection, "cursor"):
            with connection.cursor() as cursor:
                cursor.execute(self._insert_dbapi, row.values())
        elif hasattr(connection, "execute"):  # a DB-API cursor
            connection.execute(self._insert_dbapi, row.values())
        else:
            raise ConfigurationError(f"cannot write the outbox through a {type(connection).__name__}")
        return row.job_id

    async def add_async(
        self, connection: Any, job_type: str, payload: BaseModel | Mapping[str, Any], **options: Unpack[OutboxOptions]
    ) -> str:
        """``add`` for asyncpg connections and SQLAlchemy ``AsyncSession``/``AsyncConnection``."""
        row = self.row(job_type, payload, **options)
        sqlalchemy = _is_sqlalchemy(connection)
        if sqlalchemy:
            _check_transactional(connection)
        if sqlalchemy and _is_async(connection):
            from sqlalchemy import text

            await connection.execute(text(self._insert_named), dict(zip(_FIELDS, row.values(), strict=True)))
        elif type(connection).__module__.startswith("asyncpg"):
            await connection.execute(self._insert_asyncpg, *row.values())
        elif _awaits(connection) and hasattr(connection, "cursor"):  # psycopg's AsyncConnection
            async with connection.cursor() as cursor:
                await cursor.execute(self._insert_dbapi, row.values())
        elif _awaits(connection):  # psycopg's async cursor
            await connection.execute(self._insert_dbapi, row.values())
        else:
            raise ConfigurationError(
                f"cannot write the outbox asynchronously through a {type(connection).__name__}: use 'outbox.add(...)'"
            )
        return row.job_id


def _checked_key(key: str | None) -> str | None:
    """An ordering key is non-empty text PostgreSQL can store. An empty one was a key to the
    relay's lock but no key to its grouping (its rows went out concurrently, out of order);
    NUL or a lone surrogate failed in the driver, with its own exception type."""
    if key is None:
        return None
    if not isinstance(key, str) or not key or "\x00" in key:
        raise ConfigurationError(f"ordering_key {key!r:.80}: must be non-empty text without NUL")
    try:
        key.encode()
    except UnicodeEncodeError:
        raise ConfigurationError(f"ordering_key {key!r:.80}: not UTF-8 text") from None
    return key


def _awaits(connection: Any) -> bool:
    return inspect.iscoroutinefunction(getattr(connection, "execute", None))


def _is_sqlalchemy(connection: Any) -> bool:
    return type(connection).__module__.startswith("sqlalchemy")


def _check_transactional(connection: Any) -> None:
    """A SQLAlchemy ``Engine`` (or ``AsyncEngine``) holds no transaction of the application's:
    the row could only commit on its own, outside the writes it belongs with. It failed with
    ``AttributeError: 'Engine' object has no attribute 'execute'``."""
    if not hasattr(connection, "execute"):
        raise ConfigurationError(
            f"cannot write the outbox through a SQLAlchemy {type(connection).__name__}: it is not in your "
            "transaction; pass the Session or Connection your rows are written with"
        )


def _is_async(connection: Any) -> bool:
    return type(connection).__module__.startswith("sqlalchemy.ext.asyncio")
