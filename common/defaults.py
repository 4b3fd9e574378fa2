"""Defaults that more than one component reads: the settings, the stores and the producer
take them from here, so a default is written once."""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "DEFAULT_PAYLOAD_THRESHOLD", "DEFAULT_STORE_TIMEOUT"]

DEFAULT_PAYLOAD_THRESHOLD = 128 * 1024  # encoded payloads above this go to the store
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_STORE_TIMEOUT = 60.0  # seconds for one whole upload or download
