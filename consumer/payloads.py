"""Turn an envelope's payload into the dict its schema validates.

Inline payloads are used as they are. References (claim checks) are fetched from a named
payload store; a reference to a store this worker does not have is rejected before any
request is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from common.errors import RejectedMessage
from schemas.envelope import InlinePayload, PayloadReference

__all__ = ["PayloadResolver", "ReferenceLoader"]


class ReferenceLoader(Protocol):
    async def load(self, reference: PayloadReference) -> dict[str, Any]: ...


class PayloadResolver:
    def __init__(self, stores: Mapping[str, ReferenceLoader] | None = None) -> None:
        self._stores = dict(stores or {})

    async def load(self, payload: InlinePayload | PayloadReference) -> dict[str, Any]:
        if isinstance(payload, InlinePayload):
            return payload.data
        store = self._stores.get(payload.store)
        if store is None:
            raise RejectedMessage(
                f"payload reference names store {payload.store!r}, which this worker does not have",
                reason="payload_unknown_store",
            )
        return await store.load(payload)
