"""An in-memory processed-key store: the embedded default and the unit-test store.

Real semantics, not a mock: transactions are isolated and atomic (a transaction works on a
copy that replaces the committed state only on commit) and serialised like SQLite's single
writer; ``tx.connection`` is a staging ``dict`` for the handler's own effects, published to
``effects`` on commit. ``fail_with`` makes every operation raise, to stand in for an outage.
Nothing survives the process: use SQLite or PostgreSQL where redeliveries cross restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from conveyor.common.clock import Clock
from conveyor.common.idempotency.base import (
    STATUS_SUCCEEDED,
    IdempotencyStoreUnavailable,
    ProcessedKeyStore,
    Record,
    StoreTransaction,
    decode_state,
    encode_state,
)

__all__ = ["MemoryProcessedKeyStore"]


@dataclass
class _State:
    records: dict[str, Record] = field(default_factory=dict)
    checkpoints: dict[str, tuple[bytes, datetime]] = field(default_factory=dict)
    effects: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> _State:
        return _State(dict(self.records), dict(self.checkpoints), dict(self.effects))


class _MemoryTransaction(StoreTransaction):
    def __init__(self, store: MemoryProcessedKeyStore, state: _State) -> None:
        super().__init__(store, state.effects)
        self.state = state


class MemoryProcessedKeyStore(ProcessedKeyStore):
    kind = "memory"

    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self._state = _State()
        self._lock = asyncio.Lock()
        self.fail_with: BaseException | None = None

    @property
    def records(self) -> dict[str, Record]:
        return self._state.records

    @property
    def effects(self) -> dict[str, Any]:
        """What committed transactions wrote to ``tx.connection``."""
        return self._state.effects

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[_State]:
        if self.fail_with is not None:
            raise IdempotencyStoreUnavailable("memory store failing on purpose") from self.fail_with
        tx = self._active()
        if isinstance(tx, _MemoryTransaction):
            yield tx.state
            return
        async with self._lock:
            yield self._state

    async def get(self, key: str) -> Record | None:
        async with self._using() as state:
            return state.records.get(key)

    async def record_success(self, key: str, payload_hash: str, job_id: str) -> bool:
        async with self._using() as state:
            existing = state.records.get(key)
            if existing is not None:
                return self._compare(key, payload_hash, existing)
            state.records[key] = Record(key, STATUS_SUCCEEDED, payload_hash, job_id, self.clock.now())
            state.checkpoints.pop(job_id, None)
            return True

    async def save_checkpoint(self, job_id: str, state: dict[str, Any]) -> None:
        data = encode_state(state)
        async with self._using() as current:
            current.checkpoints[job_id] = (data, self.clock.now())

    async def load_checkpoint(self, job_id: str) -> dict[str, Any] | None:
        async with self._using() as state:
            entry = state.checkpoints.get(job_id)
        return None if entry is None else decode_state(entry[0])

    async def clear_checkpoint(self, job_id: str) -> None:
        async with self._using() as state:
            state.checkpoints.pop(job_id, None)

    async def expire(self, older_than: timedelta) -> int:
        cutoff = self._cutoff(older_than)
        async with self._using() as state:
            old = [key for key, record in state.records.items() if record.finished_at < cutoff]
            for key in old:
                del state.records[key]
            for job_id in [j for j, (_, at) in state.checkpoints.items() if at < cutoff]:
                del state.checkpoints[job_id]
        return len(old)

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[StoreTransaction]:
        if self.fail_with is not None:
            raise IdempotencyStoreUnavailable("memory store failing on purpose") from self.fail_with
        async with self._lock:
            tx = _MemoryTransaction(self, self._state.copy())
            yield tx  # an exception here discards the copy: rollback
            self._state = tx.state  # commit
