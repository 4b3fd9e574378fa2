"""Idempotency middleware: a job whose idempotency key already succeeded is not run again.

Before the handler, the job's key is looked up in a ``ProcessedKeyStore``:

- succeeded before with the same payload → the handler is skipped, the job counts as
  succeeded (and is acked); a duplicate publish or a redelivery becomes a no-op;
- succeeded before with a *different* payload → ``IdempotencyConflict`` (reason
  ``idempotency_conflict``): the message goes to the dead-letter queue for a human;
- unseen → the handler runs; after it returns, the success is recorded. The middleware
  returns only after that, so settlement acks only after the record (or the handler's own
  transaction, below) committed.

The key is ``<job_type>:<idempotency_key>`` (the same key may name different operations in
different job types); the payload hash is the sha256 of the canonical JSON (sorted keys) of
the *validated* payload, so an upcast v1 message and its v2 retry hash alike.

Handlers reach the helper as ``ctx.state["idempotency"]`` (a ``JobIdempotency``):

- ``async with idem.transaction() as tx:`` — one database transaction; the key is recorded
  in it *first*, then the handler writes its effects on ``tx.connection``; both commit or
  neither does. A crash after the commit but before the ack is harmless: the redelivery
  finds the key and skips. A concurrent duplicate waits on the key's row and then rolls
  back (``AlreadyProcessed``, handled here: the duplicate counts as succeeded).
- ``await idem.checkpoint(state)`` / ``idem.last_checkpoint`` — progress that survives a
  retry (retries keep the job id); cleared when the job succeeds. Inside ``transaction()``
  a checkpoint commits with the effects. Sync handlers use ``checkpoint_blocking``.

Without a transaction the guarantee is "once per success": a handler that crashes after
its effect but before the record runs again. Duplicates arriving at one worker at once are
serialised by an in-process lock per key; across workers, use ``transaction()``.

Opt a job out with ``@jobs.job(..., idempotent=False)``. A failure to *record* a success
after the handler ran is logged, not raised: the job did succeed, and retrying it would
certainly run it twice, where a missing record only might.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel

from conveyor.common.errors import ConfigurationError, ConveyorError
from conveyor.common.idempotency.base import (
    IdempotencyConflict,
    ProcessedKeyStore,
    StoreTransaction,
    decode_state,
    encode_state,
)
from conveyor.common.middleware import ConsumeNext, Middleware

if TYPE_CHECKING:
    from conveyor.common.jobs.context import JobContext
    from conveyor.common.jobs.registry import JobSpec
    from conveyor.schemas.envelope import Envelope

__all__ = [
    "IDEMPOTENCY_STATE",
    "AlreadyProcessed",
    "IdempotencyMiddleware",
    "JobIdempotency",
    "idempotency_key",
    "idempotency_of",
    "job_transaction",
    "last_checkpoint",
    "payload_hash",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

IDEMPOTENCY_STATE = "idempotency"  # the ``ctx.state`` key of the handler's ``JobIdempotency``


class AlreadyProcessed(ConveyorError):
    """The key was recorded by a concurrent duplicate first; this attempt's transaction rolled back."""


def payload_hash(payload: BaseModel) -> str:
    """sha256 (hex) of the canonical JSON of a validated payload: sorted keys, JSON types."""
    data = orjson.dumps(payload.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(data).hexdigest()


def idempotency_key(ctx: JobContext) -> str:
    """``<job_type>:<idempotency_key>``; job types hold no ``:``, so keys never collide."""
    return f"{ctx.job_type}:{ctx.envelope.idempotency_key}"


def idempotency_of(ctx: JobContext) -> JobIdempotency | None:
    """The job's helper, or ``None`` when no idempotency middleware handles this job."""
    helper = ctx.state.get(IDEMPOTENCY_STATE)
    return helper if isinstance(helper, JobIdempotency) else None


def _require(ctx: JobContext) -> JobIdempotency:
    helper = idempotency_of(ctx)
    if helper is None:
        raise ConfigurationError(
            f"{ctx.job_type}: checkpoints and idempotent transactions need the idempotency middleware "
            "(and a job without idempotent=False)"
        )
    return helper


def last_checkpoint(ctx: JobContext) -> dict[str, Any] | None:
    """What the job's previous attempt saved with ``save_checkpoint`` (``None``: start over)."""
    helper = idempotency_of(ctx)
    return None if helper is None else helper.last_checkpoint


async def save_checkpoint(ctx: JobContext, state: dict[str, Any]) -> None:
    """Save the job's progress for its next attempt (``JobIdempotency.checkpoint``)."""
    await _require(ctx).checkpoint(state)


def job_transaction(ctx: JobContext) -> contextlib.AbstractAsyncContextManager[StoreTransaction]:
    """``async with job_transaction(ctx) as tx:`` — effects and the success record, atomically."""
    return _require(ctx).transaction()


class JobIdempotency:
    """What one job's handler may do with the store: transact and checkpoint."""

    def __init__(
        self,
        store: ProcessedKeyStore,
        *,
        key: str,
        payload_hash: str,
        job_id: str,
        last_checkpoint: dict[str, Any] | None,
    ) -> None:
        self.store = store
        self.key = key
        self.payload_hash = payload_hash
        self.job_id = job_id
        self.last_checkpoint = last_checkpoint
        self.recorded = False  # the success is already committed (by ``transaction``)
        self.duplicate = False  # the handler was skipped: the key had succeeded before
        self._loop = asyncio.get_running_loop()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTransaction]:
        """One transaction for the handler's effects and the job's success record."""
        if self.recorded:
            raise RuntimeError("this job's success is already recorded; one transaction per job")
        async with self.store.transaction() as tx:
            # Record first: a concurrent duplicate blocks on this row, then finds it taken.
            if not await tx.record_success(self.key, self.payload_hash, self.job_id):
                raise AlreadyProcessed(f"idempotency key {self.key!r} was recorded by a concurrent duplicate")
            yield tx
        self.recorded = True
        self.last_checkpoint = None  # recording the success cleared it

    async def checkpoint(self, state: dict[str, Any]) -> None:
        """Save progress for the next attempt of this job (replaces the previous one)."""
        await self.store.save_checkpoint(self.job_id, state)
        self.last_checkpoint = decode_state(encode_state(state))  # a copy, as the next attempt sees it

    def checkpoint_blocking(self, state: dict[str, Any]) -> None:
        """``checkpoint`` for sync handlers (they run in a worker thread, not on the loop)."""
        asyncio.run_coroutine_threadsafe(self.checkpoint(state), self._loop).result()


