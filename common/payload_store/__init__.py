"""Payload stores for claim checks: filesystem, S3-compatible, in-memory (one module each)."""

from conveyor.common.payload_store.base import (
    PayloadStore,
    StoredObject,
    validate_reference,
)
from conveyor.common.payload_store.factory import store_from_settings, store_from_url

__all__ = ["PayloadStore", "StoredObject", "store_from_settings", "store_from_url", "validate_reference"]
