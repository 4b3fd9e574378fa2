"""Dead-letter queue tooling: list, show, replay and purge, over any transport.

Reading a DLQ takes messages without acking them and gives back everything it does not
remove when it is done, so listing is safe to interrupt. A replayed entry is removed only
after its republish was confirmed: a replay killed half-way may leave an entry that was
already republished (a duplicate, caught by idempotency keys), never a lost job.

A dead-lettered job keeps its claim-check object (a replay needs it); purging an entry
deletes that object too, after the entry itself is gone (best effort: the sweep catches a
failed delete).

An entry is a worker's record, of any size (it embeds its original, and an ``oversize``
original is over the job limit by definition), or a job message the broker dead-lettered (its
delivery limit). A worker's record this version cannot read (written by a newer version, say)
keeps the reason the worker put on it (``x-conveyor-reason``), never passes for the broker's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from conveyor.common.clock import Clock, SystemClock
from conveyor.common.codec import DEFAULT_MAX_MESSAGE_BYTES, decode_dead_letter, decode_envelope, encode_model
from conveyor.common.errors import (
    ConfigurationError,
    MessageTooLarge,
    PublishOutcomeUnknown,
    QueueNotFound,
    RejectedMessage,
)
from conveyor.common.headers import (
    CONFIG_HASH,
    JOB_TYPE,
    REASON,
    REPLAYED_FROM,
    WORKER_VERSION,
    carried_over,
    check_content_labels,
)
from conveyor.common.messages import job_message
from conveyor.common.transport.base import Delivery, Transport
from conveyor.consumer.payloads import PayloadResolver
from conveyor.schemas.dead_letter import DeadLetterRecord
from conveyor.schemas.envelope import MAX_HISTORY, Envelope, InlinePayload, PayloadReference

__all__ = ["DeadLetterFilter", "DeadLetters", "ReplayReport", "check_replay_rate", "group_counts",
           "require_dead_letter_queue"]

MIN_REPLAY_RATE = 1 / 3600  # entries per second: one an hour; slower is a replay nobody waits for


async def require_dead_letter_queue(transport: Transport, queue: str) -> None:
    """The commands on a DLQ create nothing: a mistyped ``--queue`` is one line naming it, not a
    new queue with its delay tiers and an empty table that says all is well."""
    dlq = transport.dead_letter_queue(queue)
    try:
        await transport.depth(dlq)
    except QueueNotFound:
        raise QueueNotFound(f"no dead-letter queue {dlq!r} for {queue!r} on this broker (a mistyped --queue? "
                            "a worker declares both when it starts)") from None


@dataclass(frozen=True)
class DeadLetterFilter:
    """Entries to act on; ``dead_letter_id`` matches an entry's dead-letter id or its job id,
    and so does each of ``dead_letter_ids`` (a selection). ``worker`` is a part of the worker id
    (a worker's id names its host and process; deploys that put their version in it filter by
    that). ``since``/``until`` bound the time the entry was dead-lettered."""

    reason: str | None = None
    job_type: str | None = None
    dead_letter_id: str | None = None
    error_type: str | None = None
    worker: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    dead_letter_ids: frozenset[str] | None = None
    worker_version: str | None = None  # the code version of the worker that wrote it (a header)

    def matches(self, record: DeadLetterRecord, headers: Mapping[str, str] | None = None) -> bool:
        ids = (record.dead_letter_id, record.job_id)
        return (
            (self.reason is None or record.reason == self.reason)
            and (self.job_type is None or record.job_type == self.job_type)
            and (self.dead_letter_id is None or self.dead_letter_id in ids)
            and (self.error_type is None or record.error_type == self.error_type)
            and (self.worker is None or self.worker in record.worker_id)
            and (self.since is None or record.dead_lettered_at >= self.since)
            and (self.until is None or record.dead_lettered_at <= self.until)
            and (self.dead_letter_ids is None or not self.dead_letter_ids.isdisjoint(ids))
            and (self.worker_version is None or (headers or {}).get(WORKER_VERSION) == self.worker_version)
        )


def check_replay_rate(rate: float) -> None:
    """Entries per second, at least ``MIN_REPLAY_RATE``: NaN slept for ever between two entries
    (the console's queue stayed "busy"), a negative rate or zero meant no rate at all, silently,
    and 1e-300 slept for ever too."""
    if not (math.isfinite(rate) and rate >= MIN_REPLAY_RATE):
        raise ConfigurationError(
            f"a replay rate must be a number of entries per second of at least {MIN_REPLAY_RATE:.6f} "
            f"(one an hour), not {rate!r}"
        )


def _check_limit(limit: int) -> None:
    # A negative limit stopped after the first match: `--limit -5` replayed one entry.
    if limit < 0:
        raise ConfigurationError(f"a limit must be 0 or more entries, not {limit}")


def group_counts(records: Iterable[DeadLetterRecord], by: str) -> list[tuple[str, int]]:
    """Entries counted by ``reason``, ``error_type`` or ``job_type``, the most frequent first."""
    if by not in ("reason", "error_type", "job_type"):
        raise ValueError(f"cannot group dead letters by {by!r}")
    counts = collections.Counter(getattr(record, by) or "—" for record in records)
    return counts.most_common()


@dataclass
class ReplayReport:
    matched: int = 0
    replayed: int = 0
    skipped_unreplayable: int = 0
    skipped_replayed: int = 0  # entries of jobs this run already republished, left in place
    dry_run: bool = False
    by_reason: collections.Counter[str] = field(default_factory=collections.Counter)


def record_from_delivery(delivery: Delivery, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> DeadLetterRecord:
    """A worker-written record, or a raw message the broker's delivery limit dead-lettered.

    ``max_message_bytes`` is the job limit, for a raw message; a record has none (see above).
    """
    try:
        return decode_dead_letter(delivery.body)
    except RejectedMessage as exc:
        unreadable = exc
    job_id = job_type = None
    with contextlib.suppress(RejectedMessage):
        envelope = decode_envelope(delivery.body, max_bytes=max_message_bytes)
        job_id, job_type = envelope.job_id, envelope.job_type
    queue = delivery.queue.removesuffix(".dlq").removesuffix("-DLQ")
    if job_id is None and delivery.headers.get(REASON):  # not a job: a record this version cannot read
        with contextlib.suppress(ValueError):  # a reason that is no reason code: the broker's, then
            return _unreadable_record(delivery, queue, unreadable)
    return DeadLetterRecord(
        dead_letter_id=delivery.message_id or "unknown",
        queue=queue,
        reason="delivery_limit",
        error_message="the broker dead-lettered this message after too many deliveries (crash loop backstop)",
        dead_lettered_at=datetime.now(UTC),
        worker_id="broker",
        job_id=job_id,
        job_type=job_type,
        original_headers={k: str(v) for k, v in delivery.headers.items()},
        original_body_b64=DeadLetterRecord.encode_body(delivery.body),
    )


def _unreadable_record(delivery: Delivery, queue: str, why: RejectedMessage) -> DeadLetterRecord:
    """What the headers of a worker's record tell; its own bytes stand in for the original."""
    return DeadLetterRecord(
        dead_letter_id=delivery.message_id or "unknown",
        queue=queue,
        reason=delivery.headers[REASON],
        error_message=f"a worker's dead-letter record this version cannot read ({str(why)[:500]}); "
        "its bytes are kept as the original",
        dead_lettered_at=datetime.now(UTC),
        worker_id="unknown",
        job_type=delivery.headers.get(JOB_TYPE) or None,
        original_headers=dict(delivery.headers),
        original_body_b64=DeadLetterRecord.encode_body(delivery.body),
    )


class DeadLetters:
    def __init__(
        self,
        transport: Transport,
        queue: str,
        *,
        clock: Clock | None = None,
        payloads: PayloadResolver | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        confirm_timeout: float = 10.0,
    ) -> None:
        """``max_message_bytes``: the workers' job limit (``CONVEYOR_MAX_MESSAGE_BYTES``), which a
        replayed original must meet; records themselves are read whatever their size.
        ``confirm_timeout``: seconds a republish may wait for the broker's confirm (the
        producer's default) before the replay stops with ``PublishOutcomeUnknown``."""
        self._max_bytes = max_message_bytes
        self._confirm_timeout = confirm_timeout
        self._transport = transport
        self.queue = queue
        self.dlq = transport.dead_letter_queue(queue)
        self._clock = clock or SystemClock()
        self._payloads = payloads
        self.payloads_deleted = 0  # claim-check objects removed by purge
        # What listed entries' headers say of the worker that wrote them, by dead-letter id.
        self.run_info: dict[str, dict[str, str | None]] = {}
        self._present: set[str] = set()  # queues replayed into, checked once

    async def depth(self) -> int:
        return await self._transport.depth(self.dlq)

    async def list(self, flt: DeadLetterFilter | None = None, *, limit: int = 100) -> list[DeadLetterRecord]:
        flt = flt or DeadLetterFilter()
        found: list[DeadLetterRecord] = []
        _check_limit(limit)
        if limit == 0:
            return found
        async with self._scan() as entries:
            async for delivery, record in entries:
                if flt.matches(record, delivery.headers):
                    found.append(record)
                    self.run_info[record.dead_letter_id] = {
                        "worker_version": delivery.headers.get(WORKER_VERSION),
                        "config_hash": delivery.headers.get(CONFIG_HASH),
                    }
                    if len(found) >= limit:
                        break
        return found

    async def show(self, entry_id: str) -> DeadLetterRecord | None:
        records = await self.list(DeadLetterFilter(dead_letter_id=entry_id), limit=1)
        return records[0] if records else None

    async def replay(
        self,
        flt: DeadLetterFilter | None = None,
        *,
        limit: int | None = None,
        rate: float | None = None,
        dry_run: bool = False,
        progress: Callable[[ReplayReport], None] | None = None,
    ) -> ReplayReport:
        """Republish matching entries with a fresh attempt budget, then remove each one.

        A snapshot: only the entries present when the replay starts. While a bug is still live,
        a replayed job fails again and lands back in this DLQ as the replay reads it; replaying
        it again would never end. The DLQ is first in, first out, and what the scan takes stays
        held until the end, so the entries present at the start are the first ``depth()`` it
        takes: it stops there. An entry of a job this run already republished is left in place
        as well (a broker whose depth or order is not exact; or a duplicate dead letter of the
        same job, which would run the job twice).
        """
        flt = flt or DeadLetterFilter()
        report = ReplayReport(dry_run=dry_run)
        if limit is not None:
            _check_limit(limit)
        if rate is not None:
            check_replay_rate(rate)
        interval = 1.0 / rate if rate else 0.0
        present = await self.depth()
        if present == 0 or limit == 0:
            return report
        republished: set[str] = set()  # job ids
        taken = 0
        async with self._scan() as entries:
            async for delivery, record in entries:
                taken += 1
                if record.job_id is not None and record.job_id in republished:
                    report.skipped_replayed += 1
                elif flt.matches(record, delivery.headers):
                    report.matched += 1
                    report.by_reason[record.reason] += 1
                    if not dry_run:
                        if await self._replay_one(delivery, record, report) and record.job_id is not None:
                            republished.add(record.job_id)
                        if interval:
                            await self._clock.sleep(interval)
                    if progress:
                        progress(report)
                if taken >= present or (limit is not None and report.matched >= limit):
                    break
        return report

    async def _replay_one(self, delivery: Delivery, record: DeadLetterRecord, report: ReplayReport) -> bool:
        if await self._republish(record):
            await delivery.ack()
            report.replayed += 1
            return True
        report.skipped_unreplayable += 1
        return False

    async def replay_edited(self, entry_id: str, data: dict[str, Any]) -> DeadLetterRecord | None:
        """Republish one entry with ``data`` as its (inline) payload, then remove the entry.

        The caller validates ``data`` against the job type's schema first; this only refuses
        what could never run (an original that never decoded, a body over the job limit).
        Same job id and history, a fresh attempt budget, like ``replay``. A claim-check object
        the original pointed at is discarded afterwards (the edited payload replaces it).
        None: no such entry (nothing changed).
        """
        async with self._scan() as entries:
            async for delivery, record in entries:
                if not DeadLetterFilter(dead_letter_id=entry_id).matches(record):
                    continue
                envelope = self.original_envelope(record)
                edited = envelope.model_copy(update={"payload": InlinePayload(data=data)})
                # The job as a producer would send it: its history is not counted (codec.decode_envelope).
                if len(encode_model(edited.model_copy(update={"history": (), "attempt": 1}))) > self._max_bytes:
                    raise MessageTooLarge(f"the edited job is over the job limit of {self._max_bytes} bytes")
                await self._publish_copy(record, edited)
                await delivery.ack()
                if isinstance(envelope.payload, PayloadReference):
                    await self._discard_payload(record)
                return record
        return None

    def original_envelope(self, record: DeadLetterRecord) -> Envelope:
        """The job a record keeps; a ``RejectedMessage`` (its reason code) when it never decoded."""
        check_content_labels(record.original_headers)
        return decode_envelope(record.original_body, max_bytes=self._max_bytes)

    async def purge(self, flt: DeadLetterFilter | None = None) -> int:
        """Delete matching entries among those present when it starts (a snapshot, as ``replay``):
        a DLQ fed while it runs (a bug still live) would otherwise never let it end, and entries
        written after the operator looked would go unseen."""
        flt = flt or DeadLetterFilter()
        removed = taken = 0
        present = await self.depth()
        if present == 0:
            return 0
        async with self._scan() as entries:
            async for delivery, record in entries:
                taken += 1
                if flt.matches(record, delivery.headers):
                    await delivery.ack()
                    removed += 1
                    await self._discard_payload(record)
                if taken >= present:
                    break
        return removed

    async def _discard_payload(self, record: DeadLetterRecord) -> None:
        if self._payloads is None:
            return
        try:
            envelope = decode_envelope(record.original_body, max_bytes=self._max_bytes)
        except RejectedMessage:
            return  # never decoded: it has no claim check we could trust
        if isinstance(envelope.payload, PayloadReference) and await self._payloads.discard(envelope.payload):
            self.payloads_deleted += 1

    async def _republish(self, record: DeadLetterRecord) -> bool:
        try:
            check_content_labels(record.original_headers)  # labelled for another reader: never run
            envelope = decode_envelope(record.original_body, max_bytes=self._max_bytes)
        except RejectedMessage:
            return False  # bytes that never decoded cannot run; keep them for inspection
        await self._publish_copy(record, envelope)
        return True

    async def _publish_copy(self, record: DeadLetterRecord, envelope: Envelope) -> None:
        """Republish ``envelope`` as a replay of ``record``."""
        # Same job id, the full history including the attempt that dead-lettered it, and a
        # fresh attempt budget.
        history = (record.history or envelope.history)[-MAX_HISTORY:]
        fresh = envelope.model_copy(update={"attempt": 1, "history": history})
        message = job_message(
            fresh, encode_model(fresh), due_at=self._clock.now(),
            carried=carried_over(record.original_headers),  # trace context: the replay joins the job's trace
            extra={REPLAYED_FROM: record.dead_letter_id},
        )
        if record.queue not in self._present:  # once per queue: a check costs round trips
            await self._require_queue(record)
            self._present.add(record.queue)
        try:
            # A broker that went silent (a black hole, not a closed socket) would otherwise hold
            # the replay until the connection's heartbeat gives up: minutes, with no word.
            async with asyncio.timeout(self._confirm_timeout):
                await self._transport.publish(record.queue, message)
        except TimeoutError:
            raise PublishOutcomeUnknown(
                f"no confirm within {self._confirm_timeout:g}s for the replay of job {record.job_id} "
                f"(dead letter {record.dead_letter_id}): it may or may not be republished; its entry stays"
            ) from None

    async def _require_queue(self, record: DeadLetterRecord) -> None:
        """The queue a replay goes to must be there: declaring it (as this did) made a queue no
        worker consumes and reported the job replayed while it sat there (a work queue deleted
        and its DLQ kept, a record naming another queue). Its entry stays; the replay stops."""
        try:
            await self._transport.depth(record.queue)
        except QueueNotFound:
            raise QueueNotFound(
                f"no queue {record.queue!r} on this broker for the replay of job {record.job_id} (dead letter "
                f"{record.dead_letter_id}): its entry stays; start its worker (which declares it), then replay"
            ) from None

    @contextlib.asynccontextmanager
    async def _scan(self) -> AsyncIterator[AsyncIterator[tuple[Delivery, DeadLetterRecord]]]:
        """Take messages one by one; whatever was not settled is given back at the end, and the
        transport is told the scan is over (``end_browse``: Pulsar closes its reader).

        Then it waits (briefly) until the broker counts what it gave back: RabbitMQ 4.0.5
        answered a depth query right after a browse with fewer entries than the DLQ held (21
        times in 30), and ``replay`` bounds its snapshot by that depth, so a replay right after a
        browse (the console does one per page) replayed too few.
        """
        held: list[Delivery] = []
        before = await self.depth()

        async def entries() -> AsyncIterator[tuple[Delivery, DeadLetterRecord]]:
            while True:
                delivery = await self._transport.get(self.dlq)
                if delivery is None:
                    return
                held.append(delivery)
                yield delivery, record_from_delivery(delivery, max_message_bytes=self._max_bytes)

        try:
            yield entries()
        finally:
            released = 0
            for delivery in reversed(held):  # last first, so the queue keeps its order
                if not delivery.settled:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(delivery.release())
                        released += 1
            with contextlib.suppress(Exception):
                await asyncio.shield(self._transport.end_browse(self.dlq))
            if released:
                removed = sum(1 for delivery in held if delivery.settled) - released
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._counted(before - removed))

    async def _counted(self, expected: int, timeout: float = 2.0) -> None:
        """Until the DLQ's depth is at least ``expected`` (new entries only add), at most ``timeout``."""
        # A poll: the broker tells no one when it has counted a requeued message.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if await self.depth() >= expected or loop.time() >= deadline:
                return
            await asyncio.sleep(0.02)
