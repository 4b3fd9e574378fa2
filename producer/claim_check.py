"""The producer's half of the claim check: park a large payload in the store, send a reference.

A payload whose encoded JSON exceeds ``threshold`` bytes is uploaded (streamed, bounded in
size and time) under an unguessable key, ``<prefix>/<job_type>/<yyyy>/<mm>/<dd>/<job_id>-
<uuid>.json``, and the envelope carries a ``PayloadReference`` (store, bucket, key, sha256,
size, content type): never a URL. The bytes hashed are exactly the bytes uploaded.
"""

from __future__ import annotations

from conveyor.common.clock import Clock
from conveyor.common.codec import encode_data
from conveyor.common.errors import ConfigurationError, MessageTooLarge
from conveyor.common.payload_store.base import DEFAULT_PAYLOAD_THRESHOLD, PayloadStore
from conveyor.schemas.envelope import Envelope, InlinePayload, PayloadReference

__all__ = ["ClaimCheck"]


class ClaimCheck:
    def __init__(self, store: PayloadStore, clock: Clock, *, threshold: int = DEFAULT_PAYLOAD_THRESHOLD) -> None:
        if threshold < 0:
            raise ConfigurationError("payload threshold must be ≥ 0")
        self.store = store
        self.threshold = threshold
        self._clock = clock

    async def offload(self, envelope: Envelope) -> Envelope:
        """The envelope to send: unchanged if small (or already a reference), else a claim check."""
        if not isinstance(envelope.payload, InlinePayload):
            return envelope
        data = encode_data(envelope.payload.data)  # orjson alone refused bytes and sets: a bare TypeError
        if len(data) <= self.threshold:
            return envelope
        if len(data) > self.store.max_bytes:
            raise MessageTooLarge(f"payload is {len(data)} bytes, the store's limit is {self.store.max_bytes}")
        reference = await self.store.put_payload(envelope.job_type, envelope.job_id, data, self._clock.now())
        return envelope.model_copy(update={"payload": reference})

    async def discard(self, reference: PayloadReference) -> None:
        await self.store.delete(reference)
