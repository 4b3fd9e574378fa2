"""Payload stores for claim checks: filesystem, S3-compatible, in-memory (one module each)."""

from typing import TYPE_CHECKING

from conveyor.common.lazy import lazy_exports

if TYPE_CHECKING:
    from conveyor.common.payload_store.base import PayloadStore, StoredObject, validate_reference
    from conveyor.common.payload_store.factory import store_from_settings, store_from_url

__all__ = ["PayloadStore", "StoredObject", "store_from_settings", "store_from_url", "validate_reference"]

__getattr__ = lazy_exports(__name__, {
    ".base": ("PayloadStore", "StoredObject", "validate_reference"),
    ".factory": ("store_from_settings", "store_from_url"),
})