class _KeyLocks:
    """One ``asyncio.Lock`` per key in use, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: collections.Counter[str] = collections.Counter()

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key]
                del self._locks[key]


class IdempotencyMiddleware(Middleware):
    """Skip jobs whose idempotency key already succeeded; record successes.

    ``close_store``: close the store at worker shutdown (it is opened at start-up).
    ``retention``: if set, delete records older than this at start-up and every
    ``sweep_interval`` seconds (keep it above the retry ``max_age``).
    """

    options = frozenset({"idempotent"})

    def __init__(
        self,
        store: ProcessedKeyStore,
        *,
        close_store: bool = True,
        retention: timedelta | None = None,
        sweep_interval: float = 3600.0,
    ) -> None:
        self.store = store
        self._close_store = close_store
        self._retention = retention
        self._sweep_interval = sweep_interval
        self._locks = _KeyLocks()
        self._sweeper: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        await self.store.open()
        if self._retention is not None and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(self._retention))

    async def shutdown(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.wait({sweeper}, timeout=5.0)
        if self._close_store:
            await self.store.close()

    async def succeeded_before(self, envelope: Envelope, spec: JobSpec) -> bool:
        """Same key *and* same job id recorded: a redelivery of a job that succeeded. (Another
        job reusing the key goes through ``consume``, where its payload hash is compared.)"""
        if spec.option("idempotent", True) is False:
            return False
        record = await self.store.get(f"{envelope.job_type}:{envelope.idempotency_key}")
        return record is not None and record.job_id == envelope.job_id

    async def consume(self, ctx: JobContext, call_next: ConsumeNext) -> Any:
        if ctx.spec.option("idempotent", True) is False:
            return await call_next(ctx)
        key = idempotency_key(ctx)
        digest = payload_hash(ctx.payload)
        async with self._locks.hold(key):
            previous = await self.store.check(key, digest)  # IdempotencyConflict → dead letter
            helper = JobIdempotency(self.store, key=key, payload_hash=digest, job_id=ctx.job_id, last_checkpoint=None)
            ctx.state[IDEMPOTENCY_STATE] = helper
            ctx.checkpoints = helper
            if previous is not None:
                return self._skip(helper, previous.job_id)
            helper.last_checkpoint = await self.store.load_checkpoint(ctx.job_id)
            try:
                result = await call_next(ctx)
            except AlreadyProcessed:
                return self._skip(helper, None)
            if not helper.recorded:
                await self._record(helper)
            return result

    @staticmethod
    def _skip(helper: JobIdempotency, first_job_id: str | None) -> None:
        helper.duplicate = True
        log.info(
            "duplicate job skipped: its idempotency key already succeeded",
            extra={"idempotency_key": helper.key, "first_job_id": first_job_id},
        )

    async def _record(self, helper: JobIdempotency) -> None:
        try:
            created = await self.store.record_success(helper.key, helper.payload_hash, helper.job_id)
        except IdempotencyConflict:
            log.error(
                "a job with the same idempotency key but another payload succeeded meanwhile; both ran",
                extra={"idempotency_key": helper.key},
            )
            return
        except Exception as exc:
            log.error(
                "job succeeded but its success could not be recorded; a duplicate would run again",
                extra={"idempotency_key": helper.key, "error_type": type(exc).__name__},
            )
            return
        helper.recorded = True
        if not created:
            log.warning(
                "a duplicate of this job ran at the same time elsewhere (use transaction() to prevent it)",
                extra={"idempotency_key": helper.key},
            )

    async def _sweep_loop(self, retention: timedelta) -> None:
        while True:
            try:
                removed = await self.store.expire(retention)
                if removed:
                    log.info("expired processed idempotency keys", extra={"removed": removed})
            except Exception as exc:  # retention must never take the worker down
                log.warning("idempotency key expiry failed", extra={"error_type": type(exc).__name__})
            await asyncio.sleep(self._sweep_interval)
