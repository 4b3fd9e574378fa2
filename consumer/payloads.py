"""Turn an envelope's payload into the dict its schema validates.

Inline payloads are used as they are. A reference (claim check) is checked against the
store it names *before any request*: an unknown store, another bucket, a key outside the
prefix, ``..``, a leading ``/``, a backslash or NUL is a ``PayloadReferenceInvalid``
(dead-lettered as ``payload_reference_invalid``). The object is then streamed, and its size
and sha256 are verified on exactly the bytes that are then parsed and handed on: a
mismatch is ``payload_integrity``, an absent object ``payload_missing``. Anything the store
does wrong is ``PayloadStoreUnavailable``, which the processor retries and counts against
the job's breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.common.codec import strict_json_loads
from conveyor.common.errors import (
    MalformedMessage,
    PayloadIntegrityError,
    PayloadReferenceInvalid,
    PayloadStoreUnavailable,
)
from conveyor.common.payload_store.base import PayloadStore
from conveyor.schemas.envelope import InlinePayload, PayloadReference

__all__ = ["PayloadResolver"]

log = logging.getLogger(__name__)


class PayloadResolver:
    def __init__(self, stores: Mapping[str, PayloadStore] | Sequence[PayloadStore] | None = None) -> None:
        if isinstance(stores, Mapping):
            self._stores = dict(stores)
        else:
            self._stores = {store.name: store for store in stores or ()}

    @classmethod
    def for_store(cls, store: PayloadStore | None) -> PayloadResolver:
        return cls([store] if store is not None else [])

    @property
    def stores(self) -> list[PayloadStore]:
        return list(self._stores.values())

    def check(self, reference: PayloadReference) -> PayloadStore:
        """The store that owns ``reference``; raises ``PayloadReferenceInvalid`` otherwise."""
        store = self._stores.get(reference.store)
        if store is None:
            raise PayloadReferenceInvalid("payload reference rejected: unknown store")
        store.validate(reference)
        return store

    async def load(self, payload: InlinePayload | PayloadReference) -> dict[str, Any]:
        if isinstance(payload, InlinePayload):
            return payload.data
        data = await self.fetch(payload)
        try:
            value = strict_json_loads(data, max_bytes=len(data) + 1)
        except MalformedMessage as exc:
            raise MalformedMessage(f"stored payload: {exc}") from None
        if not isinstance(value, dict):
            raise MalformedMessage("stored payload is not a JSON object")
        return value

    async def fetch(self, reference: PayloadReference) -> bytes:
        """The object's bytes, verified against the reference's size and sha256."""
        store = self.check(reference)
        digest = hashlib.sha256()
        buffer = bytearray()
        try:
            async with asyncio.timeout(store.timeout), contextlib.aclosing(store.get(reference)) as chunks:
                async for chunk in chunks:
                    buffer += chunk
                    if len(buffer) > reference.size:
                        raise PayloadIntegrityError(f"object is longer than the {reference.size} bytes referenced")
                    digest.update(chunk)
        except TimeoutError:
            raise PayloadStoreUnavailable(f"payload download took longer than {store.timeout:g}s") from None
        if len(buffer) != reference.size:
            raise PayloadIntegrityError(f"object is {len(buffer)} bytes, the reference says {reference.size}")
        if not hmac.compare_digest(digest.hexdigest(), reference.sha256):
            raise PayloadIntegrityError("object's sha256 does not match the reference")
        return bytes(buffer)

    async def discard(self, reference: PayloadReference) -> bool:
        """Best-effort delete (after success or a DLQ purge); failures are logged, not raised."""
        try:
            store = self.check(reference)
            await store.delete(reference)
        except Exception as exc:
            log.warning("payload delete failed; the sweep or a lifecycle rule removes it later",
                        extra={"error_type": type(exc).__name__})
            return False
        return True
