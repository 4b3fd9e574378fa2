"""The processed-key store contract: what made a redelivery a no-op, and job checkpoints.

At-least-once delivery means a handler can see a job twice (a redelivery after a crash, a
producer that published again after a lost confirm). The store remembers every idempotency
key that *succeeded*, with the sha256 of its payload and the job id that did it:

- ``get(key)`` — the ``Record`` or ``None``;
- ``check(key, payload_hash)`` — ``None`` if unseen, the record if it succeeded with the same
  payload, ``IdempotencyConflict`` (reason ``idempotency_conflict``) if the same key came
  with a *different* payload: a producer bug that must not pass silently;
- ``record_success(key, payload_hash, job_id)`` — ``True`` when this call recorded it,
  ``False`` when the same key and payload were already recorded (someone else won),
  ``IdempotencyConflict`` for a different payload. Recording a success also deletes the
  job's checkpoint, atomically.

Checkpoints let a long job resume where its last attempt stopped: ``save_checkpoint(job_id,
state)``, ``load_checkpoint(job_id)``, ``clear_checkpoint(job_id)``; ``state`` is a JSON
object. Retries keep the job id, so the next attempt finds it.

Retention: ``expire(older_than)`` deletes records that finished before ``now - older_than``
(and checkpoints not touched for as long) and returns how many records it deleted. Keep
``older_than`` above the longest time a duplicate can still arrive (the retry ``max_age``
plus the producers' publish retries).

**Transactions.** ``async with store.transaction() as tx:`` opens one database transaction;
``tx.connection`` is the raw driver connection (an ``asyncpg.Connection``, an
``aiosqlite.Connection``, or for the memory store a staging ``dict``) so a handler writes its
own effects there, and ``tx.record_success(...)`` records the key *in the same transaction*:
both commit or neither does. Leaving the block commits; an exception rolls back. While the
block is open, the store's own methods called from the same task (``save_checkpoint``, ``get``
…) run inside that transaction too, so a checkpoint written there commits with the effects.
Transactions do not nest.

Failures of the database itself are raised as ``IdempotencyStoreUnavailable`` (retryable).
Schemas are created idempotently at ``open()`` and carry a version row; a database whose
schema is newer than this code is refused with ``ConfigurationError``.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from conveyor.common.clock import Clock
from conveyor.common.errors import (
    IdempotencyConflict,
    IdempotencyStoreUnavailable,
)
from conveyor.common.sql import check_table_prefix
from conveyor.common.stores import DEFAULT_TABLE_PREFIX, Store

__all__ = [
    "DEFAULT_TABLE_PREFIX",
    "SCHEMA_VERSION",
    "STATUS_SUCCEEDED",
    "IdempotencyConflict",
    "IdempotencyStoreUnavailable",
    "ProcessedKeyStore",
    "Record",
    "StoreTransaction",
    "check_table_prefix",
    "decode_state",
    "encode_state",
]

SCHEMA_VERSION = 1
STATUS_SUCCEEDED = "succeeded"
MAX_CHECKPOINT_BYTES = 256 * 1024  # a checkpoint is a bookmark, not a place to keep results

@dataclass(frozen=True, slots=True)
class Record:
    """One idempotency key that succeeded."""

    key: str
    status: str
    payload_hash: str
    job_id: str
    finished_at: datetime


def encode_state(state: dict[str, Any]) -> bytes:
    if not isinstance(state, dict):
        raise TypeError("a checkpoint is a JSON object (a dict)")
    data = orjson.dumps(state, option=orjson.OPT_SORT_KEYS)
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise ValueError(f"checkpoint of {len(data)} bytes is over the {MAX_CHECKPOINT_BYTES}-byte limit")
    return data


def decode_state(data: bytes | str) -> dict[str, Any]:
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise IdempotencyStoreUnavailable("stored checkpoint is not a JSON object")
    return value


def _conflict(key: str) -> IdempotencyConflict:
    # The key comes from the message; it is an identifier, not a payload value, so naming
    # it helps the operator and leaks nothing the dead letter does not already hold.
    return IdempotencyConflict(f"idempotency key {key!r} already succeeded with a different payload")


class StoreTransaction:
    """One open transaction: the raw connection plus the store operations inside it."""

    def __init__(self, store: ProcessedKeyStore, connection: Any) -> None:
        self.store = store
        self.connection = connection
        self.closed = False

    async def get(self, key: str) -> Record | None:
        return await self.store.get(key)

    async def record_success(self, key: str, payload_hash: str, job_id: str) -> bool:
        """Record the key in this transaction (see ``ProcessedKeyStore.record_success``).

        On PostgreSQL a concurrent transaction recording the same key waits for this one
        and then sees it; recording *first*, before writing the effects, is what makes a
        concurrent duplicate roll back instead of writing its effects twice.
        """
        return await self.store.record_success(key, payload_hash, job_id)

    async def save_checkpoint(self, job_id: str, state: dict[str, Any]) -> None:
        await self.store.save_checkpoint(job_id, state)

    async def load_checkpoint(self, job_id: str) -> dict[str, Any] | None:
        return await self.store.load_checkpoint(job_id)

    async def clear_checkpoint(self, job_id: str) -> None:
        await self.store.clear_checkpoint(job_id)


# The innermost open transaction of the running task, with its store. Store methods called
# while it is set (from the same task) run on the transaction's connection.
_ACTIVE: ContextVar[StoreTransaction | None] = ContextVar("conveyor_idempotency_tx", default=None)


class ProcessedKeyStore(Store):
    """Remembers succeeded idempotency keys and job checkpoints. ``async with store:``."""

    schema_version = SCHEMA_VERSION
    version_table_name = "idempotency_schema"

    def __init__(self, *, table_prefix: str = DEFAULT_TABLE_PREFIX, clock: Clock | None = None) -> None:
        super().__init__(table_prefix=table_prefix, clock=clock)
        self.keys_table = f"{table_prefix}processed_keys"
        self.checkpoints_table = f"{table_prefix}checkpoints"

    @abc.abstractmethod
    async def get(self, key: str) -> Record | None: ...

    @abc.abstractmethod
    async def record_success(self, key: str, payload_hash: str, job_id: str) -> bool: ...

    @abc.abstractmethod
    async def save_checkpoint(self, job_id: str, state: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def load_checkpoint(self, job_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def clear_checkpoint(self, job_id: str) -> None: ...

    @abc.abstractmethod
    async def expire(self, older_than: timedelta) -> int: ...

    @abc.abstractmethod
    def _begin(self) -> contextlib.AbstractAsyncContextManager[StoreTransaction]:
        """Open a driver transaction and yield its ``StoreTransaction`` (commit on exit)."""

    async def check(self, key: str, payload_hash: str) -> Record | None:
        """The record if ``key`` succeeded with this payload, ``None`` if unseen; else conflict."""
        record = await self.get(key)
        if record is not None and record.payload_hash != payload_hash:
            raise _conflict(key)
        return record

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTransaction]:
        if self._active() is not None:
            raise RuntimeError("idempotency store transactions do not nest")
        async with self._begin() as tx:
            token = _ACTIVE.set(tx)
            try:
                yield tx
            finally:
                _ACTIVE.reset(token)
                tx.closed = True

    def _active(self) -> StoreTransaction | None:
        """This store's transaction open in the running task, if any."""
        tx = _ACTIVE.get()
        if tx is None or tx.store is not self or tx.closed:
            return None
        return tx

    @staticmethod
    def _compare(key: str, payload_hash: str, existing: Record) -> bool:
        """After an insert that did nothing: same payload → ``False``; different → conflict."""
        if existing.payload_hash != payload_hash:
            raise _conflict(key)
        return False
