"""An in-memory payload store for unit tests: real semantics, plus a log of every request.

``requests`` records each operation that reached the store (``("get", key)`` …), so a test
can prove that a rejected reference caused none. ``fail_with`` makes every operation raise,
to stand in for an outage.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Unpack

from conveyor.common.clock import Clock, SystemClock
from conveyor.common.errors import (
    MessageTooLarge,
    PayloadMissing,
    PayloadStoreUnavailable,
)
from conveyor.common.payload_store.base import (
    CHUNK_SIZE,
    PayloadLimits,
    PayloadStore,
    StoredObject,
    chunked,
)
from conveyor.schemas.envelope import PayloadReference

__all__ = ["MemoryPayloadStore"]


@dataclass
class _Object:
    data: bytes
    modified: datetime


class MemoryPayloadStore(PayloadStore):
    kind = "memory"

    def __init__(
        self,
        *,
        name: str = "memory",
        bucket: str = "conveyor",
        prefix: str = "payloads",
        clock: Clock | None = None,
        chunk_size: int = CHUNK_SIZE,
        **limits: Unpack[PayloadLimits],
    ) -> None:
        super().__init__(name=name, bucket=bucket, prefix=prefix, **limits)
        self.objects: dict[str, _Object] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_with: BaseException | None = None
        self._clock = clock or SystemClock()
        self._chunk = chunk_size

    def _enter(self, op: str, key: str) -> None:
        self.requests.append((op, key))
        if self.fail_with is not None:
            raise PayloadStoreUnavailable(f"memory store {op} failed") from self.fail_with

    async def put(self, key: str, body: bytes | AsyncIterable[bytes], *, size: int) -> None:
        self._check_key(key)
        if size > self.max_bytes:
            raise MessageTooLarge(f"payload is {size} bytes, the store's limit is {self.max_bytes}")
        self._enter("put", key)
        buffer = bytearray()
        async for chunk in chunked(body):
            buffer += chunk
            if len(buffer) > self.max_bytes:
                raise MessageTooLarge(f"payload is over the store's {self.max_bytes}-byte limit")
        self.objects[key] = _Object(bytes(buffer), self._clock.now())

    async def get(self, reference: PayloadReference) -> AsyncGenerator[bytes, None]:
        self.validate(reference)
        self._enter("get", reference.key)
        stored = self.objects.get(reference.key)
        if stored is None:
            raise PayloadMissing("payload object not found")
        async for chunk in chunked(stored.data[: reference.size + 1], self._chunk):
            yield chunk

    async def delete(self, reference: PayloadReference) -> None:
        self.validate(reference)
        await self.delete_key(reference.key)

    async def delete_key(self, key: str) -> None:
        self._check_key(key)
        self._enter("delete", key)
        self.objects.pop(key, None)

    async def list_objects(self) -> AsyncIterator[StoredObject]:
        self._enter("list", self.prefix)
        for key, stored in sorted(self.objects.items()):
            yield StoredObject(self.bucket, key, len(stored.data), stored.modified.astimezone(UTC))

    def tamper(self, key: str, data: bytes) -> None:
        """Replace an object's bytes behind the store's back (tests)."""
        self.objects[key].data = data
