"""The relay: publish committed outbox rows with confirms, then mark them sent.

One batch is one database transaction::

    SELECT … WHERE unsent ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED   -- rows no other relay holds
    publish each row (confirmed by the broker, under the row's job id)
    UPDATE … SET sent_at = now() WHERE id = ANY(confirmed)              -- then COMMIT

Several relays run side by side: a row locked by one is skipped by the others, so no row is
published by two relays *at once*. A relay killed between a confirm and its commit leaves the
row unsent; the next batch publishes it again under the same job id, which the consumers'
idempotency store turns into one effect (at-least-once publishing, once in effect).

Ordering per key: rows with an ``ordering_key`` are taken only by the relay that holds the
key's advisory lock for the batch (``pg_try_advisory_xact_lock``), and published one after the
other in id order; after a failure the key's later rows wait for the next batch. Rows without
a key are published concurrently. The order is the rows' id order: insert a key's rows while
holding a lock on what the key names (the aggregate's row) and id order is commit order.

Refusals that will not change (an unroutable queue, an oversized or malformed envelope) mark
the row failed (``failed_at``, ``last_error``): kept, counted in ``conveyor_outbox_failed_rows``,
never retried. Anything else (the broker is away, the confirm was lost) counts an attempt and
the relay backs off, then reconnects and tries again; a broker outage longer than any backoff
just grows the backlog. A nack (a queue at its length limit, a backlog quota: backpressure the
outbox is there to absorb) is retried the same way until the row is ``nack_patience`` (1 h)
old, and only then marked failed for an operator.

The relay sleeps on LISTEN (the insert trigger's NOTIFY arrives at commit) with a fallback poll
every ``poll_interval``; sent rows older than ``retention`` are deleted in small batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from conveyor.common import bounds
from conveyor.common.backoff import compute_backoff
from conveyor.common.codec import decode_envelope
from conveyor.common.errors import (
    ConfigurationError,
    MalformedMessage,
    PublishNacked,
    PublishNotConfirmed,
    RejectedMessage,
)
from conveyor.common.extras import require
from conveyor.producer.outbox.metrics import OutboxMetrics
from conveyor.producer.outbox.schema import DEFAULT_TABLE, check_schema, table_name
from conveyor.producer.producer import Producer
from conveyor.schemas.envelope import Envelope

__all__ = ["OutboxRelay", "RelayConfig"]

log = logging.getLogger(__name__)
# Shown in pg_stat_activity: an operator (or a test) can tell a relay's sessions from the application's.
_NAMED = {"application_name": "conveyor-outbox-relay"}


@dataclass(frozen=True)
class RelayConfig:
    table: str = DEFAULT_TABLE
    batch_size: int = 200
    poll_interval: float = 5.0  # the fallback when a NOTIFY is missed (a listener reconnecting)
    retention: timedelta = timedelta(days=1)
    cleanup_interval: float = 60.0
    metrics_interval: float = 10.0
    backoff_cap: float = 10.0
    shutdown_grace: float = 10.0  # how long a stop waits for the batch in progress
    nack_patience: timedelta = timedelta(hours=1)  # a nacked row is retried until this old

    def __post_init__(self) -> None:
        table_name(self.table)
        bounds.count("batch_size", self.batch_size)
        # NaN passed "min(...) <= 0": a relay that spins, or sleeps for ever.
        for name in ("poll_interval", "cleanup_interval", "metrics_interval", "backoff_cap"):
            bounds.seconds(name, getattr(self, name))
        bounds.seconds("shutdown_grace", self.shutdown_grace, zero_ok=True)
        if self.retention < timedelta(0) or self.nack_patience < timedelta(0):
            raise ConfigurationError("retention and nack_patience must not be negative")


@dataclass
class _Batch:
    sent: list[int]
    failed: list[tuple[int, str]]
    retry: list[tuple[int, str]]


def _decoded(row: Any) -> Envelope:
    """The row's envelope, read as strictly as a worker reads a message (``decode_envelope``);
    a row that does not decode (written by hand, or by a broken writer) is a refusal for good,
    never a retry that would back the relay off on every batch. Read leniently, NaN went out
    as ``null`` and the last of duplicate keys won: a job other than the one in the row."""
    try:
        body = row["envelope"].encode()
        return decode_envelope(body, max_bytes=len(body))  # its size was judged at add
    except RejectedMessage as exc:
        raise MalformedMessage(f"the row's envelope does not decode: {exc}") from None
    except ValueError as exc:  # not UTF-8 text
        raise MalformedMessage(f"the row's envelope does not decode ({type(exc).__name__})") from None


def _permanent(exc: BaseException) -> bool:
    return isinstance(exc, PublishNotConfirmed | RejectedMessage | ConfigurationError)


class OutboxRelay:
    """``await relay.run(stop)`` until ``stop`` is set; ``relay_once()`` for one batch."""

    def __init__(
        self,
        database_url: str,
        producer_factory: Callable[[], Producer],
        *,
        config: RelayConfig | None = None,
        metrics: OutboxMetrics | None = None,
    ) -> None:
        require("postgres", "the outbox relay")
        self.config = config or RelayConfig()
        self.metrics = metrics or OutboxMetrics()
        self._url = database_url
        self._factory = producer_factory
        self._producer: Producer | None = None
        self._db: Any = None
        self._listener: Any = None
        self._wake = asyncio.Event()
        self._failures = 0
        self._rng = random.Random()
        t = self.config.table
        self._select = (
            f"SELECT id, job_id, queue, envelope, ordering_key, created_at,"
            f" greatest(0, delay_seconds - extract(epoch FROM clock_timestamp() - created_at))::float8 AS remaining"
            f" FROM {t} WHERE sent_at IS NULL AND failed_at IS NULL"
            f" AND (ordering_key IS NULL OR pg_try_advisory_xact_lock(hashtext('{t}'), hashtext(ordering_key)))"
            f" ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        )
        self._mark_sent = f"UPDATE {t} SET sent_at = clock_timestamp(), attempts = attempts + 1 WHERE id = ANY($1)"
        self._mark_failed = (
            f"UPDATE {t} SET failed_at = clock_timestamp(), attempts = attempts + 1, last_error = $2 WHERE id = $1"
        )
        self._mark_retry = f"UPDATE {t} SET attempts = attempts + 1, last_error = $2 WHERE id = $1"
        self._cleanup = (
            f"DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE sent_at < clock_timestamp() - $1::interval"
            f" LIMIT 1000)"
        )
        self._sample = (
            f"SELECT count(*) FILTER (WHERE failed_at IS NULL) AS backlog,"
            f" coalesce(extract(epoch FROM clock_timestamp() - min(created_at) FILTER (WHERE failed_at IS NULL)), 0)"
            f"::float8 AS oldest, count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed"
            f" FROM {t} WHERE sent_at IS NULL"
        )

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, check the schema (one-line ``ConfigurationError`` naming what is missing), LISTEN."""
        import asyncpg

        self._db = await asyncpg.connect(self._url, server_settings=_NAMED)
        await check_schema(self._db, self.config.table)
        await self._ensure_database()

    async def close(self) -> None:
        await self._close_database()
        await self._drop_producer()

    async def __aenter__(self) -> OutboxRelay:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def failures(self) -> int:
        """Failed steps in a row (0: the last batch went through)."""
        return self._failures

    def _notified(self, *_: object) -> None:
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set. The batch in progress may finish within ``shutdown_grace``;
        after that it is cancelled: its transaction rolls back, and its rows, perhaps already
        published, are published again by the next relay under the same job ids."""
        chores = [
            asyncio.create_task(self._every(self.config.cleanup_interval, self.clean_up, stop)),
            asyncio.create_task(self._every(self.config.metrics_interval, self.sample, stop)),
        ]
        try:
            while not stop.is_set():
                published = await self._batch_until(stop)
                if published is not None and published >= self.config.batch_size:
                    continue  # a full batch: more are waiting
                delay = self.config.poll_interval if self._failures == 0 else self._backoff()
                await self._sleep(delay, stop)
        finally:
            for task in chores:
                task.cancel()
            await asyncio.gather(*chores, return_exceptions=True)

    async def _batch_until(self, stop: asyncio.Event) -> int | None:
        batch = asyncio.create_task(self._guarded(self.relay_once))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([batch, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not batch.done():
                await asyncio.wait([batch], timeout=self.config.shutdown_grace)
            if not batch.done():
                log.warning("outbox relay: the batch in progress did not finish within %gs of the stop; "
                            "its rows stay unsent", self.config.shutdown_grace)
                batch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await batch
                await self._close_database()
                return None
            return batch.result()
        finally:
            stopping.cancel()

    async def _sleep(self, seconds: float, stop: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(stop.wait())]
        if self._failures == 0:  # while failing, a NOTIFY must not cut the backoff short
            waiters.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._wake.clear()

    def _backoff(self) -> float:
        return compute_backoff(self._failures, base=0.2, factor=2.0, cap=self.config.backoff_cap, jitter=0.5,
                               rng=self._rng)

    async def _guarded(self, step: Callable[[], Awaitable[int]]) -> int | None:
        """Run ``step``; a database or broker failure is logged and counted, and the next step
        starts from fresh connections (the relay never stops on an outage)."""
        try:
            done = await step()
        except Exception as exc:
            self._failures += 1
            log.warning("outbox relay: %s: %s (attempt %d; retrying)", type(exc).__name__, exc, self._failures)
            await self._close_database()  # the next step starts from fresh connections
            return None
        return done

    async def _every(self, seconds: float, chore: Callable[[], Awaitable[int]], stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await chore()
            except Exception as exc:  # on its own connection: the next round tries again, but say so
                log.warning("outbox relay: %s failed: %s: %s (again in %gs)", getattr(chore, "__name__", "chore"),
                            type(exc).__name__, exc, seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)

    # -- one batch -----------------------------------------------------------------------
    async def relay_once(self) -> int:
        """Publish one batch; the number of rows published and marked sent."""
        await self._ensure_database()
        producer = await self._producer_ready()
        async with self._db.transaction():
            rows = await self._db.fetch(self._select, self.config.batch_size)
            if not rows:
                self._failures = 0
                return 0
            batch = _Batch([], [], [])
            groups: dict[object, list[Any]] = {}
            for row in rows:
                groups.setdefault(row["ordering_key"] or ("row", row["id"]), []).append(row)
            await asyncio.gather(*(self._publish_group(producer, group, batch) for group in groups.values()))
            if batch.sent:
                await self._db.execute(self._mark_sent, batch.sent)
            for row_id, error in batch.failed:
                await self._db.execute(self._mark_failed, row_id, error)
            for row_id, error in batch.retry:
                await self._db.execute(self._mark_retry, row_id, error)
        self.metrics.published.inc(len(batch.sent))
        if batch.retry:
            self._failures += 1
            await self._drop_producer()  # the next batch reconnects: the broker may be back elsewhere
        else:
            self._failures = 0
        return len(batch.sent)

    async def _publish_group(self, producer: Producer, rows: list[Any], batch: _Batch) -> None:
        """Rows of one ordering key in id order (one row, for rows without a key)."""
        for row in rows:
            try:
                envelope = _decoded(row)
                await producer.publish_envelope(envelope, queue=row["queue"], delay=row["remaining"])
            except Exception as exc:
                self.metrics.errors.labels(type(exc).__name__).inc()
                error = f"{type(exc).__name__}: {exc}"[:1000]
                if _permanent(exc) and not self._still_patient(exc, row):
                    log.error("outbox row %s (job %s) refused for good: %s", row["id"], row["job_id"], error)
                    batch.failed.append((row["id"], error))
                    continue  # a refused row does not hold back its key: it will never be sent
                batch.retry.append((row["id"], error))
                return  # the key's later rows wait: never overtake an unsent one
            batch.sent.append(row["id"])
            self._observe_latency(row)

    def _still_patient(self, exc: Exception, row: Any) -> bool:
        """A nack is backpressure: retried like an outage while the row is young enough."""
        return isinstance(exc, PublishNacked) and datetime.now(UTC) - row["created_at"] < self.config.nack_patience

    def _observe_latency(self, row: Any) -> None:
        # created_at is the database's clock at insert; the relay host's clock is close enough
        # for a histogram (asking the database would cost a query per row).
        self.metrics.commit_to_publish.observe(max(0.0, (datetime.now(UTC) - row["created_at"]).total_seconds()))

    async def _producer_ready(self) -> Producer:
        if self._producer is None:
            producer = self._factory()
            await producer.__aenter__()
            self._producer = producer
        return self._producer

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.__aexit__(None, None, None)

    async def _close_database(self) -> None:
        for attr in ("_db", "_listener"):
            connection = getattr(self, attr)
            setattr(self, attr, None)
            if connection is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), 5)

    async def _ensure_database(self) -> None:
        """Connect what is missing or closed (a failure raises: the caller counts and backs off).
        The listener is best effort: without it the relay still polls."""
        import asyncpg

        if self._db is None or self._db.is_closed():
            self._db = await asyncpg.connect(self._url, server_settings=_NAMED)
        if self._listener is None or self._listener.is_closed():
            try:
                self._listener = await asyncpg.connect(self._url, server_settings=_NAMED)
                await self._listener.add_listener(self.config.table, self._notified)
            except Exception as exc:
                self._listener = None
                log.warning("outbox relay: LISTEN failed (%s); polling every %gs", type(exc).__name__,
                            self.config.poll_interval)

    # -- chores --------------------------------------------------------------------------
    async def clean_up(self) -> int:
        """Delete sent rows older than the retention period; how many."""
        import asyncpg

        deleted = 0
        connection = await asyncpg.connect(self._url, server_settings=_NAMED)
        try:
            while True:
                status = await connection.execute(self._cleanup, self.config.retention)
                count = int(status.split()[-1])
                deleted += count
                if count < 1000:
                    return deleted
        finally:
            await connection.close()

    async def sample(self) -> int:
        """Refresh the backlog, oldest-unsent and failed-rows gauges; the backlog."""
        import asyncpg

        connection = await asyncpg.connect(self._url, server_settings=_NAMED)
        try:
            row = await connection.fetchrow(self._sample)
        finally:
            await connection.close()
        self.metrics.sampled(row["backlog"], row["oldest"], row["failed"])
        return int(row["backlog"])
